"""Shared helpers for the envelope tests: a fixed key, sealing and opening, and a forger.

``build`` makes an envelope by hand from the documented format, independent of ``seal``;
``reheader`` rewrites header fields as a forger would; ``refused`` checks that a damaged
envelope is refused with and without its id.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct

import nacl.bindings as sodium
import nacl.encoding
import nacl.hash
import pytest

from offload.cache.envelope import (
    HEADER_SIZE,
    Sealed,
    seal,
    unseal,
    verify,
)
from offload.cache.keys import ClusterKey
from offload.errors import IntegrityError

KEY = ClusterKey(bytes(range(32)))
OTHER = ClusterKey(bytes(range(1, 33)))
SMALL = 64  # the smallest chunk size, so small objects have many chunks
MIB = 1024 * 1024
FIELDS = struct.Struct(">7sBIQQ8s24s")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sealed(data: bytes, key: ClusterKey = KEY, chunk_size: int = SMALL) -> tuple[Sealed, bytes]:
    out = io.BytesIO()
    s = seal(io.BytesIO(data), out, key, chunk_size=chunk_size)
    return s, out.getvalue()


def opened(blob: bytes, oid: str | None, key: ClusterKey = KEY, *, total: bool = True) -> bytes:
    out = io.BytesIO()
    n = unseal(io.BytesIO(blob), out, key, oid, total_size=len(blob) if total else None)
    assert n == len(out.getvalue())
    return out.getvalue()


def verified(blob: bytes, key: ClusterKey = KEY, *, total: bool = True) -> str:
    return verify(io.BytesIO(blob), key, total_size=len(blob) if total else None)


def refused(blob: bytes, oid: str, key: ClusterKey = KEY, *, intact: bool = False) -> None:
    """Both with the blob's length known and streamed without it: IntegrityError.

    Unless the envelope is ``intact`` (sound in itself, only opened under the wrong id),
    reading it without an id — ``unseal(oid=None)`` and ``verify`` — must refuse it too.
    """
    for total in (True, False):
        with pytest.raises(IntegrityError):
            opened(blob, oid, key, total=total)
        if not intact:
            with pytest.raises(IntegrityError):
                opened(blob, None, key, total=total)
            with pytest.raises(IntegrityError):
                verified(blob, key, total=total)


def check(fields: bytes) -> bytes:
    return nacl.hash.blake2b(
        fields, digest_size=8, person=b"offload:envhdr1", encoder=nacl.encoding.RawEncoder
    )


def reheader(blob: bytes, **changes: object) -> bytes:
    """Rewrite header fields and recompute the (unkeyed) header check: a forger's header."""
    names = ("magic", "version", "chunk_size", "plain_size", "count", "key_id", "stream")
    values = dict(zip(names, FIELDS.unpack_from(blob), strict=True))
    values.update(changes)
    fields = FIELDS.pack(*values.values())
    return fields + check(fields) + blob[HEADER_SIZE:]


def build(
    chunks: list[tuple[bytes, int]],
    oid: str,
    key: ClusterKey = KEY,
    *,
    chunk_size: int = SMALL,
    ad_on: int = -1,
    version: int = 2,
) -> bytes:
    """An envelope built by hand from the documented format, independent of ``seal``.

    ``chunks`` are (plaintext, tag) in order, the final one included; the header + id go as
    associated data on chunk ``ad_on`` (the last by default) and on no other.
    """
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    stream = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, key.sealing_key)
    size = sum(len(c) for c, _ in chunks)
    fields = FIELDS.pack(b"OFLDENV", version, chunk_size, size, len(chunks), key.key_id, stream)
    header = fields + check(fields)
    ad_index = ad_on % len(chunks)
    body = b"".join(
        sodium.crypto_secretstream_xchacha20poly1305_push(
            state, c, header + oid.encode() if i == ad_index else None, tag
        )
        for i, (c, tag) in enumerate(chunks)
    )
    return header + body


MSG = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL


def three_and_a_half_chunks() -> tuple[bytes, str, bytes]:
    data = os.urandom(3 * SMALL + SMALL // 2)
    s, blob = sealed(data)
    return data, s.oid, blob
