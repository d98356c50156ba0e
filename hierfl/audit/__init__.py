"""Audit tools: verify a model store's signed lineage (``hierfl audit``)."""

from hierfl.audit.cli import audit_app

__all__ = ["audit_app"]
