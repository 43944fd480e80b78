"""Every request yields exactly one ledger row, whatever happened (README, docs/frontdoors.md): an inference request
whose headers pass ``server.max_header_bytes`` is answered 431 and was never recorded (no row, no key, nothing in
the spend reports), unlike every other refusal (401, 400, 413, 415, duplicate headers)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import pytest

from tests.hardening.gateways import master_key, sim_gateway
from tests.hardening.support import LedgerFile

MASTER = "sk-master-" + uuid.uuid4().hex


def _raw_post(port: int, path: str, headers: str, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n{headers}"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
async def test_oversized_head_is_recorded(tmp_path: Path, path: str) -> None:
    with master_key(MASTER), sim_gateway(tmp_path) as gw:
        rid = "hdr-" + uuid.uuid4().hex
        body = b'{"model": "cheap", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}'
        pad = "x-pad: " + "a" * 20_000 + "\r\n"  # past the 16 KiB default
        status = await asyncio.to_thread(
            _raw_post, gw.server.port, path, f"authorization: Bearer {MASTER}\r\nx-request-id: {rid}\r\n{pad}", body
        )
        assert b" 431 " in status, status
        row = await LedgerFile(tmp_path / "ledger.db").one_row(rid, wait_s=3)
        assert row["status_code"] == 431
