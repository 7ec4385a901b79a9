"""Rendering the chart with the real helm, shared by the tests of tests/helm."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "headwater"
VALUES = Path(__file__).resolve().parent / "values"
NAMESPACE = "hw"
RELEASE = "hw"
KUBE_VERSION = "1.30.0"
CACHE = Path(os.environ.get("HEADWATER_CACHE", str(Path.home() / ".cache" / "headwater")))

Manifest = dict[str, Any]


def tool(name: str) -> str:
    """The pinned binary from the cache, else one on PATH; fail (never skip) when neither exists."""
    cached = CACHE / "bin" / name
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} is not installed; install it with: scripts/install-test-deps", pytrace=False)


def run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)


@functools.cache
def _template(values_json: str, files: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    argv = [tool("helm"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    for path in files:
        argv += ["--values", path]
    argv += ["--values", "-"]
    return run(argv, stdin=values_json)


def template(values: dict[str, Any] | None = None, files: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return _template(json.dumps(values or {}, sort_keys=True), files)


def render(values: dict[str, Any] | None = None, files: tuple[str, ...] = ()) -> list[Manifest]:
    result = template(values, files)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_file(name: str) -> list[Manifest]:
    return render(files=(str(VALUES / f"{name}.yaml"),))


def render_error(values: dict[str, Any]) -> str:
    result = template(values)
    assert result.returncode != 0, "helm template accepted values it should refuse"
    return result.stderr


def find(docs: list[Manifest], kind: str, name: str) -> Manifest:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    rendered = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    raise AssertionError(f"{kind}/{name} not rendered; got {rendered}")


def of_kind(docs: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(workload: Manifest) -> dict[str, Manifest]:
    return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}


def env_of(container: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]
