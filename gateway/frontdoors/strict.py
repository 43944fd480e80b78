"""A Responses function tool's ``strict`` as applied, and its parameters made strict where that keeps their meaning.

The Responses API's ``strict`` defaults to true (chat completions' to false). When the client leaves it out, OpenAI
normalizes the schema into strict mode where it can (every object closed with ``additionalProperties: false`` and
all its properties required, which can make optional fields mandatory) and otherwise calls the tool non-strict.
The gateway does the same: a schema that cannot be made strict without changing what it accepts (a map, i.e. an
object whose ``additionalProperties`` is present and not false, as pydantic writes ``dict[str, X]``; an object
without ``properties``; ``patternProperties``; a subschema with no type, such as pydantic's ``Any``) goes upstream
as sent with ``strict: false``; closing a map would leave a strict upstream only ``{}`` to produce.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: What a tool without parameters takes: no arguments.
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}

#: Keywords whose value is a schema, or a list of schemas.
_SCHEMAS = frozenset(
    {
        "items",
        "prefixItems",
        "additionalItems",
        "contains",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "if",
        "then",
        "else",
        "propertyNames",
        "additionalProperties",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
#: Keywords whose value maps names to schemas.
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties", "dependentSchemas"})
#: Keywords that say what a schema accepts: a schema with none of them accepts anything (not strict-able).
_TYPED = ("type", "anyOf", "oneOf", "allOf", "$ref", "enum", "const")


def tool_parameters(tool: dict[str, Any]) -> tuple[Any, bool]:
    """The parameters a Responses function ``tool`` goes upstream with, and its ``strict`` as applied: an explicit
    ``strict`` keeps the schema as sent; left out (or null), the schema made strict where it can be (see the module's
    docstring), else as sent and non-strict. Call after the tool's ``strict`` was checked (a bool or null)."""
    strict, given = tool.get("strict"), tool.get("parameters")
    if strict is not None:
        return given or {"type": "object"}, strict is not False
    if not given:
        return dict(NO_ARGUMENTS), True
    if strictable(given):
        return strict_schema(given), True
    return given, False


def held_to(schema: Any) -> tuple[Any, bool]:
    """A schema an Anthropic client holds output to (a ``strict`` tool's ``input_schema``, structured outputs'
    ``format``), as chat's ``strict`` takes it, and whether it is strict: Anthropic lets such a schema leave
    optional properties out of ``required``, which OpenAI's strict mode refuses (a 400 from a hosted upstream);
    made strict where that keeps its meaning (what it produces still matches the schema as sent), else as sent and
    not strict."""
    if strictable(schema):
        return strict_schema(schema), True
    return schema, False


def applied_strict(tool: dict[str, Any]) -> bool:
    """A Responses function tool's ``strict`` as applied (what the response echoes): :func:`tool_parameters`'s."""
    strict, given = tool.get("strict"), tool.get("parameters")
    if strict is not None:
        return strict is not False
    return not given or strictable(given)


def strictable(schema: Any) -> bool:
    """Whether ``schema`` can be made strict without changing what it accepts: no map, no open object, no untyped
    subschema, anywhere in it."""
    if not isinstance(schema, dict):
        return False
    if "additionalProperties" in schema and schema["additionalProperties"] is not False:
        return False  # a map (pydantic's ``dict[str, X]``), or an object open to more keys
    if "patternProperties" in schema:
        return False
    if _is_object(schema) and not isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        return False  # any object: closing it would leave only {}
    if not any(k in schema for k in _TYPED):
        return False
    return all(strictable(sub) for sub in _subschemas(schema))


def strict_schema(schema: Any) -> Any:
    """``schema`` as the Responses API normalizes a strict function's parameters: every object schema in it (in
    every subschema, ``$defs`` included; ``type: ["object", "null"]`` too) closed (``additionalProperties: false``)
    with all its properties required, and the ``default`` of a property made required dropped (it would never
    apply). For a schema :func:`strictable` accepts (a map would be closed to ``{}``). A copy."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for k in _SCHEMAS.intersection(schema):
        out[k] = strict_schema(schema[k])
    for k in _SCHEMA_MAPS.intersection(schema):
        if isinstance(schema[k], dict):
            out[k] = {name: strict_schema(sub) for name, sub in schema[k].items()}
    if _is_object(schema):
        properties = out.get("properties")
        if not isinstance(properties, dict):
            properties = out["properties"] = {}
        required = schema.get("required")
        was_required = set(required) if isinstance(required, list) else set()
        for name, sub in properties.items():
            if name not in was_required and isinstance(sub, dict) and "default" in sub:
                properties[name] = {k: v for k, v in sub.items() if k != "default"}
        out["required"] = list(properties)
        out["additionalProperties"] = False
    return out


def _is_object(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return (
        kind == "object" or (isinstance(kind, list) and "object" in kind) or isinstance(schema.get("properties"), dict)
    )


def _subschemas(schema: dict[str, Any]) -> Iterator[Any]:
    """``schema``'s direct subschemas (a boolean one too: ``items: true`` accepts anything), but
    ``additionalProperties``, which :func:`strictable` checks itself."""
    for k in _SCHEMAS.intersection(schema):
        value = schema[k]
        if k == "additionalProperties":
            continue
        if isinstance(value, list):
            yield from value
        else:
            yield value
    for k in _SCHEMA_MAPS.intersection(schema):
        if isinstance(schema[k], dict):
            yield from schema[k].values()
