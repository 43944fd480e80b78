"""Revisions, one file each, chained by ``down_revision`` (see docs/accounting.md)."""
