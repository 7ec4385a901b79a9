"""Every object the chart renders, over the value files of tests/helm/values, against real schemas.

Built-in kinds go through PyPI's kubernetes-validate in strict mode (the Kubernetes OpenAPI
schemas, unknown fields refused). KEDA's ScaledObject / TriggerAuthentication and
prometheus-operator's ServiceMonitor / PrometheusRule go through the validators that npm's
@kubernetes-models/keda and @kubernetes-models/prometheus-operator compile from those projects'
CRD schemas (installed by scripts/install-test-deps into $HEADWATER_CACHE/crd-models).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.helm.chart import CACHE, KUBE_VERSION, VALUES, Manifest, render, render_file, run, tool

VALUE_FILES = sorted(path.stem for path in VALUES.glob("*.yaml"))
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
CRD_MODELS = CACHE / "crd-models"
CRD_VALIDATOR = Path(__file__).resolve().parent / "validate_crds.mjs"


def crd_errors(objects: list[Manifest]) -> dict[str, list[str]]:
    """kind/name -> schema errors, from the compiled CRD validators (run by node)."""
    if not (CRD_MODELS / "node_modules").is_dir():
        pytest.fail(f"no CRD models in {CRD_MODELS}; run scripts/install-test-deps", pytrace=False)
    result = run([tool("node"), str(CRD_VALIDATOR), str(CRD_MODELS)], stdin=json.dumps(objects))
    assert result.returncode == 0, result.stderr
    return {f"{r['kind']}/{r['name']}": r["errors"] for r in json.loads(result.stdout)}


def kubernetes_errors(doc: Manifest) -> str | None:
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return f"{'/'.join(map(str, error.path))}: {error.message}"
    return None


def test_every_feature_is_covered_by_a_value_file() -> None:
    assert set(VALUE_FILES) >= {
        "defaults",
        "everything",
        "external-redis-tls",
        "worker-pools",
        "hardened",
        "sentinel",
    }
    kinds = {doc["kind"] for name in VALUE_FILES for doc in render_file(name)}
    assert kinds >= {
        "Deployment",
        "StatefulSet",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ServiceAccount",
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
        "PrometheusRule",
    }


@pytest.mark.parametrize("name", VALUE_FILES)
def test_rendered_objects_match_their_schemas(name: str) -> None:
    docs = render_file(name)
    custom = [doc for doc in docs if doc["apiVersion"].startswith(CRD_GROUPS)]
    builtin = [doc for doc in docs if not doc["apiVersion"].startswith(CRD_GROUPS)]
    errors = {f"{d['kind']}/{d['metadata']['name']}": kubernetes_errors(d) for d in builtin}
    assert not {k: v for k, v in errors.items() if v}, errors
    if custom:
        errors_by_object = crd_errors(custom)
        assert len(errors_by_object) == len(custom)
        assert not {k: v for k, v in errors_by_object.items() if v}, errors_by_object


def test_the_validators_refuse_broken_objects() -> None:
    """Both checks can fail: a misspelt Deployment field and a ScaledObject of the wrong types."""
    (deployment,) = [d for d in render() if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("worker")]
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    assert "terminationGracePeriod" in (kubernetes_errors(deployment) or "")

    (scaled,) = [d for d in render_file("external-redis-tls") if d["kind"] == "ScaledObject"]
    scaled["spec"]["minReplicaCount"] = "zero"
    del scaled["spec"]["scaleTargetRef"]
    (errors,) = crd_errors([scaled]).values()
    assert any("minReplicaCount" in e for e in errors), errors
    assert any("scaleTargetRef" in e for e in errors), errors


def prometheus_rule_spec(docs: list[Manifest]) -> dict[str, Any]:
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    spec: dict[str, Any] = rule["spec"]
    return spec


def test_everything_renders_the_alerts_as_a_valid_prometheus_rule() -> None:
    spec = prometheus_rule_spec(render_file("everything"))
    assert spec["groups"]
    for group in spec["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["team"] == "payments"
