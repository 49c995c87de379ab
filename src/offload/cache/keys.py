"""The cluster key: one 32-byte secret from which object names and encryption keys derive.

The key lives in a small text file that only the platform's processes may read::

    offload-cluster-key v1
    <the 32 key bytes, base64>
    check <16 hex digits: BLAKE2b-64 of the key bytes, personalized "offload:keyfile">

:func:`init_key` writes a fresh random key atomically and never replaces an existing one
unless asked to; :func:`load_key` refuses a missing, damaged or group/other-accessible file
with a :class:`~offload.errors.ConfigError` and writes nothing.

From the key, :class:`ClusterKey` derives independent subkeys with keyed BLAKE2b, each under
its own personalization, so no use of one subkey tells anything about another:

* the *naming* key: a stored object's name is ``BLAKE2b-256(naming key, "sha256:<hex>")`` —
  a disk or a bucket shows names that say nothing about which content they hold;
* the *sealing* key: the XChaCha20-Poly1305 secretstream key of every envelope
  (:mod:`offload.cache.envelope`);
* the *secrets* key: the XChaCha20-Poly1305 key of the box that carries a job's secret
  values from its producer to its container (:mod:`offload.cache.jobseal`);
* the *job signing* key: keyed BLAKE2b over a job's id and spec, so that a worker runs only
  jobs a key holder submitted (:mod:`offload.cache.jobseal`);
* the *key id*: 8 public bytes (:attr:`ClusterKey.fingerprint`, 16 hex digits) written into
  every envelope so that an object sealed under another key is told apart from a damaged one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nacl.encoding
import nacl.hash
import nacl.utils

from offload.cache.store import check_id
from offload.errors import ConfigError, WrongKey

KEY_BYTES = 32
KEY_ID_BYTES = 8
FILE_HEADER = "offload-cluster-key v1"
_FILE_MAX = 4096

_PERSON_NAMING = b"offload:name:v1"
_PERSON_SEALING = b"offload:seal:v1"
_PERSON_KEY_ID = b"offload:keyid:v1"
_PERSON_SECRETS = b"offload:secr:v1"
_PERSON_JOBS = b"offload:jobs:v1"
_PERSON_OID = b"offload:oid:v1"
_PERSON_FILE_CHECK = b"offload:keyfile"

__all__ = [
    "FILE_HEADER",
    "KEY_BYTES",
    "KEY_ID_BYTES",
    "ClusterKey",
    "WrongKey",
    "init_key",
    "load_key",
]


def _blake2b(data: bytes, *, key: bytes = b"", person: bytes, size: int = 32) -> bytes:
    return nacl.hash.blake2b(
        data, digest_size=size, key=key, person=person, encoder=nacl.encoding.RawEncoder
    )


@dataclass(frozen=True, repr=False, eq=False)
class ClusterKey:
    """The cluster key and its derived subkeys. ``repr`` shows only the public fingerprint."""

    secret: bytes
    source: Path | None = None
    naming_key: bytes = field(init=False)
    sealing_key: bytes = field(init=False)
    key_id: bytes = field(init=False)
    secrets_key: bytes = field(init=False)
    jobs_key: bytes = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != KEY_BYTES:
            raise ConfigError(f"a cluster key is {KEY_BYTES} bytes")
        derive = {
            "naming_key": (_PERSON_NAMING, KEY_BYTES),
            "sealing_key": (_PERSON_SEALING, KEY_BYTES),
            "key_id": (_PERSON_KEY_ID, KEY_ID_BYTES),
            "secrets_key": (_PERSON_SECRETS, KEY_BYTES),
            "jobs_key": (_PERSON_JOBS, KEY_BYTES),
        }
        for name, (person, size) in derive.items():
            object.__setattr__(self, name, _blake2b(b"", key=self.secret, person=person, size=size))

    @classmethod
    def generate(cls) -> ClusterKey:
        """A fresh random key held only in memory (tests, tools)."""
        return cls(nacl.utils.random(KEY_BYTES))

    @property
    def fingerprint(self) -> str:
        """Public key id, 16 hex digits; a keyed hash, so it reveals nothing about the key."""
        return self.key_id.hex()

    def name_of(self, oid: str) -> str:
        """The stored name of object ``oid``: 64 hex digits, a keyed hash of the id."""
        check_id(oid)
        return _blake2b(oid.encode("ascii"), key=self.naming_key, person=_PERSON_OID).hex()

    def __repr__(self) -> str:
        return f"ClusterKey(fingerprint={self.fingerprint!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClusterKey):
            return NotImplemented
        return hmac.compare_digest(self.secret, other.secret)

    def __hash__(self) -> int:
        return hash(self.key_id)


def _file_check(secret: bytes) -> str:
    return _blake2b(secret, person=_PERSON_FILE_CHECK, size=8).hex()


def _render(secret: bytes) -> bytes:
    b64 = base64.b64encode(secret).decode("ascii")
    return f"{FILE_HEADER}\n{b64}\ncheck {_file_check(secret)}\n".encode("ascii")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def init_key(path: Path, *, force: bool = False) -> Path:
    """Write a new random cluster key to ``path`` (mode 0600, parent folder created 0700).

    Atomic: the key is written to a temporary file in the same folder, fsynced, then linked
    into place, so ``path`` is either absent, the old key, or the whole new key. An existing
    key file is never replaced unless ``force`` — every object sealed with the old key becomes
    unreadable. Raises :class:`ConfigError` and leaves nothing behind on failure.
    """
    path = Path(path)
    if not force and os.path.lexists(path):
        raise ConfigError(
            f"a key file already exists at {path}; refusing to overwrite it "
            "(--force replaces it, and objects sealed with the old key become unreadable)"
        )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"cannot create the key file {path}: {exc}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp creates the file with mode 0600
            f.write(_render(nacl.utils.random(KEY_BYTES)))
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if a key appeared meanwhile: never clobbered
        _fsync_dir(path.parent)
    except FileExistsError:
        raise ConfigError(
            f"a key file already exists at {path}; refusing to overwrite it"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot write the key file {path}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def load_key(path: Path) -> ClusterKey:
    """Read and check the key file at ``path``; :class:`ConfigError` on any problem.

    Refused: a missing file, one that is not a regular file, one that its group or others may
    read or write (the message names the mode and the ``chmod 600`` that fixes it), and one
    whose format, key length or checksum is wrong. Reads only; never writes.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"no key file at {path}; create one with `offload key init`") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)  # checked on the open file: no window for a swap after the check
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"the key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"the key file {path} has mode {mode:04o}: its group or others may access "
                f"it; only its owner may (run `chmod 600 {path}`)"
            )
        raw = os.read(fd, _FILE_MAX + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return ClusterKey(_parse(raw, path), source=path)


def _parse(raw: bytes, path: Path) -> bytes:
    def damaged(why: str) -> ConfigError:
        return ConfigError(f"the key file {path} is damaged or not a key file: {why}")

    if len(raw) > _FILE_MAX:
        raise damaged("too large")
    try:
        lines = raw.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise damaged("not ASCII text") from None
    lines = [line.strip() for line in lines]
    if not lines or not lines[0].startswith("offload-cluster-key "):
        raise damaged(f"the first line is not {FILE_HEADER!r}")
    if lines[0] != FILE_HEADER:
        raise ConfigError(
            f"the key file {path} has an unknown format {lines[0]!r}; this offload reads "
            f"{FILE_HEADER!r}"
        )
    if len(lines) != 3 or not lines[2].startswith("check "):
        raise damaged("expected 3 lines: header, key, check")
    try:
        secret = base64.b64decode(lines[1], validate=True)
    except (binascii.Error, ValueError):
        raise damaged("the key line is not base64") from None
    if len(secret) != KEY_BYTES:
        raise damaged(f"the key is {len(secret)} bytes, not {KEY_BYTES}")
    if base64.b64encode(secret).decode("ascii") != lines[1]:
        raise damaged("the key line is not canonical base64")
    if not hmac.compare_digest(lines[2].removeprefix("check "), _file_check(secret)):
        raise damaged("checksum mismatch")
    return secret
