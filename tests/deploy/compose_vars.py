"""Docker Compose's variable interpolation and ``.env`` parsing, enough to check the stack statically."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (comments, blanks and surrounding quotes handled as compose does)."""
    out: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=value: {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        out[key.strip()] = value
    return out


def variables(node: Any) -> set[str]:
    """Every variable a compose document refers to."""
    if isinstance(node, dict):
        return set().union(*(variables(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(variables(v) for v in node)) if node else set()
    if isinstance(node, str):
        return {m.group("braced") or m.group("named") for m in _VAR.finditer(node) if not m.group("escaped")}
    return set()


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """``node`` with ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``, ``$VAR`` and ``$$``
    replaced as compose does."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?") and (value is None or (op == ":?" and not value)):
            raise KeyError(f"required variable {name} is missing: {arg}")
        return value or ""

    return _VAR.sub(sub, node)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a mapping (list or mapping form)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}
