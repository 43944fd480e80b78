"""compose.yaml, its configs and the Dockerfile, checked statically (no Docker engine here): services,
healthchecks, dependencies, ports, volumes, variables; the stack's gateway config passes the gateway's
validation with the environment the stack sets; Debian's docker-compose validates the file."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config import Settings, load_settings
from tests.deploy.compose_vars import environment, interpolate, read_env_file, variables
from tests.helpers.servers import REPO_ROOT

COMPOSE = REPO_ROOT / "compose.yaml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
STACK_CONFIG = "gateway.compose.yaml"
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
MODEL_HOSTS = {"llama-2-7b": "meta-llama/Llama-2-7b-chat-hf", "llama-2-13b": "meta-llama/Llama-2-13b-chat-hf"}


def raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def stack(env: dict[str, str]) -> dict[str, Any]:
    """compose.yaml as compose sees it with ``env`` (``x-`` extensions dropped)."""
    data = interpolate(raw(), env)
    return {k: v for k, v in data.items() if not k.startswith("x-")}


def active(services: dict[str, Any], profiles: set[str]) -> dict[str, Any]:
    return {n: s for n, s in services.items() if not s.get("profiles") or set(s["profiles"]) & profiles}


def depends(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {d: (spec or {}).get("condition", "service_started") for d, spec in deps.items()}


def aliases(service: dict[str, Any]) -> set[str]:
    nets = service.get("networks") or {}
    if isinstance(nets, list):
        return set()
    return {a for net in nets.values() for a in ((net or {}).get("aliases") or [])}


def hostnames(services: dict[str, Any]) -> set[str]:
    return set(services) | {a for s in services.values() for a in aliases(s)}


def published(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host side, container port) of each ``ports`` entry."""
    out = []
    for entry in service.get("ports") or []:
        host, _, container = str(entry).rpartition(":")
        out.append((host, int(container.split("/")[0])))
    return out


def flag(command: list[str], name: str) -> str:
    for i, arg in enumerate(command):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return command[i + 1]
    raise AssertionError(f"{name} not in {command}")


ENVS = {
    "no .env (defaults)": {},
    ".env.example": read_env_file(ENV_EXAMPLE),
}
MODES = {"gpu": {"gpu"}, "cpu": {"cpu"}, "gpu+lb": {"gpu", "lb"}, "cpu+lb": {"cpu", "lb"}}


@pytest.mark.parametrize("env_name", list(ENVS))
@pytest.mark.parametrize("mode", list(MODES))
def test_services_are_complete_and_consistent(env_name: str, mode: str) -> None:
    data = stack(ENVS[env_name])
    services = active(data["services"], MODES[mode])
    names = set(services)
    assert {"gateway", "redis", "postgres", "prometheus"} <= names
    assert ("lb" in names) == ("lb" in MODES[mode])
    declared_volumes = set(data.get("volumes") or {})
    used_volumes: set[str] = set()
    host_ports: dict[str, str] = {}
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), f"{name}: neither image nor build"
        if svc.get("build"):
            context = REPO_ROOT / svc["build"].get("context", ".")
            assert (context / svc["build"].get("dockerfile", "Dockerfile")).is_file()
        check = svc.get("healthcheck") or {}
        assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
        for dep, condition in depends(svc).items():
            assert dep in services, f"{name} depends on {dep}, which is not started in mode {mode}"
            assert condition in CONDITIONS
            if condition == "service_healthy":
                assert (services[dep].get("healthcheck") or {}).get("test"), f"{dep} has no healthcheck"
        for host, _container in published(svc):
            assert host, f"{name}: a published port needs a host side"
            assert host not in host_ports, f"{name} and {host_ports.get(host)} both publish {host}"
            host_ports[host] = name
        for vol in svc.get("volumes") or []:
            source = str(vol).split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO_ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
                used_volumes.add(source)
    if mode.startswith("gpu"):
        assert used_volumes == declared_volumes, declared_volumes - used_volumes


