"""docker-compose.yml and the files it mounts, checked without a container engine.

`docker compose config` cannot run here, so the stack is checked structurally: every bind-mounted
file exists, Redis runs append-only on a named volume, Prometheus loads the chart's alert rules,
Grafana is provisioned with the chart's dashboards, and the example Headwater config is accepted
by `headwater validate`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_DIR = ROOT / "deploy" / "compose"


def compose() -> dict[str, Any]:
    # Compose files use YAML merge keys (<<), which PyYAML's safe loader resolves.
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts.append(((ROOT / source).resolve(), target))
    return mounts


def test_services_and_volumes() -> None:
    stack = compose()
    assert set(stack["services"]) == {
        "redis",
        "moto",
        "moto-init",
        "worker",
        "poller",
        "api",
        "prometheus",
        "grafana",
    }
    named = set(stack["volumes"])
    for service in stack["services"].values():
        assert "image" in service
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in named, f"undeclared volume {source}"
        for dependency in service.get("depends_on", {}):
            assert dependency in stack["services"]


def test_every_bind_mounted_file_exists() -> None:
    for name, service in compose()["services"].items():
        for source, _ in bind_mounts(service):
            if source.name == "examples":  # the handler package, shipped with the code
                continue
            assert source.exists(), f"{name} mounts missing {source}"


def test_redis_is_append_only_on_a_named_volume() -> None:
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-data:/data" in redis["volumes"]


def test_headwater_processes() -> None:
    services = compose()["services"]
    for name, verb in (("worker", "worker"), ("poller", "poll")):
        service = services[name]
        command = service["command"]
        assert command[0] == verb
        assert command[command.index("--config") + 1] == "/etc/headwater/headwater.yaml"
        assert command[command.index("--metrics-port") + 1] == "9100"
        grace = int(command[command.index("--grace-seconds") + 1])
        assert int(service["stop_grace_period"].removesuffix("s")) > grace
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (ROOT / service["build"]["dockerfile"]).is_file()
        env = service["environment"]
        assert env["HEADWATER_REDIS_URL"] == "redis://redis:6379/0"
        assert env["AWS_ENDPOINT_URL"] == "http://moto:5000"
        assert "/healthz" in " ".join(service["healthcheck"]["test"])
        mounts = {target: source for source, target in bind_mounts(service)}
        assert mounts["/etc/headwater/headwater.yaml"] == COMPOSE_DIR / "headwater.yaml"


def test_prometheus_scrapes_headwater_and_loads_the_rules() -> None:
    service = compose()["services"]["prometheus"]
    mounts = {target: source for source, target in bind_mounts(service)}
    config_path = mounts["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yaml"]
    rules = [source for target, source in mounts.items() if target.startswith("/etc/prometheus/rules/")]
    assert rules == [ROOT / "deploy" / "helm" / "headwater" / "rules" / "alerts.yaml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "headwater"]  # alerts use job="headwater"
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {"worker:9100", "poller:9100", "api:9100"}


def test_grafana_is_provisioned_with_the_chart_dashboards() -> None:
    service = compose()["services"]["grafana"]
    mounts = {target: source for source, target in bind_mounts(service)}
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "headwater.yaml").read_text())["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert dashboards == ROOT / "deploy" / "helm" / "headwater" / "dashboards"
    assert len(list(dashboards.glob("*.json"))) == 2


def test_seed_creates_the_queues_the_config_uses() -> None:
    services = compose()["services"]
    queues = set(services["moto-init"]["environment"]["SEED_QUEUES"].split(","))
    config = yaml.safe_load((COMPOSE_DIR / "headwater.yaml").read_text())
    arns = {m["EventSourceArn"] for m in config["EventSourceMappings"]}
    for function in config["Functions"]:
        arns.add(function["DeadLetterConfig"]["TargetArn"])
        arns.add(function["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"])
    assert {arn.rsplit(":", 1)[1] for arn in arns} == queues


def test_example_config_is_valid_for_headwater() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", "validate", "--config", str(COMPOSE_DIR / "headwater.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_a_non_root_headwater_image() -> None:
    lines = [line for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines() if line.strip()]
    instructions = [line.split(None, 1) for line in lines if not line.startswith(("#", " "))]

    def last(word: str) -> str:
        return [rest for w, rest in instructions if w == word][-1]

    assert last("FROM") == "python:3.11-slim"
    assert any("pip install --no-cache-dir ." in line for line in lines)
    uid = last("USER").split(":")[0]
    assert uid.isdigit()  # numeric, so the kubelet can check runAsNonRoot
    assert uid != "0"
    assert "PYTHONPATH=/var/task" in "\n".join(lines)
    assert last("ENTRYPOINT").endswith('"headwater"]')
    ignored = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    for needed in ("pyproject.toml", "README.md", "broker", "workers", "examples"):
        assert needed not in ignored
