"""An operator's mistakes that used to pass without a word, or as a traceback: each is now one line naming the
key (or the variable, or the file), at load, or a warning where the config may be meant as written."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_settings, settings_from_dict
from gateway.errors import ConfigError
from gateway.pricing import baseline_problem
from gateway.runtime import build_gateway, close_gateway
from tests.gateway.conftest import THREE_MODELS
from tests.gateway.test_config import MINIMAL, write
from tests.helpers.servers import REPO_ROOT


@pytest.fixture(autouse=True)
def _no_gateway_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("GATEWAY_") or name in ("REDIS_URL", "DATABASE_URL"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("variable", "hint"),
    [
        ("GATEWAY_SERVER_PORT", "GATEWAY_SERVER__PORT"),
        ("GATEWAY_AUTH_ENABLED", "GATEWAY_AUTH__ENABLED"),
        ("GATEWAY_SERVR__PORT", "'servr' is not a section"),
    ],
)
def test_a_misspelt_settings_variable_is_warned_about_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, variable: str, hint: str
) -> None:
    # before: ignored without a word; the server listened on the file's port with auth off
    monkeypatch.setenv(variable, "true")
    caplog.set_level(logging.WARNING, logger="gateway.config")
    load_settings(write(tmp_path, MINIMAL))
    warned = [r.getMessage() for r in caplog.records if r.name == "gateway.config"]
    assert len(warned) == 1 and warned[0].startswith(f"{variable}: ") and hint in warned[0]


def test_gateway_variables_the_config_reads_or_that_are_not_settings_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("GATEWAY_MASTER_KEY", "GATEWAY_CONFIG", "GATEWAY_IMAGE", "GATEWAY_PORT", "GATEWAY_WORKERS"):
        monkeypatch.setenv(name, "x")
    # read by the config itself: ${VAR}, api_key_env, auth.master_key_env
    monkeypatch.setenv("GATEWAY_LEDGER_PASSWORD", "pw")
    monkeypatch.setenv("GATEWAY_MODELS_OPENAI_KEY", "sk-x")
    monkeypatch.setenv("GATEWAY_AUTH_MASTER_KEY", "sk-master-x")
    # what Kubernetes sets for Services named gateway-cache and gateway-router in the namespace
    monkeypatch.setenv("GATEWAY_CACHE_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("GATEWAY_ROUTER_PORT_8080_TCP_ADDR", "10.0.0.2")
    monkeypatch.setenv("GATEWAY_ROUTER_PORT", "tcp://10.0.0.2:8080")
    monkeypatch.setenv("GATEWAY_SERVER__PORT", "9001")
    text = MINIMAL.replace("api_key_env: OPENAI_API_KEY", "api_key_env: GATEWAY_MODELS_OPENAI_KEY")
    text += "ledger:\n  url: postgresql+asyncpg://gw:${GATEWAY_LEDGER_PASSWORD}@127.0.0.1:5432/test\n"
    text += "auth:\n  master_key_env: GATEWAY_AUTH_MASTER_KEY\n"
    caplog.set_level(logging.WARNING, logger="gateway.config")
    settings = load_settings(write(tmp_path, text))
    assert settings.server.port == 9001 and "gw:pw@" in settings.ledger.url and settings.auth.enabled
    assert not [r.getMessage() for r in caplog.records if r.name == "gateway.config"]


@pytest.mark.parametrize("key", ["total", "connect", "first_byte", "between_chunks"])
@pytest.mark.parametrize(("value", "why"), [(".inf", "a finite number"), ("1.0e9", "less than or equal to 86400")])
def test_an_infinite_or_absurd_timeout_is_refused(tmp_path: Path, key: str, value: str, why: str) -> None:
    # before: .inf loaded, then every request to the model was a 500 (aiohttp cannot arm an infinite timer)
    text = MINIMAL.replace(
        "api_key_env: OPENAI_API_KEY", f"api_key_env: OPENAI_API_KEY\n    timeouts: {{{key}: {value}}}"
    )
    with pytest.raises(ConfigError, match=rf"models\[1\]\(gpt-4\)\.timeouts\.{key}: .*{why}"):
        load_settings(write(tmp_path, text))


@pytest.mark.parametrize(
    "setting",
    ["server:\n  keepalive_timeout_seconds", "server:\n  body_timeout_seconds", "auth:\n  reservation_ttl_seconds"],
)
def test_no_setting_takes_infinity(tmp_path: Path, setting: str) -> None:
    # before: server.keepalive_timeout_seconds: .inf loaded, then start-up failed with a traceback (int(inf))
    with pytest.raises(ConfigError, match="a finite number"):
        load_settings(write(tmp_path, MINIMAL + f"{setting}: .inf\n"))


@pytest.mark.parametrize(
    ("line", "key"),
    [("base_url: 127.0.0.1:8001/v1", "base_url"), ("replicas: ['vllm-2:8000/v1']", "replicas")],
)
def test_an_upstream_url_without_a_scheme_is_refused(tmp_path: Path, line: str, key: str) -> None:
    # before: loaded; every request was a 502 "unreachable" and nothing said why
    good = "base_url: http://127.0.0.1:8001/v1"
    text = MINIMAL.replace(good, line if key == "base_url" else f"{good}\n    {line}")
    with pytest.raises(ConfigError, match=rf"models\[0\]\(llama-2-7b\): {key}: .* not an http:// or https:// URL"):
        load_settings(write(tmp_path, text))


def test_a_route_with_an_empty_candidate_list_is_refused(tmp_path: Path) -> None:
    # before: an emptied list meant every chat model, the dearest included
    with pytest.raises(ConfigError, match=r"routes\.cheap\.models: an empty list"):
        load_settings(write(tmp_path, MINIMAL + "routes:\n  cheap:\n    policy: cost\n    models: []\n"))


def test_a_baseline_model_without_a_price_is_refused(tmp_path: Path) -> None:
    # before: every request's saving was recorded against $0, i.e. negative
    configured = tmp_path / "configured"
    configured.mkdir()
    priced = MINIMAL.replace("Llama-2-7b-chat-hf", "Llama-2-7b-chat-hf\n    gpu_hour_usd: 2")
    assert (
        baseline_problem(load_settings(write(configured, priced + "ledger:\n  baseline_model: llama-2-7b\n"))) is None
    )
    # a configured model with no price (a local one without gpu_hour_usd, a hosted one the map does not know)
    unpriced = load_settings(write(configured, MINIMAL + "ledger:\n  baseline_model: llama-2-7b\n"))
    assert (baseline_problem(unpriced) or "").startswith("ledger.baseline_model: 'llama-2-7b' is a configured model")
    config = write(tmp_path, MINIMAL + "ledger:\n  baseline_model: gpt4\n")
    problem = baseline_problem(load_settings(config))
    assert problem is not None and problem.startswith("ledger.baseline_model: 'gpt4'")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "ledger.baseline_model: 'gpt4'" in result.stderr and "Traceback" not in result.stderr


async def test_a_hosted_model_without_a_price_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    data = copy.deepcopy(THREE_MODELS)
    data["models"][2]["upstream_model"] = "ft:gpt-4o-mini-2024-07-18:acme::abc123"  # no price in the map
    caplog.set_level(logging.WARNING, logger="gateway.runtime")
    gw = await build_gateway(settings_from_dict(data))
    await close_gateway(gw)
    warned = [r.getMessage() for r in caplog.records if "has no price" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("model big has no price"), warned
    caplog.clear()
    data["models"][2]["input_cost_per_token"] = "0"  # priced on purpose: no warning
    gw = await build_gateway(settings_from_dict(data))
    await close_gateway(gw)
    assert not [r for r in caplog.records if "has no price" in r.getMessage()]


def test_replay_of_a_missing_or_malformed_file_is_one_line(tmp_path: Path) -> None:
    config = write(tmp_path, MINIMAL)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\ngarbage\n')
    missing = tmp_path / "missing.jsonl"
    for path, expected in ((missing, "No such file"), (bad, f"{bad}:2: not JSON")):
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "replay", str(path), "--config", str(config)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-500:]
        assert expected in result.stderr


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://127.0.0.1:6379/7?ssl=true", "redis-py refuses its options .*'ssl'"),  # every cached request: a 500
        ("redis://127.0.0.1:6379/abc", "the database 'abc' is not a number"),  # quietly database 0
        ("rediss://127.0.0.1:6380/0?ssl_cert_reqs=bogus", "redis-py refuses its options"),  # was a traceback
    ],
)
def test_a_redis_url_redis_py_would_refuse_at_the_first_request_is_refused_at_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, why: str
) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(ConfigError, match=why):
        load_settings(write(tmp_path, MINIMAL))


@pytest.mark.parametrize(
    ("query", "why"),
    [("?foo=bar", "the option 'foo' is not supported"), ("?sslmode=maybe", "sslmode must be one of")],
)
def test_a_postgresql_url_with_an_option_asyncpg_refuses_is_refused_at_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, query: str, why: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test" + query)
    with pytest.raises(ConfigError, match=why):
        load_settings(write(tmp_path, MINIMAL))


async def test_a_model_whose_key_variable_is_unset_or_empty_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``api_key_env: OPENAI_API_KEY`` with the variable unset (or empty, as compose's ``${OPENAI_API_KEY:-}``
    makes it) started silently; every request to the model was then a 502 for the provider's 401."""
    data = copy.deepcopy(THREE_MODELS)
    data["models"][2]["api_key_env"] = "GW_TEST_KEY_UNSET"
    data["models"][1]["api_key_env"] = "GW_TEST_KEY_EMPTY"
    monkeypatch.delenv("GW_TEST_KEY_UNSET", raising=False)
    monkeypatch.setenv("GW_TEST_KEY_EMPTY", "")
    caplog.set_level(logging.WARNING, logger="gateway.runtime")
    gw = await build_gateway(settings_from_dict(data))
    await close_gateway(gw)
    warned = sorted(r.getMessage() for r in caplog.records if "api_key_env" in r.getMessage())
    assert len(warned) == 2, warned
    assert any("GW_TEST_KEY_EMPTY is empty" in w for w in warned)
    assert any("GW_TEST_KEY_UNSET is not set" in w for w in warned)


