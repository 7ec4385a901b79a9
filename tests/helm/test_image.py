"""The image recipe, the constraints file it installs from, and the chart's package metadata."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helm.chart import CHART, ROOT, run, tool
from tests.helm.constraints import direct_requirements, pinned, runtime_closure

DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) of the Dockerfile, continuation lines joined."""
    joined = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        if line.strip() and not line.startswith(("#", " ")):
            word, _, rest = line.partition(" ")
            out.append((word, rest.strip()))
    return out


def test_constraints_pin_exactly_the_runtime_closure_as_installed() -> None:
    pins = pinned()
    closure = runtime_closure()
    assert pins == closure, "constraints.txt is stale: python -m tests.helm.constraints > constraints.txt"
    for requirement in direct_requirements():
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)], prereleases=True)


def test_dockerfile_installs_the_pinned_dependencies_before_the_source() -> None:
    steps = instructions()
    stages = [rest for word, rest in steps if word == "FROM"]
    assert stages == ["python:3.11-slim AS build", "python:3.11-slim"]
    build = steps[: [w for w, _ in steps].index("FROM", 1)]
    copies = [rest for word, rest in build if word == "COPY"]
    runs = [rest for word, rest in build if word == "RUN"]
    assert copies[0] == "constraints.txt ./"  # the dependency layer's only input
    dependency_install = next(i for i, r in enumerate(runs) if "-r constraints.txt" in r)
    source_install = next(i for i, r in enumerate(runs) if "--no-deps" in r)
    assert dependency_install < source_install
    first_source_copy = next(i for i, (w, r) in enumerate(build) if w == "COPY" and "broker" in r)
    dependency_step = next(i for i, (w, r) in enumerate(build) if w == "RUN" and "-r constraints.txt" in r)
    assert dependency_step < first_source_copy
    assert "pip check" in runs[source_install]

    runtime = steps[[w for w, _ in steps].index("FROM", 1) :]
    assert ("COPY", "--from=build /opt/headwater /opt/headwater") in runtime
    assert not [r for w, r in runtime if w == "RUN" and "pip install" in r]  # no build tools in the final image
    labels = " ".join(r for w, r in runtime if w == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_install_test_deps_uses_the_constraints() -> None:
    script = (ROOT / "scripts" / "install-test-deps").read_text()
    assert "-c constraints.txt" in script
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {canonicalize_name(Requirement(r).name) for r in test_extra["test"]}
    assert "kubernetes-validate" in names


def test_chart_metadata_and_package(tmp_path: Path) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for key in ("maintainers", "keywords", "annotations", "kubeVersion", "appVersion"):
        assert chart.get(key), key
    assert "keda" in chart["keywords"]
    assert chart["annotations"]["artifacthub.io/license"] == "Apache-2.0"
    result = run([tool("helm"), "package", str(CHART), "--destination", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    (package,) = tmp_path.glob("headwater-*.tgz")
    assert package.name == f"headwater-{chart['version']}.tgz"
    listing = run(["tar", "-tzf", str(package)]).stdout.split()
    assert "headwater/adapter/prometheus-adapter-values.yaml" in listing
    assert "headwater/values.schema.json" in listing
