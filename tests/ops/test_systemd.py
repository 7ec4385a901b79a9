"""The systemd units in deploy/systemd/, checked by systemd's own `systemd-analyze verify` (it needs
no systemd running as PID 1) and read for the settings that make a stop drain instead of kill.

`verify` runs against a scratch root holding the units, systemd's own units and a stand-in for each
program they start (/opt/headwater/bin/headwater, /bin/kill), so the shipped files are verified as
they are, install path included.
Any warning (an unknown or misspelled key, a bad value) fails the test: systemd would ignore it.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
SYSTEM_UNITS = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir())
# What a stop may take past the grace before SIGKILL: the worker pool kills a worker 10 s after it
# (workers/pool.py), and every unit keeps a margin on top for the process's own exit.
KILL_MARGIN_SECONDS = {"worker": 10.0, "poller": 0.0, "api": 0.0}
MIN_MARGIN_SECONDS = 10.0
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictSUIDSGID": "yes",
    "CapabilityBoundingSet": "",
    "SystemCallFilter": "@system-service",
}
UNIT_NAMES = sorted(path.name for path in UNITS.glob("*.service"))


def unit(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(UNITS / name)
    return parser["Service"]


def test_every_daemon_has_a_unit() -> None:
    assert UNIT_NAMES == ["headwater-api.service", "headwater-poller.service", "headwater-worker.service"]


def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    shutil.copytree(SYSTEM_UNITS, tmp_path / "usr/lib/systemd/system", symlinks=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    for name in UNIT_NAMES:
        shutil.copy(UNITS / name, tmp_path / "etc/systemd/system" / name)
    for program in {unit(name)[key].split()[0] for name in UNIT_NAMES for key in ("ExecStart", "ExecReload")
                    if key in unit(name)}:  # fmt: skip
        stand_in = tmp_path / program.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run scripts/install-test-deps (Debian's systemd package)"

    result = subprocess.run(
        [analyze, "verify", "--man=no", "--generators=no", f"--root={tmp_path}", *UNIT_NAMES],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_a_misspelt_key_fails_verification(tmp_path: Path) -> None:
    """The check above can fail: systemd only warns about an unknown key, and the test reads warnings."""
    broken = tmp_path / "broken.service"
    broken.write_text("[Service]\nExecStart=/bin/true\nKillMod=mixed\n")
    analyze = shutil.which("systemd-analyze")
    assert analyze
    result = subprocess.run([analyze, "verify", "--man=no", str(broken)], capture_output=True, text=True, check=False)
    assert "Unknown key 'KillMod'" in result.stderr


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_stopping_drains_before_anything_is_killed(name: str) -> None:
    service = unit(name)
    daemon = name.removeprefix("headwater-").removesuffix(".service")
    grace = re.search(r"--grace-seconds (\d+(?:\.\d+)?)", service["ExecStart"])
    assert grace, f"{name}: ExecStart must set --grace-seconds, so TimeoutStopSec can be checked against it"
    drain = float(grace.group(1)) + KILL_MARGIN_SECONDS[daemon]

    assert service["KillMode"] == "mixed"  # SIGTERM to the main process only; SIGKILL to all only at the timeout
    assert float(service["TimeoutStopSec"]) >= drain + MIN_MARGIN_SECONDS
    assert service["Restart"] == "on-failure"


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_units_are_hardened_and_read_their_settings_from_an_environment_file(name: str) -> None:
    service = unit(name)
    assert {key: service.get(key) for key in HARDENING} == HARDENING
    assert service["User"] == "headwater"
    lines = (UNITS / name).read_text().splitlines()
    assert "EnvironmentFile=/etc/headwater/headwater.env" in lines  # HEADWATER_REDIS_URL, HEADWATER_CONFIG...
