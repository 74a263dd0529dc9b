"""The HTTP edge: OpenAI-compatible endpoints over the routing engine."""

from router.gateway.app import create_app

__all__ = ["create_app"]
