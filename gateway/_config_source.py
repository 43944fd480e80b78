"""Reading a configuration source: the YAML file, ``${VAR}`` expansion, the environment's overrides, and the
translation of what pydantic reports into one line naming the file (or the environment variable) and the key.

Private to :mod:`gateway.config`, which holds the settings models and calls the entry points here
(:func:`read_mapping`, :func:`expand_env`, :func:`with_env_overrides`, :func:`settings_error`,
:func:`validation_error`). This module never imports :mod:`gateway.config`: the root settings model is passed
in where the type of a setting is needed.
"""

from __future__ import annotations

import json
import os
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from gateway.errors import ConfigError

#: The settings' environment variables (pydantic-settings' ``env_prefix`` of :class:`gateway.config.Settings`).
ENV_PREFIX = "GATEWAY_"

#: Conventional variables and the keys they set (:func:`_env_overrides`).
_CONVENTIONAL_ENV = {("cache", "redis_url"): "REDIS_URL", ("ledger", "url"): "DATABASE_URL"}

#: ``${VAR}`` or ``${VAR:-default}`` in a string value (:func:`expand_env`).
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently, so a
    second ``cache:`` section would drop the first). Keys pulled in by a ``<<`` merge may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key '{key}' (first on line {first.start_mark.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def read_text(path: Path) -> str:
    """The text of the configuration file at ``path``.

    Raises:
        ConfigError: one line naming ``path`` (and the line, where the decoder knows it).
    """
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x})") from None


