"""The access keys `headwater api` accepts, read from a file an operator (or a Kubernetes Secret) provides.

One key per line, `ACCESS_KEY_ID:SECRET_ACCESS_KEY`; blank lines and `#` comments are ignored:

    # ci pipeline, added 2026-03
    AKIDCIPIPELINE0001:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY

Several keys may be listed at once, which is how a key is rotated: add the new one, move every
client over, remove the old one. The file is read again when it changes (checked at most once a
second), so a rotation needs no restart: a mounted Kubernetes Secret is updated in place by the
kubelet. A file that became unreadable or invalid keeps the keys read last, and says so in the log.
Secrets never appear in an error message.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from broker.errors import ConfigError
from broker.logs import get_logger

ACCESS_KEY_ID = re.compile(r"^[A-Za-z0-9_]{4,128}$")
RECHECK_SECONDS = 1.0
log = get_logger(__name__)


def parse(text: str, source: str) -> dict[str, str]:
    """{access key id: secret} from the file's text; every malformed line is reported at once."""
    keys: dict[str, str] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key_id, colon, secret = line.partition(":")
        if not colon or not ACCESS_KEY_ID.match(key_id.strip()) or not secret.strip() or " " in secret.strip():
            problems.append(f"line {number}: expected ACCESS_KEY_ID:SECRET_ACCESS_KEY (value hidden)")
            continue
        keys[key_id.strip()] = secret.strip()
    if problems:
        raise ConfigError(problems, source)
    if not keys:
        raise ConfigError(["no access keys (add ACCESS_KEY_ID:SECRET_ACCESS_KEY lines, or run with --no-auth)"], source)
    return keys


class AccessKeys:
    """The keys of one file, kept current as the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._signature = self._stat()
        self._keys = parse(self._read(), str(self.path))
        self._checked_at = time.monotonic()

    def secret(self, access_key_id: str) -> str | None:
        """The secret of `access_key_id`, or None for a key this server does not know."""
        self._refresh()
        return self._keys.get(access_key_id)

    def __len__(self) -> int:
        return len(self._keys)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < RECHECK_SECONDS:
            return
        self._checked_at = now
        try:
            signature = self._stat()
            if signature == self._signature:
                return
            self._keys = parse(self._read(), str(self.path))
        except ConfigError as error:
            log.error("access keys file not reloaded; the keys read last stay in use", problem=error.message)
            return
        self._signature = signature
        log.info("access keys reloaded", path=str(self.path), keys=len(self._keys))

    def _stat(self) -> tuple[int, int, int]:
        try:
            status = self.path.stat()
        except OSError as error:
            raise ConfigError([f"cannot read {self.path}: {error.strerror}"], "access keys") from None
        return status.st_mtime_ns, status.st_size, status.st_ino

    def _read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise ConfigError([f"cannot read {self.path}: {reason}"], "access keys") from None
