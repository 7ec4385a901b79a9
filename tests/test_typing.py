"""The types are checked in CI: `mypy --strict` over what pyproject's [tool.mypy] names (the packages,
the benches and the tests). CI runs pytest only, so this module is how mypy runs there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MYPY_TIMEOUT_SECONDS = 150  # a cold run (no .mypy_cache) took 25 s on two busy cores; a warm one 1-2 s


def test_mypy_passes_on_the_configured_packages() -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "mypy"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=MYPY_TIMEOUT_SECONDS,
        check=False,
    )
    assert answer.returncode == 0, f"mypy found type errors:\n{answer.stdout}{answer.stderr}"
