"""Config mistakes found at load time, each as one line naming the file or environment variable and the key:
undecodable files, duplicate YAML keys, environment values that cannot be parsed, store URLs of the wrong
kind, embedding models where chat models are needed, and master keys too weak for a public address."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from gateway import config as cfg
from gateway import exposure
from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.exposure import exposure_problem
from tests.gateway.test_config import MINIMAL

EMBEDDING = """
  - name: emb
    backend: openai
    base_url: https://api.openai.com/v1
    mode: embedding
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GATEWAY_* setting, store URL or master key of the shell running the tests leaks into these."""
    for key in list(os.environ):
        if key.upper().startswith("GATEWAY_") or key in ("REDIS_URL", "DATABASE_URL"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str | bytes) -> Path:
    p = tmp_path / "gateway.yaml"
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def problem(path: Path) -> str:
    """The ConfigError ``load_settings(path)`` raises (asserted to be one line)."""
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# -- defect 1: undecodable files, unparsable environment values, store URLs --------------------------------


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.encode() + b"# caf\xe9 latin-1\n")
    message = problem(path)
    assert message.startswith(f"{path}: ") and "not UTF-8" in message


def test_a_list_setting_given_as_a_plain_string_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_SERVER__CORS_ORIGINS", "https://app.example.com")
    monkeypatch.setenv("GATEWAY_SERVER__HOST", "127.0.0.1")  # a fine neighbour is not blamed
    message = problem(write(tmp_path, MINIMAL))
    assert message.startswith("environment variable GATEWAY_SERVER__CORS_ORIGINS: server.cors_origins: "), message
    assert '["https://a.example.com"]' in message  # how to write it


def test_a_valid_json_list_in_the_environment_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SERVER__CORS_ORIGINS", '["https://app.example.com"]')
    assert load_settings(write(tmp_path, MINIMAL)).server.cors_origins == ["https://app.example.com"]


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("REDIS_URL", "localhost:6379", "environment variable REDIS_URL: cache.redis_url: not a Redis URL"),
        ("REDIS_URL", "http://redis:6379", "environment variable REDIS_URL: cache.redis_url: not a Redis URL"),
        ("REDIS_URL", "redis://redis:port/0", "cache.redis_url: not a Redis URL"),
        ("DATABASE_URL", "postgres//gw@db/gw", "environment variable DATABASE_URL: ledger.url: not a database URL"),
        ("DATABASE_URL", "mysql://gw@db/gw", "ledger.url: unsupported database 'mysql'"),
        ("DATABASE_URL", "postgresql+psycopg2://gw@db/gw", "ledger.url: unsupported database 'postgresql+psycopg2'"),
        ("GATEWAY_AUTH__REDIS_URL", "redis-host:6379", "GATEWAY_AUTH__REDIS_URL: auth.redis_url: not a Redis URL"),
    ],
)
def test_store_urls_of_the_wrong_kind_are_refused_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(env, value)
    assert expected in problem(write(tmp_path, MINIMAL))


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("ledger:\n  url: postgres//gw:secret@db/gw\n", "gateway.yaml: ledger.url: not a database URL"),
        ("cache:\n  redis_url: localhost:6379\n", "gateway.yaml: cache.redis_url: not a Redis URL"),
        ("responses:\n  redis_url: tcp://redis:6379\n", "gateway.yaml: responses.redis_url: not a Redis URL"),
    ],
)
def test_store_urls_in_the_file_are_checked(tmp_path: Path, section: str, expected: str) -> None:
    message = problem(write(tmp_path, MINIMAL + section))
    assert expected in message
    assert "secret" not in message  # a URL's password is never echoed


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///./gateway-ledger.db",
        "sqlite:///./gateway-ledger.db",
        "sqlite+aiosqlite:///:memory:",
        "postgresql://gw:pw@db:5432/gw",
        "postgres://gw:pw@db/gw",
        "postgresql+asyncpg://gw:pw@db/gw",
    ],
)
def test_every_ledger_url_the_database_layer_accepts_loads(tmp_path: Path, url: str) -> None:
    assert load_settings(write(tmp_path, MINIMAL + f"ledger:\n  url: '{url}'\n")).ledger.url == url


def test_the_accepted_ledger_drivers_are_the_database_layers() -> None:
    from gateway.accounting.db import async_url

    for plain in ("sqlite:///x.db", "postgresql://h/db", "postgres://h/db"):
        assert async_url(plain).drivername in cfg.LEDGER_DRIVERS


@pytest.mark.parametrize("url", ["redis://redis:6379/0", "rediss://u:p@redis.example.com:6380/1", "unix:///tmp/r.sock"])
def test_redis_urls_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    assert load_settings(write(tmp_path, MINIMAL)).cache.redis_url == url


# -- defect 3: duplicate keys ------------------------------------------------------------------------------


def test_a_duplicate_section_is_refused_naming_the_key_and_line(tmp_path: Path) -> None:
    text = MINIMAL + "cache:\n  enabled: false\nserver:\n  port: 9000\ncache:\n  ttl_seconds: 60\n"
    message = problem(write(tmp_path, text))
    line = text.splitlines().index("cache:", text.splitlines().index("server:")) + 1
    assert message.startswith(f"{tmp_path / 'gateway.yaml'}: line {line}: duplicate key 'cache'"), message


def test_a_duplicate_nested_key_is_refused(tmp_path: Path) -> None:
    message = problem(write(tmp_path, MINIMAL + "server:\n  port: 9000\n  host: 0.0.0.0\n  port: 9001\n"))
    assert "duplicate key 'port'" in message


def test_yaml_merge_keys_still_override(tmp_path: Path) -> None:
    text = MINIMAL + "cache:\n  <<: {ttl_seconds: 60, enabled: false}\n  enabled: true\n"
    s = load_settings(write(tmp_path, text))
    assert s.cache.enabled and s.cache.ttl_seconds == 60


# -- defect 7: embedding models where chat models are needed -----------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("routes:\n  mixed:\n    models: [gpt-4, emb]\n", "routes.mixed.models: 'emb' is an embedding model"),
        (
            "routes:\n  c:\n    policy: cascade\n    models: [gpt-4]\n    verifier: {model: emb}\n",
            "routes.c.verifier.model: 'emb' is an embedding model",
        ),
        ("quality:\n  judge_model: emb\n", "quality.judge_model: 'emb' is an embedding model"),
    ],
)
def test_embedding_models_cannot_serve_chat(tmp_path: Path, extra: str, expected: str) -> None:
    assert expected in problem(write(tmp_path, MINIMAL + EMBEDDING + extra))


def test_fallbacks_must_serve_the_same_kind_of_request(tmp_path: Path) -> None:
    emb_to_chat = MINIMAL + EMBEDDING + "    fallbacks: [gpt-4]\n"
    assert "models.emb.fallbacks: 'gpt-4' is a chat model" in problem(write(tmp_path, emb_to_chat))
    chat_to_emb = MINIMAL.replace("api_key_env: OPENAI_API_KEY", "api_key_env: OPENAI_API_KEY\n    fallbacks: [emb]")
    assert "models.gpt-4.fallbacks: 'emb' is an embedding model" in problem(write(tmp_path, chat_to_emb + EMBEDDING))


def test_embedding_models_beside_chat_routes_still_load(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, MINIMAL + EMBEDDING + "routes:\n  cheap:\n    models: [llama-2-7b]\n"))
    assert s.resolved_routes()["auto"].models == ["llama-2-7b", "gpt-4"]


# -- defect 8: a setting from the environment is blamed on the variable ------------------------------------


def test_a_list_item_from_the_environment_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_MODELS__0__BASE_URL", "http://10.0.0.5:8000/v1")
    message = problem(write(tmp_path, MINIMAL))
    assert message.startswith("environment variable GATEWAY_MODELS__0__BASE_URL: models: "), message
    assert "${VAR}" in message  # what to do instead


def test_a_bad_scalar_from_the_environment_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SERVER__PORT", "eighty")
    message = problem(write(tmp_path, MINIMAL))
    assert message.startswith("environment variable GATEWAY_SERVER__PORT: server.port: Input should be a valid")


def test_a_bad_value_in_the_file_is_still_blamed_on_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SERVER__HOST", "127.0.0.1")
    message = problem(write(tmp_path, MINIMAL + "server:\n  port: eighty\n"))
    assert message.startswith(f"{tmp_path / 'gateway.yaml'}: server.port: "), message


# -- defect 6: weak master keys on a public address --------------------------------------------------------


def test_a_short_master_key_is_refused_on_a_public_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_MASTER_KEY", "x" * (exposure.MIN_PUBLIC_MASTER_KEY_CHARS - 1))
    settings = load_settings(write(tmp_path, MINIMAL))
    message = exposure_problem(settings, "0.0.0.0")
    assert message is not None and "GATEWAY_MASTER_KEY" in message and "real key" in message
    assert exposure_problem(settings, "127.0.0.1") is None  # loopback: any key (tests use short ones)
    monkeypatch.setenv("GATEWAY_MASTER_KEY", "x" * exposure.MIN_PUBLIC_MASTER_KEY_CHARS)
    assert exposure_problem(load_settings(write(tmp_path, MINIMAL)), "0.0.0.0") is None


def test_the_placeholder_master_key_is_warned_about_on_a_public_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # compose.yaml's default: the container binds 0.0.0.0 and compose publishes it on 127.0.0.1 only, which the
    # gateway cannot see, so the placeholder is a warning at every start there, not a refusal.
    monkeypatch.setenv("GATEWAY_MASTER_KEY", exposure.PLACEHOLDER_MASTER_KEY)
    settings = load_settings(write(tmp_path, MINIMAL))
    assert exposure_problem(settings, "0.0.0.0") is None
    warning = exposure.exposure_warning(settings, "0.0.0.0")
    assert warning is not None and exposure.PLACEHOLDER_MASTER_KEY in warning and "GATEWAY_MASTER_KEY" in warning
    assert exposure.exposure_warning(settings, "127.0.0.1") is None
    monkeypatch.setenv("GATEWAY_MASTER_KEY", "sk-" + "a" * 40)
    assert exposure.exposure_warning(load_settings(write(tmp_path, MINIMAL)), "0.0.0.0") is None


def test_the_server_refuses_a_short_key_and_warns_about_the_placeholder(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import uvicorn

    import gateway.server as server
    from gateway.http_limits import BODY_TIMEOUT_ENV, HEAD_TIMEOUT_ENV

    for name in ("GATEWAY_CONFIG", HEAD_TIMEOUT_ENV, BODY_TIMEOUT_ENV):  # run() sets them: restored after the test
        monkeypatch.delenv(name, raising=False)
    started: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(k["host"]))
    monkeypatch.setattr(server, "setup_logging", lambda level: None)
    config = str(write(tmp_path, MINIMAL + "server:\n  host: 0.0.0.0\n"))

    monkeypatch.setenv("GATEWAY_MASTER_KEY", "sesame")
    with pytest.raises(SystemExit) as exc:
        server.main(["--config", config])
    assert exc.value.code == 2 and started == []
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "real key" in err, err

    monkeypatch.setenv("GATEWAY_MASTER_KEY", exposure.PLACEHOLDER_MASTER_KEY)
    with caplog.at_level(logging.WARNING, logger="gateway.server"):
        server.main(["--config", config])
    assert started == ["0.0.0.0"]
    assert any(exposure.PLACEHOLDER_MASTER_KEY in r.getMessage() for r in caplog.records), caplog.text


def test_a_route_from_the_environment_naming_an_embedding_model_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_ROUTES__CHEAP__MODELS", '["emb"]')
    message = problem(write(tmp_path, MINIMAL + EMBEDDING))
    assert message.startswith("environment variable GATEWAY_ROUTES__CHEAP__MODELS: "), message
    assert "routes.cheap.models: 'emb' is an embedding model" in message


def test_an_unparsable_variable_is_named_even_beside_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_CACHE__TTL_SECONDS", "60")
    monkeypatch.setenv("GATEWAY_ROUTES", "cheap=cost")
    assert problem(write(tmp_path, MINIMAL)).startswith("environment variable GATEWAY_ROUTES: routes: cannot parse")
