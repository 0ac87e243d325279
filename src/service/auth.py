"""Admin API keys for gallery changes (POST/PATCH/DELETE /gallery): bearer tokens with ids.

Where keys come from (all of them are accepted together):

* ``RECOGNITION_ADMIN_KEY``: one key, recorded in the audit trail as key id ``env``.
* a key file (``--admin-key-file`` or ``RECOGNITION_ADMIN_KEY_FILE``): one ``<key id>:<key>`` per line,
  ``#`` comments and blank lines ignored. Give each till, person or script its own id; the audit trail records
  the id, never the key. Make one with ``python -c "import secrets; print('office:' + secrets.token_urlsafe(32))"``.

Keys are at least :data:`MIN_KEY_LENGTH` characters. A request's token is compared with every key by
``hmac.compare_digest`` over SHA-256 digests (constant time, and no early exit that would tell which key or
how many characters matched).

With no key configured, changes are refused with 503 and a message saying how to set one (no key is
generated: a key printed in a log is a key leaked); reading, recognising and checking out need no key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ENV_KEY", "ENV_KEY_FILE", "MIN_KEY_LENGTH", "AdminKeys", "KeyFileError", "load_admin_keys"]

ENV_KEY = "RECOGNITION_ADMIN_KEY"
ENV_KEY_FILE = "RECOGNITION_ADMIN_KEY_FILE"
MIN_KEY_LENGTH = 16
_KEY_ID = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
HOW_TO_SET = (f"set {ENV_KEY}=<a secret of {MIN_KEY_LENGTH}+ characters>, or start the service with "
              f"--admin-key-file FILE ({ENV_KEY_FILE}) holding '<key id>:<key>' lines, then send "
              "'Authorization: Bearer <key>'")


class KeyFileError(ValueError):
    """A bad key file or key (names the file and line, never the key)."""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


@dataclass(frozen=True)
class AdminKeys:
    """``(key id, SHA-256 of the key)`` pairs; only digests are kept in memory after loading."""

    entries: tuple[tuple[str, bytes], ...] = field(default=())

    @classmethod
    def of(cls, keys: dict[str, str]) -> "AdminKeys":
        """From ``{key id: key}`` (checked as a key file's lines are)."""
        for key_id, key in keys.items():
            _check(key_id, key, "keys")
        return cls(tuple((key_id, _digest(key)) for key_id, key in keys.items()))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def identify(self, token: str) -> str | None:
        """The id of the key equal to ``token``, else None. Every key is compared (no early exit)."""
        probe = _digest(token)
        found = None
        for key_id, digest in self.entries:
            if hmac.compare_digest(probe, digest):
                found = key_id
        return found


def _check(key_id: str, key: str, where: str) -> None:
    if not _KEY_ID.fullmatch(key_id):
        raise KeyFileError(f"{where}: key id {key_id!r} must be 1-64 of A-Z a-z 0-9 _ . @ -")
    if len(key) < MIN_KEY_LENGTH or key != key.strip():
        raise KeyFileError(f"{where}: the key of {key_id!r} must be at least {MIN_KEY_LENGTH} characters without "
                           "surrounding spaces")


def read_key_file(path: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise KeyFileError(f"cannot read the admin key file {path}: {err.strerror or err}") from None
    keys: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key_id, sep, key = line.partition(":")
        if not sep:
            raise KeyFileError(f"{path}:{n}: expected '<key id>:<key>'")
        key_id = key_id.strip()
        _check(key_id, key, f"{path}:{n}")
        if key_id in keys:
            raise KeyFileError(f"{path}:{n}: key id {key_id!r} appears twice")
        keys[key_id] = key
    return keys


def load_admin_keys(key_file: str | os.PathLike | None = None, environ: dict | None = None) -> AdminKeys:
    """Keys from ``key_file`` (else ``RECOGNITION_ADMIN_KEY_FILE``) plus ``RECOGNITION_ADMIN_KEY`` (id ``env``)."""
    environ = os.environ if environ is None else environ
    keys: dict[str, str] = {}
    key_file = key_file or environ.get(ENV_KEY_FILE) or None
    if key_file:
        keys.update(read_key_file(key_file))
    if environ.get(ENV_KEY):
        if "env" in keys:
            raise KeyFileError(f"{key_file}: key id 'env' is reserved for {ENV_KEY}")
        keys["env"] = environ[ENV_KEY]
    return AdminKeys.of(keys)
