"""Cross-cutting protections: response security headers and per-token rate limits."""