def read_mapping(path: Path, text: str | None = None) -> dict[str, Any]:
    """The top-level mapping of the YAML file at ``path`` (or of ``text``, read from it earlier; empty: ``{}``),
    before ``${VAR}`` expansion.

    Raises:
        ConfigError: one line naming ``path`` (and the line, where YAML or the decoder knows it).
    """
    if text is None:
        text = read_text(path)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: {where}{problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: <top level>: expected a mapping with a 'models' list")
    return data


def expand_env(node: Any, source: str, path: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in string values (not for secrets: use api_key_env)."""
    if isinstance(node, dict):
        return {k: expand_env(v, source, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, source, f"{path}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def sub(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1))
            if value is None:
                if m.group(2) is None:
                    raise ConfigError(f"{source}: {path}: environment variable {m.group(1)} is not set")
                return m.group(2)
            return value

        return _VAR.sub(sub, node)
    return node


def with_env_overrides(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the conventional variables (``REDIS_URL``, ``DATABASE_URL``) merged over their sections;
    ``GATEWAY_*`` variables are read by pydantic-settings itself."""
    return _merge(data, _env_overrides())


#: What Kubernetes sets for each Service of the namespace (``<NAME>_SERVICE_HOST``, ``<NAME>_PORT_8080_TCP``, ...):
#: a Service named ``gateway-cache`` makes ``GATEWAY_CACHE_SERVICE_HOST``, which is no mistake of the operator's.
_SERVICE_VARIABLE = re.compile(r"_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)$")
#: ``<NAME>_PORT`` is one of them only with such a value (``tcp://10.0.0.1:8080``): ``GATEWAY_SERVER_PORT=9001`` is not.
_SERVICE_PORT_VALUE = re.compile(r"(tcp|udp|sctp)://", re.IGNORECASE)


def _kubernetes_service_variable(name: str, value: str) -> bool:
    return bool(_SERVICE_VARIABLE.search(name)) or (name.endswith("_PORT") and bool(_SERVICE_PORT_VALUE.match(value)))


def referenced_variables(node: Any) -> set[str]:
    """The variables a parsed config file names in ``${VAR}`` (before :func:`expand_env`)."""
    if isinstance(node, dict):
        return {name for v in node.values() for name in referenced_variables(v)}
    if isinstance(node, list):
        return {name for v in node for name in referenced_variables(v)}
    return {m.group(1) for m in _VAR.finditer(node)} if isinstance(node, str) else set()


def unread_variables(sections: Iterable[str], read: Iterable[str] = ()) -> list[str]:
    """Problem lines for ``GATEWAY_*`` variables that look meant for the settings but name none (read by nothing,
    so the operator's change silently does not apply). ``sections`` are the top-level keys; ``read`` are the names
    the config reads itself (``${VAR}``, ``api_key_env``, ``auth.master_key_env``), which pass.

    A section's keys follow two underscores (``GATEWAY_SERVER__PORT``): ``GATEWAY_SERVER_PORT`` is reported, and so
    is an unknown section before two underscores (``GATEWAY_SERVR__PORT``). Other ``GATEWAY_*`` names (a compose
    file's ``GATEWAY_IMAGE``, Kubernetes' Service variables) are not settings and pass.
    """
    known = {s.lower() for s in sections}
    passed = {name.upper() for name in read}
    problems: list[str] = []
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in passed or _kubernetes_service_variable(upper, os.environ[name]):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        head, nested, _ = rest.partition("__")
        if nested and head not in known:
            problems.append(
                f"{name}: '{head}' is not a section of the settings ({', '.join(sorted(known))}), so nothing reads it"
            )
        elif not nested and rest not in known:
            section = next((s for s in sorted(known) if rest.startswith(s + "_")), None)
            if section is not None:
                key = rest[len(section) + 1 :].upper()
                problems.append(
                    f"{name}: nothing reads it; a section's keys follow two underscores "
                    f"({ENV_PREFIX}{section.upper()}__{key})"
                )
    return problems


def _env_overrides() -> dict[str, Any]:
    """Conventional variables that override their sections (REDIS_URL, DATABASE_URL)."""
    out: dict[str, Any] = {}
    if os.environ.get("REDIS_URL"):
        out["cache"] = {"redis_url": os.environ["REDIS_URL"]}
    if os.environ.get("DATABASE_URL"):
        out["ledger"] = {"url": os.environ["DATABASE_URL"]}
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def settings_error(exc: SettingsError, root: type[BaseModel]) -> ConfigError:
    """One line for a ``GATEWAY_*`` value pydantic-settings could not parse (a list or mapping not in JSON);
    ``root`` is the settings model the variables configure."""
    found = re.search(r'field "([^"]+)"', str(exc))
    field = found.group(1) if found else ""
    head = ENV_PREFIX + field.upper()
    names = _gateway_env()
    mine = sorted(n for n in names if field and (n == head or n.startswith(head + "__")))
    culprits = [n for n in mine if _is_complex(_env_annotation(n, root)) and not _parses_as_json(os.environ[names[n]])]
    chosen = (culprits or mine or [head])[0]
    name = names.get(chosen, chosen)
    key = ".".join(name[len(ENV_PREFIX) :].lower().split("__"))
    return ConfigError(
        f"environment variable {name}: {key}: cannot parse the value: lists and mappings are JSON in the "
        'environment, e.g. ["https://a.example.com"] or {"key": "value"}'
    )


def validation_error(exc: ValidationError, data: dict[str, Any], source: str) -> ConfigError:
    """One line for the first problem pydantic found in ``data`` (read from ``source``): the key path, and the
    environment variable instead of ``source`` when one set the value."""
    errors = exc.errors()
    first = errors[0]
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    loc = tuple(first["loc"])
    path = _loc_to_path(loc, data)
    env = _env_source(loc or _key_in_message(str(first["msg"])))
    if env is not None:
        return ConfigError(f"environment variable {env}: {path}: {_describe(first)}{more}{_env_hint(env)}")
    return ConfigError(f"{source}: {path}: {_describe(first)}{more}")


def _loc_to_path(loc: tuple[int | str, ...], data: dict[str, Any]) -> str:
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node):
                node = node[item]
                if isinstance(node, dict) and isinstance(node.get("name"), str):
                    label = f"[{item}]({node['name']})"
            parts.append(label)
        else:
            node = node.get(item) if isinstance(node, dict) else None
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "<top level>"


def _describe(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required field is missing"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _gateway_env() -> dict[str, str]:
    """``GATEWAY_*`` variable names, upper-cased (pydantic-settings reads them case-insensitively) -> as set."""
    return {k.upper(): k for k in os.environ if k.upper().startswith(ENV_PREFIX)}


def _env_source(loc: tuple[int | str, ...]) -> str | None:
    """The environment variable that set the value at ``loc`` (or the list or section holding it), if any."""
    names = _gateway_env()
    parts = [str(p).upper() for p in loc]
    for i in range(len(parts), 0, -1):
        name = ENV_PREFIX + "__".join(parts[:i])
        if name in names:
            return names[name]
    if parts:
        deeper = sorted(n for n in names if n.startswith(ENV_PREFIX + "__".join(parts) + "__"))
        if deeper:
            return names[deeper[0]]
    conventional = _CONVENTIONAL_ENV.get((str(loc[0]), str(loc[1]))) if len(loc) >= 2 else None
    return conventional if conventional is not None and os.environ.get(conventional) else None


def origin(loc: tuple[int | str, ...], source: str) -> str:
    """Where the value at ``loc`` came from, for an error line: ``environment variable NAME`` when one set it, else
    ``source`` (the file)."""
    env = _env_source(loc)
    return f"environment variable {env}" if env is not None else source


def _env_hint(name: str) -> str:
    """What to do instead, when ``name`` tries to set one item of a list."""
    if not any(part.isdigit() for part in name.split("__")[1:]):
        return ""
    head = name.split("__")[0]
    return (
        f" (the environment cannot set one item of a list: set the whole list as JSON in {head}, or put "
        "${VAR} in the file, e.g. base_url: ${VLLM_URL})"
    )


def _is_complex(annotation: Any) -> bool:
    """Whether pydantic-settings reads a variable for ``annotation`` as JSON (lists, mappings, sections)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    origin = typing.get_origin(annotation)
    if origin in (list, dict, set, tuple, frozenset):
        return True
    if origin in (typing.Union, types.UnionType, Annotated):
        return any(_is_complex(arg) for arg in typing.get_args(annotation))
    return False


def _env_annotation(name: str, root: type[BaseModel]) -> Any:
    """The type of the setting ``GATEWAY_<SECTION>__<KEY>`` names (None: no such setting)."""
    node: Any = root
    annotation: Any = None
    for part in name[len(ENV_PREFIX) :].lower().split("__"):
        fields = node.model_fields if isinstance(node, type) and issubclass(node, BaseModel) else {}
        if part not in fields:
            return None
        annotation = fields[part].annotation
        node = annotation
    return annotation


def _key_in_message(message: str) -> tuple[str, ...]:
    """The key path a whole-configuration check names first in its message (``routes.x.models: ...``)."""
    found = re.match(r"(?:Value error, )?([A-Za-z_][\w-]*(?:\.[\w-]+)*): ", message)
    return tuple(found.group(1).split(".")) if found else ()


def _parses_as_json(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True