@pytest.mark.parametrize(
    "setting",
    [
        "cache:\n  ttl_seconds",
        "cache:\n  max_ttl_seconds",
        "responses:\n  ttl_seconds",
        "auth:\n  reservation_ttl_seconds",
    ],
)
def test_a_forever_expiry_is_refused(tmp_path: Path, setting: str) -> None:
    # before: 10**17 ("forever") loaded, then every Redis write failed ("invalid expire time"): no cache hit, and
    # no stored response could be read back
    with pytest.raises(ConfigError, match="less than or equal to 315360000"):
        load_settings(write(tmp_path, MINIMAL + f"{setting}: 100000000000000000\n"))


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "--profile", "nope"],  # KeyError traceback
        ["simulate", "--time-scale", "-1"],
        ["simulate", "--max-concurrency", "0"],
        ["simulate", "--port", "99999"],  # listened on 99999 - 65536, saying 99999
        ["demo", "--port", "99999"],  # OverflowError traceback
    ],
)
def test_a_bad_command_line_value_is_a_usage_error(args: list[str]) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app

    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception


def test_replay_with_an_unknown_policy_is_a_usage_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app

    data = tmp_path / "traffic.jsonl"
    data.write_text('{"prompt": "hi", "model": "auto"}\n')
    r = CliRunner().invoke(app, ["replay", str(data), "--config", str(write(tmp_path, MINIMAL)), "--policy", "nope"])
    assert r.exit_code == 2 and "--policy" in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception


@pytest.mark.parametrize(
    ("variable", "key"),
    [("GATEWAY_DEFAULT_POLICY", "default_policy"), ("GATEWAY_ROUTES__AUTO__POLICY", "routes.auto.policy")],
)
def test_an_unknown_policy_set_by_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, key: str
) -> None:
    # before: "r9.yaml: default_policy: unknown policy" sent the operator to a file that says nothing of it
    monkeypatch.setenv(variable, "nope")
    with pytest.raises(ConfigError, match=rf"^environment variable {variable}: {key}: unknown policy 'nope'"):
        load_settings(write(tmp_path, MINIMAL + "routes:\n  auto:\n    policy: cost\n"))


def test_an_api_key_header_sent_twice_is_refused_as_authorization_is() -> None:
    from gateway.http_limits import header_dict

    with pytest.raises(Exception, match="x-api-key' was sent more than once"):
        header_dict([(b"x-api-key", b"k"), (b"x-api-key", b"k")])
