"""Every module of the product imports first in a fresh interpreter, whatever was imported before it.

An import cycle hides while some other module happens to be imported first: ``gateway quality labels`` and
``gateway router adapt --from-ledger`` crashed on one (``gateway.quality.tables`` -> ``gateway.accounting`` ->
its migrations -> ``gateway.quality.tables``, half initialised) that the suite never saw, because its tests
imported ``gateway.accounting`` first.
"""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.servers import REPO_ROOT

_SCRIPT = """
import importlib, sys
from pathlib import Path

ours = ("gateway", "backends", "policies", "cache")
names = sorted(
    ".".join(path.with_suffix("").parts).removesuffix(".__init__")
    for top in ours
    for path in Path(top).rglob("*.py")
    if "migrations" not in path.parts and path.stem != "__main__"
)
for name in names:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ours]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        print(f"{name}: {exc!r}")
print(len(names), "modules")
"""


def test_every_module_imports_on_its_own() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[-1].endswith(" modules") and int(lines[-1].split()[0]) > 100, result.stdout[-2000:]
    assert lines[:-1] == [], "\n".join(lines[:-1])
