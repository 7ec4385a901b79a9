"""The Helm chart, its alert rules and dashboards, checked with the real helm and promtool.

`helm lint` and `helm template` render the chart with the default values and a few value sets;
the rendered manifests are parsed and the properties Headwater depends on are asserted
(append-only Redis, grace periods, probes, config checksum, non-root pods, schema checks).
`promtool check rules` and `promtool test rules` run the alert rules and their unit tests.

The tools come from PATH or ${HEADWATER_CACHE:-~/.cache/headwater}/bin; scripts/install-tools
installs them. A missing tool fails the test: this suite never skips.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.chart import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    ROOT,
    Manifest,
    find,
    flag,
    render,
    render_error,
    run,
    template,
    tool,
)

RULES = CHART / "rules"
DASHBOARDS = CHART / "dashboards"

# The metric names the processes expose (the contract the rules and dashboards are written against).
CONTRACT_METRICS = {
    "headwater_jobs_running",
    "headwater_jobs_scheduled",
    "headwater_invocations_total",
    "headwater_invocation_errors_total",
    "headwater_throttles_total",
    "headwater_invocation_duration_seconds",
    "headwater_concurrent_executions",
    "headwater_concurrency_limit",
    "headwater_async_events_received_total",
    "headwater_async_event_age_seconds",
    "headwater_async_events_dropped_total",
    "headwater_dead_letter_errors_total",
    "headwater_destination_delivery_failures_total",
    "headwater_queue_depth",
    "headwater_cold_starts_total",
    "headwater_worker_pool_workers",
    "headwater_mapping_events_total",
    "headwater_poller_batch_size",
    "headwater_poller_concurrent_batches",
    "headwater_sqs_oldest_message_age_seconds",
    "headwater_kafka_offset_lag",
    "headwater_kafka_rebalances_total",
    "headwater_poller_last_poll_timestamp_seconds",
    "headwater_poller_polls_total",
    "headwater_poller_poll_duration_seconds",
    "headwater_build_info",
    "headwater_jobs_quarantined_total",
    "headwater_quarantined_jobs",
    "headwater_fenced_operations_total",
    "headwater_worker_leases_lost_total",
    "headwater_store_errors_total",
    "headwater_mapping_info",
    "headwater_poller_crashes_total",
    "headwater_worker_restarts_total",
    "headwater_iterator_age_seconds",
    "headwater_poller_leases",
    "headwater_poller_lease_takes_total",
    "headwater_poller_leases_fenced_total",
    "headwater_poller_stream_redeliveries_total",
}
# Names retired by the "one name per idea" renames (issue 11): nothing may query them any more.
# (`eventSource` in Lambda's events and `event_source_arn` in the model are other words, and stay.)
RETIRED_NAMES = re.compile(r"headwater_esm_|(?<!\w)event_source(?!\w)")
HISTOGRAMS = {
    "headwater_invocation_duration_seconds",
    "headwater_async_event_age_seconds",
    "headwater_poller_batch_size",
    "headwater_poller_poll_duration_seconds",
}


def helm(verb: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """`helm lint --strict` or `helm template` with these values (JSON on stdin: JSON is YAML)."""
    if verb == "template":
        return template(values)
    argv = [tool("helm"), verb, str(CHART), "--strict", "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    return run([*argv, "--values", "-"], stdin=json.dumps(values or {}, sort_keys=True))


def kinds(docs: list[Manifest]) -> set[str]:
    return {doc["kind"] for doc in docs}


def container(workload: Manifest) -> Manifest:
    containers: list[Manifest] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(workload: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(workload).get("env", [])}


WORKER = f"{RELEASE}-headwater-worker"
POLLER = f"{RELEASE}-headwater-poller"
REDIS = f"{RELEASE}-headwater-redis"
CONFIG_MAP = f"{RELEASE}-headwater-config"

EXTERNAL_REDIS = {"redis": {"enabled": False, "url": "redis://redis.example:6379/2"}}
ALL_MONITORING = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True},
    "dashboards": {"enabled": True},
}
EXAMPLE_CONFIG = {
    "config": {
        "Functions": [
            {"FunctionName": "hello", "Handler": "examples.handlers.hello", "Timeout": 30, "MemorySize": 256},
            {"FunctionName": "report", "Handler": "examples.handlers.sleep", "Timeout": 600},
        ],
        "EventSourceMappings": [
            {"FunctionName": "hello", "EventSourceArn": "arn:aws:sqs:us-east-1:123456789012:hello-events"},
        ],
        "Headwater": {"AsyncRetryDelaysSeconds": [60, 120]},
    }
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "external-redis": EXTERNAL_REDIS,
    "monitoring": ALL_MONITORING,
    "example-config": EXAMPLE_CONFIG,
    "autoscaling": {"workers": {"autoscaling": {"enabled": True, "type": "hpa", "targetCPUUtilizationPercentage": 80}}},
}


# --------------------------------------------------------------------------- lint and render


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_lint_passes(value_set: str) -> None:
    result = helm("lint", VALUE_SETS[value_set])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_default_render_has_the_expected_objects() -> None:
    docs = render()
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert names == {
        ("ServiceAccount", f"{RELEASE}-headwater"),
        ("ConfigMap", CONFIG_MAP),
        ("ConfigMap", REDIS),
        ("Service", WORKER),
        ("Service", POLLER),
        ("Service", REDIS),
        ("Service", f"{REDIS}-headless"),
        ("Deployment", WORKER),
        ("Deployment", POLLER),
        ("StatefulSet", REDIS),
        ("PodDisruptionBudget", WORKER),
        ("PodDisruptionBudget", POLLER),
        ("Secret", f"{REDIS}-auth"),
        ("NetworkPolicy", REDIS),
        ("NetworkPolicy", f"{RELEASE}-headwater-metrics"),
    }
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in docs)


def test_worker_and_poller_commands_follow_the_cli() -> None:
    docs = render({"workers": {"processes": 6, "functions": ["hello", "report"]}})
    worker_args = container(find(docs, "Deployment", WORKER))["args"]
    assert worker_args[0] == "worker"
    assert flag(worker_args, "--config") == "/etc/headwater/headwater.yaml"
    assert flag(worker_args, "--processes") == "6"
    assert flag(worker_args, "--functions") == "hello,report"
    assert flag(worker_args, "--metrics-port") == "9100"
    poller_args = container(find(docs, "Deployment", POLLER))["args"]
    assert poller_args[0] == "poll"
    assert flag(poller_args, "--config") == "/etc/headwater/headwater.yaml"
    assert flag(poller_args, "--metrics-port") == "9100"
    for name in (WORKER, POLLER):
        env = env_of(find(docs, "Deployment", name))
        assert env["HEADWATER_CONFIG"] == "/etc/headwater/headwater.yaml"
        assert env["HEADWATER_REDIS_URL"] == f"redis://:$(HEADWATER_REDIS_PASSWORD)@{REDIS}.{NAMESPACE}.svc:6379/0"
        assert env["HEADWATER_REDIS_PASSWORD"] == {"secretKeyRef": {"name": f"{REDIS}-auth", "key": "redis-password"}}


# --------------------------------------------------------------------------- Redis durability


def test_embedded_redis_uses_append_only_file_on_a_volume() -> None:
    docs = render()
    conf = find(docs, "ConfigMap", REDIS)["data"]["redis.conf"]
    settings = dict(line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#"))
    assert settings["appendonly"] == "yes"
    assert settings["appendfsync"] == "always"
    assert settings["maxmemory-policy"] == "noeviction"
    assert settings["dir"] == "/data"

    sts = find(docs, "StatefulSet", REDIS)
    redis = container(sts)
    assert redis["command"][:2] == ["sh", "-ec"]
    assert "exec redis-server /etc/redis/redis.conf" in redis["command"][2]
    mounts = {m["name"]: m["mountPath"] for m in redis["volumeMounts"]}
    assert mounts["data"] == "/data"
    assert mounts["config"] == "/etc/redis"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    pod_volumes = {v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert "data" not in pod_volumes  # the claim template provides it, not an emptyDir
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "PONG" in " ".join(redis[probe]["exec"]["command"])
    assert sts["spec"]["template"]["metadata"]["annotations"]["checksum/redis-config"]


def test_redis_fsync_always_and_password() -> None:
    auth = {"enabled": True, "existingSecret": "redis-pw"}
    docs = render({"redis": {"appendfsync": "always", "auth": auth}})
    assert "appendfsync always" in find(docs, "ConfigMap", REDIS)["data"]["redis.conf"]
    assert "Secret" not in kinds(docs)  # the existing Secret is used, none generated
    redis = container(find(docs, "StatefulSet", REDIS))
    assert "--requirepass" not in redis["command"] + redis.get("args", [])  # never on argv
    worker = container(find(docs, "Deployment", WORKER))
    names = [e["name"] for e in worker["env"]]
    # Kubernetes only expands $(VAR) from variables defined earlier in the list.
    assert names.index("HEADWATER_REDIS_PASSWORD") < names.index("HEADWATER_REDIS_URL")
    url = env_of(find(docs, "Deployment", WORKER))["HEADWATER_REDIS_URL"]
    assert url.startswith("redis://:$(HEADWATER_REDIS_PASSWORD)@")
    assert env_of(find(docs, "Deployment", WORKER))["HEADWATER_REDIS_PASSWORD"]["secretKeyRef"]["name"] == "redis-pw"

    docs = render({"redis": {"auth": {"enabled": False}}})
    redis = container(find(docs, "StatefulSet", REDIS))
    assert redis["command"] == ["redis-server"]
    assert redis["args"] == ["/etc/redis/redis.conf"]
    assert "protected-mode no" in find(docs, "ConfigMap", REDIS)["data"]["redis.conf"]
    url = env_of(find(docs, "Deployment", WORKER))["HEADWATER_REDIS_URL"]
    assert url == f"redis://{REDIS}.{NAMESPACE}.svc:6379/0"


def test_external_redis_replaces_the_statefulset() -> None:
    docs = render(EXTERNAL_REDIS)
    assert "StatefulSet" not in kinds(docs)
    assert not [d for d in docs if d["metadata"]["name"].startswith(REDIS)]
    for name in (WORKER, POLLER):
        assert env_of(find(docs, "Deployment", name))["HEADWATER_REDIS_URL"] == "redis://redis.example:6379/2"

    docs = render({"redis": {"enabled": False, "existingSecret": "redis-url"}})
    assert env_of(find(docs, "Deployment", WORKER))["HEADWATER_REDIS_URL"] == {
        "secretKeyRef": {"name": "redis-url", "key": "redis-url"}
    }
    assert "set redis.url, redis.sentinel or redis.existingSecret" in render_error({"redis": {"enabled": False}})


# --------------------------------------------------------------------------- pods


def test_kubernetes_grace_period_outlasts_the_app_drain() -> None:
    docs = render()
    for name in (WORKER, POLLER):
        deployment = find(docs, "Deployment", name)
        app_grace = float(flag(container(deployment)["args"], "--grace-seconds"))
        k8s_grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert app_grace == 30
        assert k8s_grace == 45
        assert k8s_grace > app_grace

    docs = render({"workers": {"graceSeconds": 120, "terminationGracePeriodSeconds": 150}})
    worker = find(docs, "Deployment", WORKER)
    assert flag(container(worker)["args"], "--grace-seconds") == "120"
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 150

    error = render_error({"workers": {"graceSeconds": 60}})
    assert "workers.terminationGracePeriodSeconds (45) must be longer than workers.graceSeconds (60) + 10 s" in error
    # The pool waits graceSeconds + 10 s before it kills a worker (workers/pool.py): 40 is not enough for 30.
    error = render_error({"workers": {"graceSeconds": 30, "terminationGracePeriodSeconds": 40}})
    assert "workers.terminationGracePeriodSeconds (40) must be longer than workers.graceSeconds (30) + 10 s" in error
    render({"workers": {"graceSeconds": 30, "terminationGracePeriodSeconds": 41}})
    error = render_error({"pollers": {"graceSeconds": 45, "terminationGracePeriodSeconds": 45}})
    assert "pollers.terminationGracePeriodSeconds (45) must be longer" in error


def test_probes_hit_healthz_on_the_metrics_port() -> None:
    docs = render({"workers": {"metricsPort": 9200}})
    for name in (WORKER, POLLER):
        c = container(find(docs, "Deployment", name))
        (port,) = c["ports"]
        assert port["name"] == "metrics"
        assert str(port["containerPort"]) == flag(c["args"], "--metrics-port")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, (name, probe)
        service = find(docs, "Service", name)
        assert service["spec"]["ports"][0]["targetPort"] == "metrics"
        selector = find(docs, "Deployment", name)["spec"]["selector"]["matchLabels"]
        assert service["spec"]["selector"] == selector
    worker = container(find(docs, "Deployment", WORKER))
    assert worker["ports"][0]["containerPort"] == 9200


def test_pods_roll_when_the_config_changes() -> None:
    def checksums(values: dict[str, Any]) -> set[str]:
        docs = render(values)
        return {
            find(docs, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for name in (WORKER, POLLER)
        }

    default = checksums({})
    example = checksums(EXAMPLE_CONFIG)
    assert len(default) == 1
    assert len(example) == 1
    assert default != example
    assert checksums({}) == default  # stable for the same config

    docs = render(EXAMPLE_CONFIG)
    config_map = find(docs, "ConfigMap", CONFIG_MAP)
    assert yaml.safe_load(config_map["data"]["headwater.yaml"]) == EXAMPLE_CONFIG["config"]
    # Only the config moves it: scaling does not restart the pods.
    assert checksums({"workers": {"replicas": 5}, "pollers": {"replicas": 3}}) == default


def test_pods_run_as_non_root_with_a_read_only_root() -> None:
    docs = render(ALL_MONITORING)
    workloads = [d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}]
    assert len(workloads) == 3
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}  # the one writable path


def test_aws_and_kafka_settings_reach_both_components() -> None:
    docs = render(
        {
            "aws": {
                "region": "eu-west-1",
                "endpointUrl": "http://elasticmq:9324",
                "existingSecret": "aws-creds",
            },
            "kafka": {"bootstrapServers": "kafka-0:9092,kafka-1:9092"},
        }
    )
    for name in (WORKER, POLLER):
        env = env_of(find(docs, "Deployment", name))
        assert env["AWS_REGION"] == "eu-west-1"
        assert env["AWS_DEFAULT_REGION"] == "eu-west-1"
        assert env["AWS_ENDPOINT_URL"] == "http://elasticmq:9324"
        assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "aws-creds", "key": "AWS_ACCESS_KEY_ID"}}
        assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["key"] == "AWS_SECRET_ACCESS_KEY"
        assert env["AWS_SESSION_TOKEN"]["secretKeyRef"]["optional"] is True
        assert env["HEADWATER_KAFKA_BOOTSTRAP_SERVERS"] == "kafka-0:9092,kafka-1:9092"
    env = env_of(find(render(), "Deployment", WORKER))
    assert not {k for k in env if k.startswith(("AWS_", "HEADWATER_KAFKA"))}


def test_worker_autoscaling_on_queue_depth() -> None:
    docs = render(VALUE_SETS["autoscaling"])
    hpa = find(docs, "HorizontalPodAutoscaler", WORKER)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": WORKER}
    external, cpu = hpa["spec"]["metrics"]
    assert external["external"]["metric"]["name"] == "headwater_queue_depth"
    assert external["external"]["target"] == {"type": "AverageValue", "averageValue": "100"}
    assert cpu["resource"]["target"]["averageUtilization"] == 80
    assert "replicas" not in find(docs, "Deployment", WORKER)["spec"]


def test_disruption_budgets() -> None:
    docs = render({"workers": {"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": None}}})
    assert find(docs, "PodDisruptionBudget", WORKER)["spec"]["minAvailable"] == 1
    assert find(docs, "PodDisruptionBudget", POLLER)["spec"]["maxUnavailable"] == 1
    docs = render({"workers": {"podDisruptionBudget": {"enabled": False}}})
    assert POLLER in {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert WORKER not in {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"}


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"workers": {"processes": "x"}}, "/workers/processes"),
        ({"workers": {"processes": 0}}, "/workers/processes"),
        ({"workers": {"proceses": 4}}, "proceses"),
        ({"redis": {"appendfsync": "no"}}, "/redis/appendfsync"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"pollers": {"graceSeconds": "30s"}}, "/pollers/graceSeconds"),
        ({"config": {"Functions": [{"FunctionName": "no handler"}]}}, "/config/Functions/0"),
        ({"unknownTopLevel": True}, "unknownTopLevel"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], path: str) -> None:
    error = render_error(values)
    assert "schema" in error
    assert path in error


# --------------------------------------------------------------------------- monitoring


def test_service_monitor_scrapes_workers_and_pollers() -> None:
    docs = render(ALL_MONITORING)
    sm = find(docs, "ServiceMonitor", f"{RELEASE}-headwater")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    selector = sm["spec"]["selector"]["matchLabels"]
    selected = {
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "Service" and selector.items() <= d["metadata"]["labels"].items()
    }
    assert selected == {WORKER, POLLER}
    for name in selected:
        service = find(docs, "Service", name)
        assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "headwater"  # job="headwater"
        assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]


def alert_names(groups: list[dict[str, Any]]) -> list[str]:
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_prometheus_rule_carries_the_alert_file() -> None:
    source = yaml.safe_load((RULES / "alerts.yaml").read_text())
    docs = render(ALL_MONITORING)
    rule = find(docs, "PrometheusRule", f"{RELEASE}-headwater")
    assert rule["spec"]["groups"] == source["groups"]

    docs = render(
        {
            "prometheusRule": {
                "enabled": True,
                "additionalRuleLabels": {"team": "payments", "severity": "ignored"},
                "disabledAlerts": ["HeadwaterFunctionThrottled"],
                "additionalGroups": [{"name": "mine", "rules": [{"alert": "Mine", "expr": "vector(1)"}]}],
            }
        }
    )
    groups = find(docs, "PrometheusRule", f"{RELEASE}-headwater")["spec"]["groups"]
    expected = [n for n in alert_names(source["groups"]) if n != "HeadwaterFunctionThrottled"] + ["Mine"]
    assert alert_names(groups) == expected
    for group in groups[:-1]:
        for r in group["rules"]:
            assert r["labels"]["team"] == "payments"
            assert r["labels"]["severity"] in {"warning", "critical"}  # the rule's own label wins


def test_dashboards_config_map() -> None:
    docs = render(ALL_MONITORING)
    cm = find(docs, "ConfigMap", f"{RELEASE}-headwater-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted(p.name for p in DASHBOARDS.glob("*.json"))
    assert sorted(cm["data"]) == files
    assert len(files) == 2
    for name in files:
        assert json.loads(cm["data"][name]) == json.loads((DASHBOARDS / name).read_text())
    assert "ConfigMap" not in {d["kind"] for d in render() if d["metadata"]["name"].endswith("dashboards")}


NOTES_PROBE = """apiVersion: v1
kind: ConfigMap
metadata:
  name: rendered-notes
