"""What the tests share: backends, tokens, clocks, real servers, dependencies to break,
and small HTTP/WebSocket helpers. Fixtures stay in the conftest files; they build on these."""