def test_gateway_waits_for_healthy_stores_and_publishes_its_port() -> None:
    services = stack({})["services"]
    gw = services["gateway"]
    assert depends(gw) == {"redis": "service_healthy", "postgres": "service_healthy"}
    assert not gw.get("profiles")
    assert [c for _, c in published(gw)] == [8080]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in gw["volumes"]}
    assert mounts["/etc/gateway/gateway.yaml"] == f"./{STACK_CONFIG}"
    assert environment(gw)["GATEWAY_CONFIG"] == "/etc/gateway/gateway.yaml"
    assert "--appendonly" in services["redis"]["command"]
    assert "redis-data:/data" in services["redis"]["volumes"]
    assert "pg-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]


def test_every_variable_is_declared_in_env_example() -> None:
    example = read_env_file(ENV_EXAMPLE)
    used = variables(raw())
    assert used - set(example) == set(), "declare these in .env.example"
    assert set(example) - used - {"COMPOSE_PROFILES"} == set(), "unused in compose.yaml"
    assert example["COMPOSE_PROFILES"] == "gpu"  # `docker compose up` on a GPU box starts the vLLM servers
    gitignore = (REPO_ROOT / ".gitignore").read_text().split()
    assert ".env" in gitignore


def stack_settings(env_name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, dict[str, Any]]:
    """Validate the stack config with exactly the environment compose gives the gateway container."""
    services = stack(ENVS[env_name])["services"]
    gw_env = environment(services["gateway"])
    for key in list(__import__("os").environ):
        if key.startswith("GATEWAY_") or key in ("REDIS_URL", "DATABASE_URL", "OPENAI_BASE_URL"):
            monkeypatch.delenv(key)
    for key, value in gw_env.items():
        monkeypatch.setenv(key, value)
    return load_settings(REPO_ROOT / STACK_CONFIG), services


@pytest.mark.parametrize("env_name", list(ENVS))
def test_stack_config_passes_validation_and_matches_the_stack(env_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, services = stack_settings(env_name, monkeypatch)
    assert settings.server.port == 8080 and settings.server.host == "0.0.0.0"
    assert settings.server.workers == int(environment(services["gateway"])["GATEWAY_SERVER__WORKERS"])
    assert urlsplit(settings.cache.redis_url or "").hostname == "redis"
    assert settings.ledger.url.startswith("postgresql://") and urlsplit(settings.ledger.url).hostname == "postgres"
    db = urlsplit(settings.ledger.url)
    pg_env = environment(services["postgres"])
    assert (db.username, db.password, db.path[1:]) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        pg_env["POSTGRES_DB"],
    )
    for mode in ("gpu", "cpu"):
        running = active(services, {mode})
        for spec in settings.models:
            if spec.backend != "vllm":
                continue
            url = urlsplit(spec.base_url or "")
            assert url.hostname in hostnames(running), f"{spec.name}: {url.hostname} is not on the {mode} network"
            server = next(s for s in running.values() if url.hostname in aliases(s))
            if mode == "gpu":
                assert flag(server["command"], "--served-model-name") == spec.upstream_name
                assert int(flag(server["command"], "--port")) == url.port
                assert int(flag(server["command"], "--max-model-len")) <= (spec.context_window or 0)
            else:
                assert flag(server["command"], "--model-name") == spec.upstream_name
                assert int(flag(server["command"], "--port")) == url.port
        assert {s.name for s in settings.models} >= {"llama-2-7b", "llama-2-13b", "gpt-4"}
    gpt4 = settings.model("gpt-4")
    assert gpt4 is not None and gpt4.api_key_env == "OPENAI_API_KEY"
    if env_name == "no .env (defaults)":  # `docker compose --profile cpu up` with nothing set: all simulated
        assert urlsplit(gpt4.base_url or "").hostname in active(services, {"cpu"})
    else:
        assert gpt4.base_url == "https://api.openai.com/v1"


def test_gpu_servers_fit_their_gpus() -> None:
    for env in ENVS.values():
        services = active(stack(env)["services"], {"gpu"})
        per_gpu: dict[str, float] = {}
        for name in ("vllm-7b", "vllm-13b"):
            svc = services[name]
            assert svc["image"].startswith("vllm/vllm-openai:")
            assert svc.get("ipc") == "host" or svc.get("shm_size")
            devices = svc["deploy"]["resources"]["reservations"]["devices"]
            assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
            assert "hf-cache:/root/.cache/huggingface" in svc["volumes"]
            assert environment(svc)["HF_TOKEN"] == env.get("HF_TOKEN", "")
            util = float(flag(svc["command"], "--gpu-memory-utilization"))
            for gpu in devices[0]["device_ids"]:
                per_gpu[gpu] = per_gpu.get(gpu, 0.0) + util
        assert all(0 < total <= 0.95 for total in per_gpu.values()), per_gpu


