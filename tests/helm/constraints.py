"""constraints.txt: the exact versions of Headwater's runtime dependencies, read from this environment.

The runtime closure is pyproject.toml's [project] dependencies and, recursively, what each of them
requires (with the extras asked for, and the markers of this interpreter and platform: CPython 3.11
on Linux, as in the image). deploy/Dockerfile installs exactly these in its dependency layer and
scripts/install-test-deps installs the suite with `-c constraints.txt`, so the image runs the
versions the tests passed with. Regenerate after changing a dependency:

    pip install -e '.[test]' && python -m tests.helm.constraints > constraints.txt

tests/helm/test_image.py checks the file against pyproject.toml and this environment.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
HEADER = """\
# Exact versions of Headwater's runtime dependencies: the closure of pyproject.toml's [project]
# dependencies (CPython 3.11, Linux), as installed when the test suite last passed.
# deploy/Dockerfile installs exactly these; scripts/install-test-deps installs with -c constraints.txt.
# Regenerate: pip install -e '.[test]' && python -m tests.helm.constraints > constraints.txt
"""


def direct_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in project["dependencies"]]


def runtime_closure() -> dict[str, str]:
    """Canonical name -> installed version of every distribution the runtime dependencies pull in."""
    versions: dict[str, str] = {}
    pending = direct_requirements()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in versions:
            continue
        distribution = metadata.distribution(requirement.name)
        versions[name] = distribution.version
        extras = requirement.extras or {""}
        for line in distribution.requires or []:
            needed = Requirement(line)
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras):
                pending.append(needed)
    return versions


def pinned() -> dict[str, str]:
    """The pins of constraints.txt, by canonical name."""
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def render() -> str:
    lines = [f"{name}=={version}" for name, version in sorted(runtime_closure().items())]
    return HEADER + "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
