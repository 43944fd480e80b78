"""deploy/kubernetes, checked statically: every manifest is well formed, selectors match pod labels,
Services reach named container ports, probes exist, volumes and Secret keys resolve, and the gateway's
config passes the gateway's validation with the environment its Deployment sets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config import load_settings
from tests.helpers.servers import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "kubernetes"
WORKLOADS = {"Deployment", "StatefulSet"}


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return data


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in manifests() if d["kind"] == kind}


def workloads() -> dict[str, dict[str, Any]]:
    return {n: d for n, d in {**by_kind("Deployment"), **by_kind("StatefulSet")}.items()}


def secret_keys() -> dict[str, set[str]]:
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    return {secret["metadata"]["name"]: set(secret["stringData"])}


def container_ports(workload: dict[str, Any]) -> dict[str | int, int]:
    out: dict[str | int, int] = {}
    for c in workload["spec"]["template"]["spec"]["containers"]:
        for p in c.get("ports", []):
            out[p["containerPort"]] = p["containerPort"]
            if "name" in p:
                out[p["name"]] = p["containerPort"]
    return out


def test_every_manifest_is_well_formed() -> None:
    kust = kustomization()
    for name in kust["resources"]:
        assert (K8S / name).is_file(), name
    for gen in kust["configMapGenerator"]:
        for entry in gen["files"]:
            assert (K8S / entry.split("=", 1)[-1]).is_file(), entry
    seen: set[tuple[str, str]] = set()
    for doc in manifests():
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
    assert {"Deployment", "StatefulSet", "Service", "Namespace"} <= {k for k, _ in seen}
    assert kust["namespace"] == by_kind("Namespace").popitem()[0]


def test_workloads_have_images_probes_and_resolvable_volumes_and_secrets() -> None:
    secrets = secret_keys()
    config_maps = {g["name"] for g in kustomization()["configMapGenerator"]}
    images = {i["name"] for i in kustomization()["images"]}
    for name, wl in workloads().items():
        spec = wl["spec"]
        pod = spec["template"]
        selector = spec["selector"]["matchLabels"]
        assert selector.items() <= pod["metadata"]["labels"].items(), f"{name}: selector does not match its pods"
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps
        if wl["kind"] == "StatefulSet":
            svc = by_kind("Service")[spec["serviceName"]]
            assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        ports = container_ports(wl)
        for c in pod["spec"]["containers"]:
            assert c.get("image"), f"{name}/{c['name']}: no image"
            assert c["image"].split(":")[0] in images or ":" in c["image"], f"{name}: unpinned image {c['image']}"
            assert c.get("readinessProbe") and c.get("livenessProbe"), f"{name}/{c['name']}: probes missing"
            for probe in (c.get("startupProbe"), c["readinessProbe"], c["livenessProbe"]):
                if probe is None:
                    continue
                port = (probe.get("httpGet") or probe.get("tcpSocket") or {}).get("port")
                if port is not None:
                    assert port in ports, f"{name}: probe port {port} is not a container port"
            assert c.get("resources", {}).get("requests"), f"{name}/{c['name']}: no resource requests"
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in claims, f"{name}: volume {m['name']} undefined"
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], set()), f"{name}: secret {ref} not in the example"


def test_services_select_pods_and_reach_named_ports() -> None:
    wls = workloads()
    for name, svc in by_kind("Service").items():
        targets = [
            w
            for w in wls.values()
            if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, f"Service {name} selects {len(targets)} workloads"
        ports = container_ports(targets[0])
        for p in svc["spec"]["ports"]:
            assert p.get("targetPort", p["port"]) in ports, f"Service {name}: targetPort {p.get('targetPort')}"


def test_gpu_servers() -> None:
    for name in ("llama-2-7b", "llama-2-13b"):
        sts = by_kind("StatefulSet")[name]
        c = sts["spec"]["template"]["spec"]["containers"][0]
        assert c["image"] == "vllm/vllm-openai"
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert "--max-model-len=4096" in c["args"]
        assert by_kind("Service")[name]["spec"]["clusterIP"] == "None"  # headless: one DNS name per pod
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/root/.cache/huggingface", "/dev/shm"} <= mounts


def _resolve(env: list[dict[str, Any]]) -> dict[str, str]:
    """The container environment, with Secret values from the example and $(VAR) references expanded."""
    secrets = yaml.safe_load((K8S / "secret.example.yaml").read_text())["stringData"]
    out: dict[str, str] = {}
    for e in env:
        if "value" in e:
            out[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: out.get(m.group(1), m.group(0)), str(e["value"]))
        else:
            out[e["name"]] = str(secrets[e["valueFrom"]["secretKeyRef"]["key"]])
    return out


def test_gateway_config_passes_validation_with_its_deployment_env(monkeypatch: pytest.MonkeyPatch) -> None:
    deploy = by_kind("Deployment")["gateway"]
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    env = _resolve(container["env"])
    for key in list(os.environ):
        if key.startswith("GATEWAY_") or key in ("REDIS_URL", "DATABASE_URL", "OPENAI_BASE_URL"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # the file the ConfigMap is generated from, mounted where the container reads it
    (entry,) = next(g for g in kustomization()["configMapGenerator"] if g["name"] == "gateway-config")["files"]
    key, path = entry.split("=", 1)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert f"{mount['mountPath']}/{key}" == env["GATEWAY_CONFIG"] == container["args"][3]
    settings = load_settings(K8S / path)

    services = by_kind("Service")
    assert urlsplit(settings.cache.redis_url or "").hostname in services
    assert urlsplit(settings.ledger.url).hostname in services
    assert (
        urlsplit(settings.ledger.url).password
        == yaml.safe_load((K8S / "secret.example.yaml").read_text())["stringData"]["postgres-password"]
    )
    assert settings.server.port == container["ports"][0]["containerPort"]
    statefulsets = by_kind("StatefulSet")
    for spec in settings.models:
        if spec.backend != "vllm":
            continue
        for url in [spec.base_url or "", *spec.replicas]:
            host = urlsplit(url).hostname or ""
            pod, _, service = host.partition(".")
            sts = statefulsets[service]
            assert sts["spec"]["serviceName"] == service and re.fullmatch(rf"{service}-\d+", pod), host
            args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
            assert f"--served-model-name={spec.upstream_name}" in args
            assert f"--port={urlsplit(url).port}" in args


def test_kubectl_kustomize_builds_it() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the static checks above still ran")
    proc = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap"} <= {d["kind"] for d in docs}
    assert all(d["metadata"].get("namespace") == "llm-gateway" for d in docs if d["kind"] != "Namespace")
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert {"name": "config", "configMap": {"name": config_map["metadata"]["name"]}} in pod["volumes"]
    assert config_map["data"]["gateway.yaml"] == (K8S / "config" / "gateway.yaml").read_text()
    images = {c["image"] for d in docs if d["kind"] in WORKLOADS for c in d["spec"]["template"]["spec"]["containers"]}
    assert all(":" in image for image in images), images  # every image pinned to a tag after kustomize


def test_docs_exist() -> None:
    text = (REPO_ROOT / "docs" / "deploy.md").read_text()
    for needle in ("--scale gateway=", "kubectl apply -k deploy/kubernetes", "--workers", "replicas:"):
        assert needle in text, needle
    assert Path(K8S / "secret.example.yaml").is_file()


def test_redis_and_postgres_answer_the_gateway_only() -> None:
    """Neither store has a password: a NetworkPolicy lets only the gateway's pods reach each, on its port."""
    gateway_labels = workloads()["gateway"]["spec"]["template"]["metadata"]["labels"]
    for store, port in (("redis", 6379), ("postgres", 5432)):
        labels = workloads()[store]["spec"]["template"]["metadata"]["labels"]
        (policy,) = [
            p
            for p in by_kind("NetworkPolicy").values()
            if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        (rule,) = policy["spec"]["ingress"]
        (source,) = rule["from"]
        assert source["podSelector"]["matchLabels"].items() <= gateway_labels.items()
        assert [p["port"] for p in rule["ports"]] == [port]


def test_the_example_secret_s_master_key_cannot_serve_until_replaced() -> None:
    """The example's master key was the public placeholder, only warned about: a Service (or an Ingress) in front of
    the pod let anyone with the published key administer the gateway. Copied as it is, the gateway now refuses."""
    from gateway.config import settings_from_dict
    from gateway.exposure import exposure_problem

    key = yaml.safe_load((K8S / "secret.example.yaml").read_text())["stringData"]["master-key"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GATEWAY_MASTER_KEY", key)
        settings = settings_from_dict({"models": [{"name": "m", "backend": "openai", "base_url": "http://m/v1"}]})
        assert exposure_problem(settings, "0.0.0.0") is not None
