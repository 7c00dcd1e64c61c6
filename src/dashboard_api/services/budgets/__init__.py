"""Budgets: spending caps per scope and calendar period (docs/api.md §14).

- `periods`: a period's edges in the budget's time zone (DST included);
- `spend`: exact spend of a scope over a period, in one statement;
- `holds`: what the claim statement adds so that it skips held scopes;
- `service`: definitions, live documents, the write hook that sets a hold in the
  transaction that reaches the limit, and the periodic evaluation that announces states.
"""
