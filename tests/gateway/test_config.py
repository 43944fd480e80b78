"""Config loading: YAML + environment, validated with one clear line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
models:
  - name: llama-2-7b
    backend: vllm
    base_url: http://127.0.0.1:8001/v1
    upstream_model: meta-llama/Llama-2-7b-chat-hf
  - name: gpt-4
    backend: openai
    base_url: https://api.openai.com/v1
    upstream_model: gpt-4
    api_key_env: OPENAI_API_KEY
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gateway.yaml"
    p.write_text(text)
    return p


def test_minimal_file_gets_every_default(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, MINIMAL))
    assert s.server.port == 8080
    assert s.cache.redis_url is None and s.cache.enabled
    assert s.ledger.url.startswith("sqlite+aiosqlite:///")
    assert set(s.resolved_routes()) == {"auto"}
    assert s.resolved_routes()["auto"].models == ["llama-2-7b", "gpt-4"]


def test_example_config_is_valid() -> None:
    s = load_settings(ROOT / "gateway.example.yaml")
    names = {m.name for m in s.models}
    assert {"llama-2-7b", "llama-2-13b", "gpt-4"} <= names
    gpt4 = s.model("gpt-4")
    assert gpt4 is not None and gpt4.api_key_env == "OPENAI_API_KEY" and gpt4.quality == 8.99


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "bogus: 1\n", "gateway.yaml: bogus: unknown key"),
        (MINIMAL + "server:\n  upstream_client: httpx\n", "server.upstream_client: unknown key"),  # removed
        (
            MINIMAL.replace("upstream_model: gpt-4", "upstream_model: gpt-4\n    colour: red"),
            "models[1](gpt-4).colour: unknown key",
        ),
        (MINIMAL + "server:\n  port: eighty\n", "server.port: Input should be a valid integer"),
        ("models:\n  - backend: vllm\n    base_url: http://x/v1\n", "models[0].name: required field is missing"),
        ("models:\n  - name: a\n    backend: vllm\n", "models[0](a): backend 'vllm' needs base_url"),
        (
            MINIMAL.replace("api_key_env: OPENAI_API_KEY", "api_key: sk-123"),
            "put the secret in an environment variable",
        ),
        (MINIMAL + "routes:\n  auto:\n    models: [nope]\n", "routes.auto.models: unknown model 'nope'"),
        (MINIMAL + "routes:\n  x:\n    policy: magic\n", "routes.x.policy: unknown policy 'magic'"),
        ("models: [\n", "gateway.yaml: line"),
        ("", "models: required field is missing"),
    ],
)
def test_problems_are_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    assert expected in message
    assert str(tmp_path / "gateway.yaml") in message


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SERVER__PORT", "9123")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/5")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1/test")
    s = load_settings(write(tmp_path, MINIMAL + "server:\n  host: 0.0.0.0\n"))
    assert s.server.port == 9123 and s.server.host == "0.0.0.0"
    assert s.cache.redis_url == "redis://127.0.0.1:6379/5"
    assert s.ledger.url.startswith("postgresql+asyncpg://")


def test_env_var_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_URL", "http://10.1.2.3:8000/v1")
    text = MINIMAL.replace("http://127.0.0.1:8001/v1", "${VLLM_URL}").replace(
        "https://api.openai.com/v1", "${OPENAI_BASE:-https://api.openai.com/v1}"
    )
    s = load_settings(write(tmp_path, text))
    assert s.models[0].base_url == "http://10.1.2.3:8000/v1"
    assert s.models[1].base_url == "https://api.openai.com/v1"
    monkeypatch.delenv("VLLM_URL")
    with pytest.raises(ConfigError, match=r"models\[0\].base_url: environment variable VLLM_URL is not set"):
        load_settings(write(tmp_path, text))


def test_secret_is_read_from_the_named_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    s = load_settings(write(tmp_path, MINIMAL))
    gpt4 = s.model("gpt-4")
    assert gpt4 is not None and gpt4.api_key() == "sk-from-env"
    assert "sk-from-env" not in s.model_dump_json()


def test_cli_serve_refuses_bad_config_with_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app

    result = CliRunner().invoke(app, ["serve", "--config", str(write(tmp_path, MINIMAL + "bogus: 1\n"))])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {tmp_path / 'gateway.yaml'}: bogus: unknown key"]


def test_server_process_refuses_bad_config_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # ``gateway serve`` execs ``python -m gateway.server``, which validates again (the file may change)
    from gateway.server import main

    with pytest.raises(SystemExit) as exc:
        main(["--config", str(write(tmp_path, MINIMAL + "bogus: 1\n"))])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'gateway.yaml'}: bogus: unknown key"


def test_idle_upstream_connections_close_before_a_python_upstream_closes_them(tmp_path: Path) -> None:
    # A connection the upstream is closing at the moment the gateway reuses it fails that request (a POST is not
    # sent again once its bytes may have left): seen as a 502 from a healthy backend on a uvicorn upstream (vLLM's
    # server) idle for its 5 s keep-alive. The gateway's pool must let connections go first.
    import uvicorn

    upstream_idle_s = uvicorn.Config(app="gateway.app:app_from_env").timeout_keep_alive
    assert load_settings(write(tmp_path, MINIMAL)).server.upstream_keepalive_seconds < upstream_idle_s
