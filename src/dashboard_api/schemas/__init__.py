"""Pydantic models of the API contract, one module per feature."""
