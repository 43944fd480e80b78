"""Verdicts and feedback exported as router labels (``gateway quality labels``), from a live gateway's database."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import openai
import orjson
import yaml

from gateway.cli_quality import export_from_config
from gateway.quality.labels import open_private
from tests.helpers.servers import serve_gateway
from tests.quality.conftest import MASTER, admin, make_settings, wait_judged


async def test_verdicts_and_feedback_become_labels(sims: dict[str, str], tmp_path: Path) -> None:
    cfg = make_settings(sims, tmp_path, quality={})
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    ids: dict[str, str] = {}
    with serve_gateway(cfg) as gw:
        client = openai.AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key=MASTER, max_retries=0)
        for prompt in ("hard one", "trick one", "plain one"):
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": prompt}], max_tokens=8
            )
            ids[prompt] = raw.headers["x-request-id"]
        await client.close()
        await wait_judged(gw, 3)
        async with httpx.AsyncClient(base_url=gw.base_url, headers=admin()) as http:  # the requests were the master's
            for score in (0.9, 0.25):  # only the latest feedback on a request counts
                r = await http.post("/v1/feedback", json={"request_id": ids["plain one"], "score": score})
                assert r.status_code == 201, r.text
            other = (await http.post("/admin/keys", json={"name": "other"})).json()["key"]
        # Another key sends a request of its own under the same (client-chosen) request id, then feedback on it:
        # stored (it is that key's request), but never a label on the master's prompt of that id.
        async with httpx.AsyncClient(base_url=gw.base_url, headers={"authorization": f"Bearer {other}"}) as http:
            body = {"model": "auto", "messages": [{"role": "user", "content": "mine"}], "max_tokens": 8}
            r = await http.post("/v1/chat/completions", json=body, headers={"x-request-id": ids["hard one"]})
            assert r.status_code == 200, r.text
            for _ in range(3):
                r = await http.post("/v1/feedback", json={"request_id": ids["hard one"], "score": 1.0})
                assert r.status_code == 201, r.text
    out = tmp_path / "labels.jsonl"
    assert await export_from_config(config, out, None, None) == 6
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    got = {(r["prompt"], r["source"]): (r["weak_score"], r["strong_score"]) for r in rows}
    assert got == {
        ("hard one", "verdict"): (0.0, 1.0),
        ("trick one", "verdict"): (1.0, 0.0),
        ("plain one", "verdict"): (1.0, 1.0),
        ("plain one", "feedback"): (0.25, 1.0),
        ("mine", "verdict"): (1.0, 1.0),  # the other key's request, sampled too
        ("mine", "feedback"): (1.0, 1.0),  # its feedback, once, on its own prompt
    }
    assert all(r["route"] == "auto" and r["model"] == "weak" and r["benchmark"] == "deployment" for r in rows)
    assert await export_from_config(config, out, "other-route", None) == 0


def test_label_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    """Labels hold the clients' prompts: the export (and background adaptation's) is written 0600, also over a
    file that was there with a wider mode."""
    fresh, old = tmp_path / "labels.jsonl", tmp_path / "old.jsonl"
    old.write_text("x")
    old.chmod(0o644)
    for path in (fresh, old):
        with open_private(path) as fh:
            fh.write(b"{}\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)
