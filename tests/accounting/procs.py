"""Config files for the ``gateway serve`` processes of the multi-replica tests (``tests.helpers.processes``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a YAML config file."""
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def settings_dict(settings: Any) -> dict[str, Any]:
    """A Settings object back as the plain data of a config file."""
    data: dict[str, Any] = settings.model_dump(mode="json", exclude_none=True)
    return data
