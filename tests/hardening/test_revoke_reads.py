"""A key revoked through one replica is refused at once by another sharing Redis, on the reads too (its spend,
the model list, its stored responses): only inference requests checked the shared revocations, and a replica that
had the key's record cached served the reads for up to auth.key_cache_seconds."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import redis

from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app
from tests.hardening.gateways import master_key, sim_models
from tests.hardening.support import LedgerFile
from tests.helpers.servers import run_asgi_server, serve_gateway

MASTER = "sk-master-" + uuid.uuid4().hex
REDIS = "redis://127.0.0.1:6379/0"


def test_a_revoked_key_reads_nothing_on_another_replica(tmp_path: Path) -> None:
    prefix = f"test-revoke-reads:{uuid.uuid4().hex[:8]}:"
    with master_key(MASTER), run_asgi_server(create_simulator_app("fast", model_name="sim")) as sim:
        cfg = {
            "models": sim_models(sim),
            "cache": {"enabled": False},
            "server": {"metrics_scrape_seconds": 3600},
            "ledger": {"url": LedgerFile(tmp_path / "ledger.db").url, "flush_interval_seconds": 0.05},
            "auth": {"redis_url": REDIS, "redis_prefix": prefix, "key_cache_seconds": 60},
        }
        try:
            with serve_gateway(settings_from_dict(cfg)) as a, serve_gateway(settings_from_dict(cfg)) as b:
                admin = {"authorization": f"Bearer {MASTER}"}
                made = httpx.post(a.base_url + "/admin/keys", json={"name": "r"}, headers=admin).json()
                key = {"authorization": f"Bearer {made['key']}"}
                body = {"model": "cheap", "input": "secret plans", "max_output_tokens": 5}
                stored = httpx.post(b.base_url + "/v1/responses", json=body, headers=key, timeout=30).json()
                paths = ("/v1/spend", f"/v1/responses/{stored['id']}", "/v1/models")
                count = {"model": "cheap", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
                feedback = {"request_id": "req-revoke", "score": 1}

                def posts() -> list[int]:  # the POSTs that read rather than infer: a token count, feedback
                    return [
                        httpx.post(b.base_url + "/v1/messages/count_tokens", json=count, headers=key).status_code,
                        httpx.post(b.base_url + "/v1/feedback", json=feedback, headers=key).status_code,
                    ]

                assert [httpx.get(b.base_url + p, headers=key).status_code for p in paths] == [200, 200, 200]
                assert posts() == [200, 404]  # no such request of this key
                assert httpx.post(a.base_url + f"/admin/keys/{made['id']}/revoke", headers=admin).status_code == 200
                after = posts() + [httpx.get(b.base_url + p, headers=key).status_code for p in paths]
        finally:
            client = redis.Redis.from_url(REDIS)
            for name in client.scan_iter(match=prefix + "*"):
                client.delete(name)
            client.close()
    assert after == [401, 401, 401, 401, 401]
