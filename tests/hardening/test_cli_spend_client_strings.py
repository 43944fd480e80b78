"""``gateway spend --group-by user`` prints the ledger's ``user`` values, which any client chooses (the request's
``user`` field): they are data, never terminal markup or control sequences for the operator's console."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
from typer.testing import CliRunner

from gateway.cli import app
from tests.hardening.gateways import master_key, sim_gateway

MASTER = "sk-master-" + uuid.uuid4().hex
HOSTILE_USERS = [
    "[/bold]",  # an unmatched closing tag: Rich raises MarkupError, the command dies with a traceback
    "[red]alice[/red]",  # rendered as plain "alice": a second row impersonating the real user
    "mallory\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\\x1b[2J",  # OSC 8 link + clear screen
]


def _spend_by_user(tmp: Path) -> tuple[int, str]:
    config = tmp / "gateway.yaml"
    config.write_text(
        json.dumps(
            {
                "models": [{"name": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}],
                "ledger": {"url": f"sqlite+aiosqlite:///{tmp / 'ledger.db'}"},
            }
        )
    )
    r = CliRunner().invoke(app, ["spend", "--config", str(config), "--group-by", "user"])
    return r.exit_code, r.stdout


def test_spend_by_user_prints_client_chosen_users_verbatim(tmp_path: Path) -> None:
    with master_key(MASTER), sim_gateway(tmp_path) as gw:
        for user in ["alice", *HOSTILE_USERS]:
            r = httpx.post(
                gw.base_url + "/v1/chat/completions",
                json={"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "user": user},
                headers={"authorization": f"Bearer {MASTER}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
        time.sleep(0.3)  # the ledger's flush interval is 0.05 s
    code, out = _spend_by_user(tmp_path)
    assert code == 0, out
    assert "[red]alice[/red]" in out  # shown as sent, not as a second "alice"
    assert "\x1b" not in out  # no escape sequence from a client reaches the operator's terminal
