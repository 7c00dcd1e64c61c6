"""Dashboard API: the backend of the AI-agent dashboard."""

__version__ = "0.1.0"
