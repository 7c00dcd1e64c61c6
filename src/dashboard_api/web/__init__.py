"""The web dashboard (docs/api.md §18): static files shipped in the package, served by the app."""

from dashboard_api.web.serve import STATIC_DIR, install_dashboard

__all__ = ["STATIC_DIR", "install_dashboard"]
