"""Per-function worker pools and their scalers: KEDA on the Redis backlog, or an HPA on the adapter's metric."""

from __future__ import annotations

from pathlib import Path

import yaml

from broker import keys
from tests.helm.chart import (
    CHART,
    RELEASE,
    containers,
    find,
    flag,
    of_kind,
    render,
    render_error,
    render_file,
    run,
    tool,
)

WORKER = f"{RELEASE}-headwater-worker"
FUNCTIONS = {
    "config": {
        "Functions": [
            {"FunctionName": "hello", "Handler": "examples.handlers.hello"},
            {"FunctionName": "report", "Handler": "examples.handlers.sleep"},
        ]
    }
}


def test_each_pool_is_its_own_deployment_budget_and_scaler() -> None:
    docs = render_file("worker-pools")
    deployments = of_kind(docs, "Deployment")
    assert set(deployments) == {f"{WORKER}-reports", f"{WORKER}-web", f"{WORKER}-audit", f"{RELEASE}-headwater-poller"}
    served = {}
    for name in (f"{WORKER}-reports", f"{WORKER}-web", f"{WORKER}-audit"):
        deployment = deployments[name]
        pool = name.removeprefix(f"{WORKER}-")
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector["headwater.io/pool"] == pool
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        served[pool] = flag(containers(deployment)["worker"]["args"], "--functions").split(",")
    assert served == {"reports": ["report"], "web": ["hello", "resize_image"], "audit": ["audit"]}

    reports = deployments[f"{WORKER}-reports"]
    assert flag(containers(reports)["worker"]["args"], "--processes") == "2"
    assert flag(containers(reports)["worker"]["args"], "--grace-seconds") == "600"
    assert reports["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 630
    assert containers(reports)["worker"]["resources"]["limits"]["memory"] == "4Gi"
    assert "replicas" not in reports["spec"]  # its scaler owns the count
    assert deployments[f"{WORKER}-audit"]["spec"]["replicas"] == 1

    budgets = of_kind(docs, "PodDisruptionBudget")
    assert set(budgets) == {f"{WORKER}-reports", f"{WORKER}-web", f"{RELEASE}-headwater-poller"}  # audit: off
    for name in (f"{WORKER}-reports", f"{WORKER}-web"):
        assert budgets[name]["spec"]["selector"] == deployments[name]["spec"]["selector"]
    assert set(of_kind(docs, "ScaledObject")) == {f"{WORKER}-reports"}
    assert set(of_kind(docs, "HorizontalPodAutoscaler")) == {f"{WORKER}-web"}


def test_keda_reads_the_queues_of_the_pool_and_scales_to_zero() -> None:
    docs = render_file("worker-pools")
    scaled = find(docs, "ScaledObject", f"{WORKER}-reports")["spec"]
    assert scaled["scaleTargetRef"]["name"] == f"{WORKER}-reports"
    assert scaled["minReplicaCount"] == 0
    assert scaled["maxReplicaCount"] == 4
    assert scaled["cooldownPeriod"] == 900
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "redis"
    # The very list the workers pop from (broker/keys.py), not a metric the workers export.
    assert trigger["metadata"]["listName"] == keys.queue_key("report")
    assert trigger["metadata"]["address"] == f"{RELEASE}-headwater-redis.hw.svc:6379"
    assert trigger["metadata"]["listLength"] == "5"
    assert trigger["metadata"]["activationListLength"] == "1"
    assert trigger["metadata"]["databaseIndex"] == "0"
    auth = find(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": f"{RELEASE}-headwater-redis-auth", "key": "redis-password"}
    ]
    # KEDA's operator may reach Redis; nothing else outside the release may.
    policy = find(docs, "NetworkPolicy", f"{RELEASE}-headwater-redis")
    peers = policy["spec"]["ingress"][0]["from"]
    assert {"app": "keda-operator"} in [p.get("podSelector", {}).get("matchLabels") for p in peers]


def test_the_default_pool_scales_every_function_with_keda() -> None:
    docs = render({**FUNCTIONS, "workers": {"autoscaling": {"enabled": True, "minReplicas": 0}}})
    deployment = find(docs, "Deployment", WORKER)
    assert "--functions" not in containers(deployment)["worker"]["args"]
    triggers = find(docs, "ScaledObject", WORKER)["spec"]["triggers"]
    assert [t["metadata"]["listName"] for t in triggers] == [
        "rq:queue:headwater.{hello}",
        "rq:queue:headwater.{report}",
    ]
    assert "HorizontalPodAutoscaler" not in {d["kind"] for d in docs}


def test_hpa_selects_the_pool_queues_of_the_adapter_metric() -> None:
    hpa = find(render_file("worker-pools"), "HorizontalPodAutoscaler", f"{WORKER}-web")["spec"]
    external, cpu = hpa["metrics"]
    metric = external["external"]["metric"]
    assert metric["name"] == "headwater_queue_depth"
    assert metric["selector"]["matchExpressions"] == [
        {"key": "queue", "operator": "In", "values": ["hello", "resize_image"]}
    ]
    assert external["external"]["target"] == {"type": "AverageValue", "averageValue": "100"}
    assert cpu["resource"]["target"]["averageUtilization"] == 75
    assert hpa["minReplicas"] == 2


def test_adapter_rule_takes_one_series_per_queue_not_one_per_pod(tmp_path: Path) -> None:
    """The shipped prometheus-adapter rule is valid PromQL and aggregates the pods' copies with max."""
    adapter = yaml.safe_load((CHART / "adapter" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["external"]
    assert rule["name"]["as"] == "headwater_queue_depth"
    query = rule["metricsQuery"]
    assert query.startswith("max by (namespace, queue) (")
    expr = query.replace("<<.Series>>", "headwater_queue_depth").replace("<<.LabelMatchers>>", 'namespace="hw"')
    rules = tmp_path / "adapter.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": [{"record": "x:y", "expr": expr}]}]}))
    result = run([tool("promtool"), "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr
    # Three pods exporting the same depth of 7 give 7, not 21: the unit test evaluates the real query.
    test = tmp_path / "adapter_test.yaml"
    series = [
        {"series": f'headwater_queue_depth{{namespace="hw",queue="hello",pod="w-{i}"}}', "values": "7x5"}
        for i in range(3)
    ]
    test.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(rules)],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": series,
                        "promql_expr_test": [
                            {
                                "expr": "x:y",
                                "eval_time": "2m",
                                "exp_samples": [{"labels": 'x:y{namespace="hw",queue="hello"}', "value": 7}],
                            }
                        ],
                    }
                ],
            }
        )
    )
    result = run([tool("promtool"), "test", "rules", str(test)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_pool_values_are_checked() -> None:
    pools = {**FUNCTIONS, "workerPools": [{"name": "a", "functions": ["hello"]}]}
    assert 'function "report" is in no worker pool' in render_error(pools)
    twice = {
        **FUNCTIONS,
        "workerPools": [{"name": "a", "functions": ["hello", "report"]}, {"name": "b", "functions": ["report"]}],
    }
    assert 'function "report" is in two worker pools (a and b)' in render_error(twice)
    typo = {**FUNCTIONS, "workerPools": [{"name": "a", "functions": ["hello", "report", "helo"]}]}
    assert 'workerPools[a]: function "helo" is not in config.Functions' in render_error(typo)
    same = {**FUNCTIONS, "workerPools": [{"name": "a", "functions": ["hello"]}, {"name": "a", "functions": ["report"]}]}
    assert 'the name "a" is used twice' in render_error(same)
    grace = {**FUNCTIONS, "workerPools": [{"name": "a", "functions": ["hello", "report"], "graceSeconds": 600}]}
    error = render_error(grace)
    assert "workerPools[a].terminationGracePeriodSeconds (45) must be longer than workerPools[a].graceSeconds" in error
    hpa_zero = {**FUNCTIONS, "workers": {"autoscaling": {"enabled": True, "type": "hpa", "minReplicas": 0}}}
    assert "an HPA cannot scale to zero" in render_error(hpa_zero)
    no_functions = {"workers": {"autoscaling": {"enabled": True}}}
    assert "config.Functions is empty" in render_error(no_functions)
    url_secret = {
        **FUNCTIONS,
        "redis": {"enabled": False, "existingSecret": "url"},
        "workers": {"autoscaling": {"enabled": True}},
    }
    assert "KEDA cannot read the Redis URL in redis.existingSecret" in render_error(url_secret)
    url_secret["workers"]["autoscaling"]["keda"] = {"redisAddress": "redis.example:6379"}  # type: ignore[index]
    scaled = find(render(url_secret), "ScaledObject", WORKER)
    assert scaled["spec"]["triggers"][0]["metadata"]["address"] == "redis.example:6379"


def test_a_pool_overrides_autoscaling_key_by_key() -> None:
    """false and 0 in a pool win over the defaults (sprig's mergeOverwrite would drop them)."""
    values = {
        **FUNCTIONS,
        "workers": {"autoscaling": {"enabled": True, "minReplicas": 2, "queueDepth": {"averageValue": "50"}}},
        "workerPools": [
            {"name": "a", "functions": ["hello"], "autoscaling": {"enabled": False}, "replicas": 0},
            {
                "name": "b",
                "functions": ["report"],
                "autoscaling": {"minReplicas": 0, "queueDepth": {"activationValue": "3"}},
            },
        ],
    }
    docs = render(values)
    assert find(docs, "Deployment", f"{WORKER}-a")["spec"]["replicas"] == 0
    assert set(of_kind(docs, "ScaledObject")) == {f"{WORKER}-b"}
    b = find(docs, "ScaledObject", f"{WORKER}-b")["spec"]
    assert b["minReplicaCount"] == 0
    assert b["triggers"][0]["metadata"]["listLength"] == "50"  # inherited inside queueDepth
    assert b["triggers"][0]["metadata"]["activationListLength"] == "3"
