"""Verdicts and feedback exported as router labels (``gateway quality labels``), from a live gateway's database."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import orjson
import yaml

from gateway.cli_quality import export_from_config
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
            r = await http.post("/v1/feedback", json={"request_id": ids["plain one"], "score": 0.25})
            assert r.status_code == 201, r.text
    out = tmp_path / "labels.jsonl"
    assert await export_from_config(config, out, None, None) == 4
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    got = {(r["prompt"], r["source"]): (r["weak_score"], r["strong_score"]) for r in rows}
    assert got == {
        ("hard one", "verdict"): (0.0, 1.0),
        ("trick one", "verdict"): (1.0, 0.0),
        ("plain one", "verdict"): (1.0, 1.0),
        ("plain one", "feedback"): (0.25, 1.0),
    }
    assert all(r["route"] == "auto" and r["model"] == "weak" and r["benchmark"] == "deployment" for r in rows)
    assert await export_from_config(config, out, "other-route", None) == 0
