"""The Redis ingress (docs/api.md §11): an entry point, like `api/`, for agents that publish their
output and status to Redis instead of calling the HTTP producer endpoints."""

from dashboard_api.ingress.consumer import Ingress, ingress_lifespan

__all__ = ["Ingress", "ingress_lifespan"]
