"""Arrows point down (docs/architecture.md): each layer imports only the ones below it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from tests.helpers.servers import REPO_ROOT


def imported_by(module: str, then: str = "") -> set[str]:
    """Every module a fresh interpreter has loaded after importing ``module`` (and running ``then``)."""
    script = f"import json, sys, {module}\n{then}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", ["gateway.routes", "gateway.inference", "gateway.admin_routes", "gateway.runtime"])
def test_nothing_below_the_app_imports_it(module: str) -> None:
    assert "gateway.app" not in imported_by(module)
    # not even for type checking (the route modules once took the Gateway type from gateway.app: a cycle)
    tree = ast.parse((REPO_ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
    named = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    named |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "gateway.app" not in named


@pytest.mark.parametrize("module", ["gateway.runtime", "gateway.pipeline", "gateway.routing"])
def test_the_runtime_and_the_stages_need_no_http_framework(module: str) -> None:
    loaded = imported_by(module)
    assert not {m for m in loaded if m.split(".")[0] in ("fastapi", "starlette")}, module


def test_policies_import_nothing_from_the_gateway() -> None:
    loaded = imported_by("policies.registry", "policies.registry.names()")  # the built-ins loaded
    assert {"policies.balanced", "policies.cost", "policies.latency", "policies.learned", "policies.quality"} <= loaded
    assert not {m for m in loaded if m.split(".")[0] in ("gateway", "backends", "cache")}