data:
  NOTES.txt: {{ include "headwater/templates/NOTES.txt" . | toJson }}
"""


def render_notes(tmp_path: Path, values: dict[str, Any]) -> str:
    """NOTES.txt as `helm install` would print it (`helm template` leaves it out)."""
    chart = tmp_path / "headwater"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes-probe.yaml").write_text(NOTES_PROBE)
    argv = [
        tool("helm"),
        "template",
        RELEASE,
        str(chart),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        "--show-only",
        "templates/zz-notes-probe.yaml",
        "--values",
        "-",
    ]
    result = run(argv, stdin=json.dumps(values))
    assert result.returncode == 0, result.stderr
    notes: str = yaml.safe_load(result.stdout)["data"]["NOTES.txt"]
    return notes


def test_notes_warn_about_risky_settings(tmp_path: Path) -> None:
    quiet = render_notes(tmp_path / "quiet", EXAMPLE_CONFIG)
    assert "Functions: 2   Event source mappings: 1" in quiet
    assert f"exec deploy/{WORKER} --" in quiet
    assert "WARNING" not in quiet
    assert "persistence" not in quiet
    assert "exceeds workers.graceSeconds" in quiet  # "report" has Timeout 600 > 30

    risky = render_notes(
        tmp_path / "risky",
        {
            "redis": {"persistence": {"enabled": False}},
            "config": {"Functions": []},
            "workers": {"autoscaling": {"enabled": True, "type": "hpa"}},
        },
    )
    assert "WARNING: config.Functions is empty" in risky
    assert "WARNING: redis.persistence.enabled is false" in risky
    assert "exceeds workers.graceSeconds" not in risky
    assert "external metrics adapter" in risky
    assert "KEDA" not in risky
    keda = render_notes(tmp_path / "keda", {**EXAMPLE_CONFIG, "workers": {"autoscaling": {"enabled": True}}})
    assert "KEDA (keda.sh/v1alpha1) must be installed" in keda
    assert f"Redis password: Secret {REDIS}-auth" in keda
    assert "external Redis" in render_notes(tmp_path / "external", EXTERNAL_REDIS)


def test_redis_without_persistence_uses_an_empty_dir() -> None:
    sts = find(render({"redis": {"persistence": {"enabled": False}}}), "StatefulSet", REDIS)
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}
    assert "volumeClaimTemplates" not in sts["spec"]
    sts = find(render({"redis": {"persistence": {"existingClaim": "my-claim"}}}), "StatefulSet", REDIS)
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "my-claim"}
    assert "volumeClaimTemplates" not in sts["spec"]


# --------------------------------------------------------------------------- rules and dashboards


def test_promtool_checks_the_rules() -> None:
    result = run([tool("promtool"), "check", "rules", str(RULES / "alerts.yaml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = run([tool("promtool"), "test", "rules", str(RULES / "alerts_test.yaml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_unit_tests_that_fire_and_stay_quiet() -> None:
    alerts = set(alert_names(yaml.safe_load((RULES / "alerts.yaml").read_text())["groups"]))
    tests = yaml.safe_load((RULES / "alerts_test.yaml").read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == alerts
    assert quiet == alerts


def metric_names(text: str) -> set[str]:
    names = set()
    for found in re.findall(r"\bheadwater_[a-z_]+", text):
        name = found
        for suffix in ("_bucket", "_sum", "_count"):
            if found.endswith(suffix) and found.removesuffix(suffix) in HISTOGRAMS:
                name = found.removesuffix(suffix)
        names.add(name)
    return names


def exprs(panels: list[dict[str, Any]]) -> list[str]:
    out = []
    for panel in panels:
        out += [t["expr"] for t in panel.get("targets", [])]
        out += exprs(panel.get("panels", []))
    return out


def test_rules_and_dashboards_use_only_contract_metrics() -> None:
    rule_metrics = metric_names((RULES / "alerts.yaml").read_text())
    assert rule_metrics <= CONTRACT_METRICS, rule_metrics - CONTRACT_METRICS
    dashboard_metrics: set[str] = set()
    uids = set()
    for path in DASHBOARDS.glob("*.json"):
        board = json.loads(path.read_text())
        uids.add(board["uid"])
        assert board["title"].startswith("Headwater / ")
        queries = exprs(board["panels"])
        assert queries, path.name
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
        for q in queries:
            assert q.count("(") == q.count(")"), q
        dashboard_metrics |= metric_names(" ".join(queries))
        variables = " ".join(v.get("definition", "") for v in board["templating"]["list"])
        dashboard_metrics |= metric_names(variables)
    assert len(uids) == 2
    assert dashboard_metrics <= CONTRACT_METRICS, dashboard_metrics - CONTRACT_METRICS
    # The overview and the event-source board together chart every metric Headwater exposes.
    assert dashboard_metrics == CONTRACT_METRICS, CONTRACT_METRICS - dashboard_metrics


def test_the_contract_is_what_the_processes_export() -> None:
    """Renaming a metric in broker/metrics.py without migrating the rules and dashboards fails here."""
    from prometheus_client import REGISTRY

    from broker import metrics

    families = [*REGISTRY.collect(), *metrics.PoolCollector(lambda: 0).collect()]
    families += metrics.QueueCollector(lambda: metrics.QueueFigures({}, {}, {}, 0)).collect()
    exported = {f"{f.name}_total" if f.type == "counter" else f.name for f in families}
    assert {name for name in exported if name.startswith("headwater_")} == CONTRACT_METRICS


def test_no_retired_metric_or_label_name_is_left() -> None:
    """`headwater_esm_events_total` and the `event_source` label are gone from code, charts, docs and benches."""
    suffixes = {".py", ".yaml", ".yml", ".json", ".md", ".txt", ".tpl"}
    found = []
    for top in ("broker", "workers", "deploy", "docs", "bench", "tests"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix not in suffixes or path == Path(__file__) or "__pycache__" in path.parts:
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if RETIRED_NAMES.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((RULES / "alerts.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_links_its_runbook_section() -> None:
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    sections = set(re.findall(r"^## (\w+)$", runbooks, flags=re.MULTILINE))
    for rule in alert_rules():
        name = rule["alert"]
        url = rule["annotations"].get("runbook_url", "")
        assert url.endswith(f"docs/runbooks.md#{name.lower()}"), (name, url)
        assert name in sections, f"docs/runbooks.md has no section '## {name}'"
    assert sections == {rule["alert"] for rule in alert_rules()}


def test_runbook_links_point_at_the_configured_base() -> None:
    base = "https://git.example.com/ops/headwater/blob/main/docs/runbooks.md"
    docs = render({"prometheusRule": {"enabled": True, "runbookBaseUrl": base + "/"}})
    groups = find(docs, "PrometheusRule", f"{RELEASE}-headwater")["spec"]["groups"]
    urls = {rule["alert"]: rule["annotations"]["runbook_url"] for group in groups for rule in group["rules"]}
    assert urls
    assert all(url == f"{base}#{name.lower()}" for name, url in urls.items()), urls


def test_every_aggregation_keeps_the_namespace_and_no_job_is_hard_coded() -> None:
    """Two installations in one Prometheus never mix, and a renamed release (nameOverride) is still watched."""
    queries = [rule["expr"] for rule in alert_rules()]
    for path in DASHBOARDS.glob("*.json"):
        queries += exprs(json.loads(path.read_text())["panels"])
    for query in queries:
        for aggregation in re.finditer(r"\b(sum|max|min|count|avg)\b\s*(by\s*\(([^)]*)\))?\s*\(", query):
            assert "namespace" in (aggregation.group(3) or ""), (aggregation.group(0), query)
        assert not re.search(r"\bjob\s*=", query), query


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every panel query, with Grafana's variables filled in, parses as PromQL (promtool checks it)."""
    rules = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for i, query in enumerate(exprs(json.loads(path.read_text())["panels"])):
            expr = query.replace("$__rate_interval", "5m")
            rules.append({"record": f"dashboard:{path.stem.replace('-', '_')}:{i}", "expr": expr})
    rule_file = tmp_path / "dashboard-queries.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run([tool("promtool"), "check", "rules", str(rule_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_rendered_prometheus_rule_passes_promtool(tmp_path: Path) -> None:
    docs = render({"prometheusRule": {"enabled": True, "additionalRuleLabels": {"team": "x"}}})
    spec = find(docs, "PrometheusRule", f"{RELEASE}-headwater")["spec"]
    rule_file = tmp_path / "rendered.yaml"
    rule_file.write_text(yaml.safe_dump(spec))
    result = run([tool("promtool"), "check", "rules", str(rule_file)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_commands_parse_with_the_headwater_cli() -> None:
    """The arguments the chart gives each container are ones `headwater` accepts."""
    from broker.cli import build_parser

    docs = render({"workers": {"functions": ["hello", "report"], "extraArgs": ["--prefetch", 4]}})
    for name, verb in ((WORKER, "worker"), (POLLER, "poll")):
        args = build_parser().parse_args(container(find(docs, "Deployment", name))["args"])
        assert args.command == verb
        assert args.config == "/etc/headwater/headwater.yaml"
        assert args.metrics_port == 9100
        assert args.grace_seconds == 30
    args = build_parser().parse_args(container(find(docs, "Deployment", WORKER))["args"])
    assert args.processes == 4
    assert args.functions == "hello,report"
    assert args.prefetch == 4
