"""Business logic, one module per feature. Nothing here knows it is behind HTTP."""
