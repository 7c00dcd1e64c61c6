"""Alert rules, notification channels, alerts and their delivery outbox (docs/api.md §15).

- `urls`: which channel URLs may be called (the SSRF guard), `sender`: one POST to a
  checked address, `signing` and `formats`: what is sent;
- `channels` and `rules`: their definitions; `kinds`: what each rule kind measures;
- `evaluate`: one evaluation round (a periodic job): alerts opened and resolved, with
  their deliveries written in the same transaction;
- `outbox`: the sender job: claims due deliveries, records every attempt, retries with
  backoff.
"""
