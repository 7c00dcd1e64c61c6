"""OpenTelemetry in: `POST /v1/traces` (OTLP/HTTP) turns GenAI agent traces into tasks.

An entry point, like `api/`: it calls the tasks service and nothing below calls it.

- `wire`    — the HTTP body: content types, gzip, limits, the official OTLP message
              classes (`opentelemetry-proto`), and the answers a collector gives.
- `spans`   — one OTLP span reduced to the facts the mapping needs (`SpanFacts`), pure.
- `mapping` — an invocation (a root span and its subtree) to a task plan, pure.
- `store`   — spans kept until their invocation is whole, and the plans stored through
              the tasks service's ordinary register, output and update paths.
- `router`  — the route.
"""