def test_prometheus_scrapes_the_gateway_and_the_model_servers() -> None:
    prom = yaml.safe_load((REPO_ROOT / "deploy/compose/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    services = stack({})["services"]
    assert jobs["gateway"]["dns_sd_configs"][0]["names"] == ["gateway"]
    assert jobs["gateway"]["dns_sd_configs"][0]["port"] == 8080
    targets = {t for sc in jobs["vllm"]["static_configs"] for t in sc["targets"]}
    assert targets == {f"{h}:8000" for h in MODEL_HOSTS}
    for mode in ("gpu", "cpu"):
        assert set(MODEL_HOSTS) <= hostnames(active(services, {mode}))
    mounts = [str(v) for v in services["prometheus"]["volumes"]]
    assert "./deploy/compose/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_load_balancer_config() -> None:
    conf = (REPO_ROOT / "deploy/compose/nginx.conf").read_text()
    assert re.search(r"set \$\w+ http://gateway:8080;", conf)
    # The resolver is the container's own (the nginx image's template step), not Docker's fixed 127.0.0.11.
    assert "resolver ${NGINX_LOCAL_RESOLVERS} " in conf and "proxy_buffering off;" in conf
    lb = stack({})["services"]["lb"]
    assert "./deploy/compose/nginx.conf:/etc/nginx/templates/default.conf.template:ro" in lb["volumes"]
    assert "NGINX_LOCAL_RESOLVERS=" in lb["command"][-1] and "/docker-entrypoint.sh nginx" in lb["command"][-1]
    assert [c for _, c in published(lb)] == [80]
    assert "listen 80;" in conf and "location = /nginx-health" in conf


def test_dockerfile() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    # One file for both builds: BASE_IMAGE (python slim unless given) in both stages, and an empty
    # `wheelhouse` stage that `--build-context wheelhouse=DIR` replaces for the air-gapped build.
    assert stages == ["scratch", "${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert re.search(r"^ARG BASE_IMAGE=python:\$\{PYTHON_VERSION\}-slim$", text, re.M)
    assert re.search(r"^FROM scratch AS wheelhouse$", text, re.M)
    assert text.count("--mount=type=bind,from=wheelhouse,target=/wheels") == 2
    assert text.count("--no-index --find-links /wheels") == 2
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*http://127\.0\.0\.1:8080/health", text, re.M)
    assert re.search(r"^EXPOSE 8080$", text, re.M)
    assert '"/etc/gateway/gateway.yaml"' in text.split("\nCMD ")[-1]
    ignore = (REPO_ROOT / ".dockerignore").read_text().split()
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in source.split():
            assert (REPO_ROOT / path).exists(), path
            assert f"!{path}" in ignore or f"!{path}/" in ignore, f"{path} is excluded by .dockerignore"


def test_docker_compose_validates_the_file(tmp_path: Path) -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip(
            "Debian's docker-compose is not installed (apt-get install docker-compose): "
            "the static checks above still ran"
        )
    empty = tmp_path / "empty.env"
    empty.write_text("")
    runs = {  # `--profile cpu up` with no .env; the GPU box's `up` with .env (plus the load balancer)
        "cpu, no .env": (empty, ["--profile", "cpu"]),
        "gpu+lb, .env.example": (ENV_EXAMPLE, ["--profile", "gpu", "--profile", "lb"]),
    }
    procs = {
        name: subprocess.Popen(
            [
                "docker-compose",
                "--project-directory",
                str(REPO_ROOT),
                "-f",
                str(COMPOSE),
                "--env-file",
                str(env_file),
                *profiles,
                "config",
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (env_file, profiles) in runs.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"{name}: {err}"
        normalised = yaml.safe_load(out)
        assert set(normalised["services"]) == set(raw()["services"])
        gw = normalised["services"]["gateway"]
        assert gw["depends_on"]["postgres"]["condition"] == "service_healthy"
        expected = "https://api.openai.com/v1" if "example" in name else "http://sim-gpt-4:8000/v1"
        assert gw["environment"]["OPENAI_BASE_URL"] == expected
