"""The commands the docs show work against the stack they describe: compose.yaml always sets a master key
(auth on), so every ``curl`` to ``/v1`` sends one; the configuration reference says what the environment can
and cannot override."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.helpers.servers import REPO_ROOT

DOCS = ["README.md", "docs/deploy.md"]


def shell_commands(text: str) -> list[str]:
    """The commands of the markdown's shell code blocks (bash, sh or unmarked), continuation lines joined."""
    commands: list[str] = []
    language: str | None = None  # None: outside a block
    current = ""
    for line in text.splitlines():
        if line.startswith("```"):
            language = line[3:].strip() if language is None else None
            continue
        if language not in ("bash", "sh", ""):
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


def test_compose_always_sets_a_master_key() -> None:
    env = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())["services"]["gateway"]["environment"]
    assert env["GATEWAY_MASTER_KEY"].startswith("${GATEWAY_MASTER_KEY:-")  # never empty: auth is always on


@pytest.mark.parametrize("doc", DOCS)
def test_every_curl_to_the_api_sends_a_key(doc: str) -> None:
    calls = [c for c in shell_commands((REPO_ROOT / doc).read_text()) if c.startswith("curl") and "/v1/" in c]
    assert calls, f"{doc}: no curl command found"
    for call in calls:
        command = call.split(" #", 1)[0]
        assert re.search(r"-H ['\"](authorization: Bearer|x-api-key: )", command, re.I), f"{doc}: {call}"


def test_the_reference_says_what_the_environment_overrides() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "override any setting" not in readme
    section = readme[readme.index("## Configuration reference") :]
    section = section[: section.index("### `models:`")]
    assert "GATEWAY_MODELS__0__BASE_URL" in section  # the tempting form that does not work, named
    assert "${VAR}" in section and "base_url" in section  # and what to do instead
