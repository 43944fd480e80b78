"""``server.metrics_require_key``: /metrics answers only the master key (by default it answers anyone who reaches
the port, as Prometheus exporters do: it names models and shows traffic, spend and backend health)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.hardening.gateways import master_key, sim_gateway

MASTER = "sk-master-" + uuid.uuid4().hex


@pytest.mark.parametrize("required", [False, True])
def test_metrics_answer_the_master_key_when_required(tmp_path: Path, required: bool) -> None:
    with master_key(MASTER), sim_gateway(tmp_path, {"server": {"metrics_require_key": required}}) as gw:
        anyone = httpx.get(gw.base_url + "/metrics")
        master = httpx.get(gw.base_url + "/metrics", headers={"authorization": f"Bearer {MASTER}"})
    assert master.status_code == 200 and "gateway_requests_total" in master.text
    if required:
        assert anyone.status_code == 401 and anyone.json()["error"]["message"]
        assert "gateway_" not in anyone.text
    else:
        assert anyone.status_code == 200
