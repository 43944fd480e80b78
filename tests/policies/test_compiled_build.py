"""The compiled decide stage (setup.py): what ``pip install .`` ships passes the decide stage's own tests.

The test suite otherwise runs the editable install, which is pure Python. Here a wheel is built the way pip
builds one (mypyc compiles the modules setup.py lists), installed into a scratch directory, and the
routing, policy, pipeline and backend tests run again in a subprocess that imports the compiled modules
first. It takes about two minutes, most of it the C compiler.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The decide stage's tests: policies and the learned router, the pipeline (explain, headers, constraints,
#: fallbacks), backends' live state and breakers, and routing over real sockets against simulated backends.
DECIDE_TESTS = ["tests/policies", "tests/gateway", "tests/backends", "tests/integration/test_routing_live.py"]
_SELF = "tests/policies/test_compiled_build.py"


def _compiled_modules() -> list[str]:
    """The modules setup.py compiles, as dotted names."""
    namespace: dict[str, object] = {}
    source = (ROOT / "setup.py").read_text(encoding="utf-8")
    block = source[source.index("COMPILED = [") : source.index("]", source.index("COMPILED = [")) + 1]
    exec(block, namespace)
    paths = namespace["COMPILED"]
    assert isinstance(paths, list)
    return [str(p).removesuffix(".py").replace("/", ".") for p in paths]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch directory holding the installed wheel (the package with its extension modules)."""
    work = tmp_path_factory.mktemp("compiled")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("gateway", "backends", "policies", "cache"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_PURE_PYTHON"}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(src)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        check=False,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "installing it as pure Python" not in build.stderr, build.stderr[-3000:]
    wheels = list((work / "dist").glob("*.whl"))
    assert len(wheels) == 1 and "-none-any" not in wheels[0].name, wheels  # a platform wheel: it holds C code
    site = work / "site"
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--target", str(site), str(wheels[0])],
        check=True,
        env=env,
        timeout=300,
    )
    # A pytest plugin that refuses to run unless the compiled modules are what the tests import.
    (work / "plugins").mkdir()
    (work / "plugins" / "expect_compiled.py").write_text(
        textwrap.dedent(
            f"""
            import importlib

            def pytest_sessionstart(session):
                for name in {_compiled_modules()!r}:
                    module = importlib.import_module(name)
                    assert not module.__file__.endswith(".py"), (name, module.__file__)
            """
        ),
        encoding="utf-8",
    )
    return work


def test_the_wheel_compiles_every_listed_module(compiled: Path) -> None:
    for name in _compiled_modules():
        built = list((compiled / "site").joinpath(*name.split(".")[:-1]).glob(name.split(".")[-1] + ".*.so"))
        assert built, f"{name} is not compiled in the wheel"
    probe = subprocess.run(
        [sys.executable, "-c", "import gateway.routing as r; print(r.COMPILED, r.__file__)"],
        capture_output=True,
        text=True,
        cwd=compiled,
        env={**os.environ, "PYTHONPATH": str(compiled / "site")},
        check=True,
    )
    assert probe.stdout.startswith("True "), probe.stdout


def test_the_compiled_decide_stage_passes_its_tests(compiled: Path) -> None:
    # --import-mode=append and a working directory outside the checkout: the installed (compiled) package
    # comes first on sys.path, the checkout only provides the tests.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(compiled / "site"), str(compiled / "plugins"), str(ROOT)])}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "expect_compiled",
            "-p",
            "no:cacheprovider",
            "--import-mode=append",
            "--rootdir",
            str(ROOT),
            "-c",
            str(ROOT / "pyproject.toml"),
            "--ignore",
            str(ROOT / _SELF),
            *(str(ROOT / t) for t in DECIDE_TESTS),
        ],
        capture_output=True,
        text=True,
        cwd=compiled,
        env=env,
        timeout=1200,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-2000:]
