"""User ids are stored only as HMAC-SHA256 keyed by a salt; the salt must never change silently.

A new salt would re-key every user, so erasure ("forget user X") and per-user caps would
quietly stop matching history. The store keeps a fingerprint of the salt (an HMAC of a fixed
label, which reveals nothing about the salt) and refuses to run with a different one.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cl_assets.core.store import Store
    from cl_assets.settings import Settings

log = logging.getLogger(__name__)

_FINGERPRINT_LABEL = b"cl/salt-fingerprint/v1"
FINGERPRINT_KEY = "user_hash_salt_fingerprint"


def hash_user_id(user_id: str, salt: str) -> str:
    """Pseudonymous user id: HMAC-SHA256 keyed by the salt, as 64 hex characters. Unlike
    a plain digest it cannot be recomputed from a guessed id without the salt."""
    mac = _keyed_hmac(salt).copy()
    mac.update(user_id.encode("utf-8", "surrogatepass"))
    return mac.hexdigest()


@functools.lru_cache(maxsize=4)
def _keyed_hmac(salt: str) -> hmac.HMAC:
    """The HMAC state after the key, computed once per salt (a process uses one) and
    copied for each id: the key schedule is most of the cost of hashing a short id."""
    return hmac.new(salt.encode("utf-8", "surrogatepass"), digestmod=hashlib.sha256)


class SaltMismatchError(RuntimeError):
    """The configured salt is not the one the stored user hashes were made with."""


def resolve_salt(settings: Settings) -> str:
    """The configured salt, else the generated one in the data folder (created once, mode 0600)."""
    if settings.user_hash_salt is not None:
        value = settings.user_hash_salt.get_secret_value()
        if not value:
            raise ValueError("CL_USER_HASH_SALT is set but empty; unset it or give it a long random value")
        return value
    path = settings.salt_file
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_hex(32))
    log.warning("CL_USER_HASH_SALT is not set: generated one into %s (keep this file; back it up)", path)
    return path.read_text(encoding="utf-8").strip()


def salt_fingerprint(salt: str) -> str:
    return hmac.new(salt.encode("utf-8"), _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()


def check_salt(store: Store, salt: str) -> None:
    """Record the salt's fingerprint on first use; refuse a different salt afterwards."""
    expected = salt_fingerprint(salt)
    stored = store.set_meta_once(FINGERPRINT_KEY, expected)
    if not hmac.compare_digest(stored, expected):
        raise SaltMismatchError(
            "The user-id salt differs from the one this database was created with, so stored user "
            "hashes would no longer match. Restore the original CL_USER_HASH_SALT (or the salt file "
            "in the data folder), or point CL_DATABASE_URL at a new database. Refusing to re-key history."
        )


class UserHasher:
    """Hashes user ids with a checked salt."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._salt = resolve_salt(settings)
        check_salt(store, self._salt)

    def __call__(self, user_id: str | None) -> str | None:
        return None if user_id is None else hash_user_id(user_id, self._salt)

    def __repr__(self) -> str:  # never show the salt
        return "UserHasher(<salt hidden>)"
