"""The object envelope: how one blob is encrypted, bound to its id, and checked on the way out.

A stored object is ``header ‖ chunk_1 ‖ … ‖ chunk_n ‖ final``, sealed and unsealed in one
streaming pass with constant memory (a few chunks) whatever its size. All integers are
big-endian::

    offset size  field
         0    7  magic           b"OFLDENV"
         7    1  version         2
         8    4  chunk_size      plaintext bytes per chunk, 64 B … 16 MiB (default 1 MiB)
        12    8  plain_size      plaintext bytes in the object
        20    8  chunk_count     ceil(plain_size / chunk_size) + 1 (the data chunks + final)
        28    8  key_id          public id of the cluster key that sealed it
        36   24  stream_header   XChaCha20-Poly1305 secretstream header (random nonce)
        60    8  header_check    BLAKE2b-64 of bytes 0..59, unkeyed, person "offload:envhdr1"
        68       chunks: each chunk_size plaintext bytes (the last data chunk: the rest,
                 1 … chunk_size), then one empty final chunk; each encrypted with
                 crypto_secretstream_xchacha20poly1305_push under the cluster's sealing
                 key, + 17 bytes (tag byte + Poly1305 MAC) each.

Every data chunk carries ``TAG_MESSAGE`` and no associated data. The final chunk is always
empty, carries ``TAG_FINAL`` and, as associated data, the whole 68-byte header followed by
the object's id (``b"sha256:<hex>"``). An empty object is the final chunk alone. Because no
plaintext rides in the final chunk, a reader that does not know the id can compute it from
the data chunks before it must authenticate the final one: :func:`verify` checks a blob
knowing only the key, and its caller checks that the returned id is the one the blob's
name says (``key.name_of(oid) == name``). The id and the sizes are known only once the
whole plaintext has been read, so :func:`seal` writes a placeholder header, streams the
chunks, then seeks back to write the real one: the source may be a pipe, only the
destination must be seekable. Version 1 (the id bound to a final chunk that also carried
data) was never deployed and is refused.

:func:`unseal` and :func:`verify` refuse before decrypting anything: a short header, a wrong
magic, an unknown version, a damaged header (``header_check``), a chunk size out of range,
a chunk count that does not follow from the sizes, or a length that differs from the
blob's length (``total_size``) → :class:`~offload.errors.IntegrityError`; an object sealed
under another key → :class:`~offload.errors.WrongKey` (a :class:`~offload.errors.ConfigError`:
the object is fine, the process has the wrong key). Then, chunk by chunk: a chunk failing
authentication, a wrong tag, a truncation, trailing bytes, and (given an id) a plaintext
whose sha256 is not the id → :class:`~offload.errors.IntegrityError`. Because secretstream
chains its chunks, reordering, dropping or repeating chunks fails authentication; because
the final chunk authenticates the header and the id, altering any header field, swapping
two objects' files, or asking for the wrong id fails too.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import IO, BinaryIO

import nacl.bindings as sodium
import nacl.encoding
import nacl.exceptions
import nacl.hash

from offload.cache.keys import ClusterKey
from offload.cache.store import check_id
from offload.errors import CacheError, IntegrityError, WrongKey

MAGIC = b"OFLDENV"
VERSION = 2
DEFAULT_CHUNK_SIZE = 1024 * 1024
MIN_CHUNK_SIZE = 64
MAX_CHUNK_SIZE = 16 * 1024 * 1024
ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES  # 17

_FIELDS = struct.Struct(">7sBIQQ8s24s")  # magic … stream_header: 60 bytes
_CHECK_BYTES = 8
_CHECK_PERSON = b"offload:envhdr1"
HEADER_SIZE = _FIELDS.size + _CHECK_BYTES  # 68

_TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
_TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
_push = sodium.crypto_secretstream_xchacha20poly1305_push
_pull = sodium.crypto_secretstream_xchacha20poly1305_pull

# Below this, hashing inline beats handing the chunk to the hashing thread.
_THREAD_MIN = 64 * 1024


@dataclass(frozen=True)
class Sealed:
    """What :func:`seal` wrote: the plaintext's id and size, and the name to store it under."""

    oid: str
    size: int
    name: str


@dataclass(frozen=True)
class Header:
    """A parsed, self-consistent envelope header (not yet authenticated: that needs the key)."""

    version: int
    chunk_size: int
    plain_size: int
    chunk_count: int
    key_id: bytes
    stream_header: bytes
    raw: bytes

    @property
    def fingerprint(self) -> str:
        return self.key_id.hex()


def chunk_count(plain_size: int, chunk_size: int) -> int:
    """Chunks in an envelope: the data chunks, then the empty final chunk (an empty object
    is the final chunk alone)."""
    return -(-plain_size // chunk_size) + 1


def sealed_size(plain_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Bytes of the envelope of a ``plain_size``-byte object."""
    return HEADER_SIZE + plain_size + ABYTES * chunk_count(plain_size, chunk_size)


def _check_chunk_size(chunk_size: int) -> None:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")


def _header_check(fields: bytes) -> bytes:
    return nacl.hash.blake2b(
        fields,
        digest_size=_CHECK_BYTES,
        person=_CHECK_PERSON,
        encoder=nacl.encoding.RawEncoder,
    )


def _pack_header(
    chunk_size: int, plain_size: int, count: int, key_id: bytes, stream_header: bytes
) -> bytes:
    fields = _FIELDS.pack(MAGIC, VERSION, chunk_size, plain_size, count, key_id, stream_header)
    return fields + _header_check(fields)


def parse_header(raw: bytes, total_size: int | None = None) -> Header:
    """Check an envelope header's structure and sizes; :class:`IntegrityError` when wrong.

    ``total_size``, when given, is the whole blob's length, which must match the header.
    """
    if len(raw) < HEADER_SIZE:
        raise IntegrityError(f"envelope too short: {len(raw)} bytes, a header is {HEADER_SIZE}")
    magic, version, chunk_size, plain_size, count, key_id, stream_header = _FIELDS.unpack_from(raw)
    if magic != MAGIC:
        raise IntegrityError("not an offload envelope (bad magic)")
    if version != VERSION:
        raise IntegrityError(f"unknown envelope version {version}; this offload reads {VERSION}")
    if raw[_FIELDS.size : HEADER_SIZE] != _header_check(raw[: _FIELDS.size]):
        raise IntegrityError("envelope header is damaged (header check mismatch)")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise IntegrityError(f"envelope chunk size {chunk_size} is out of range")
    if count != chunk_count(plain_size, chunk_size):
        raise IntegrityError(
            f"envelope sizes disagree: {plain_size} bytes in chunks of {chunk_size} "
            f"cannot make {count} chunks"
        )
    if total_size is not None and total_size != sealed_size(plain_size, chunk_size):
        raise IntegrityError(
            f"envelope is {total_size} bytes but its header describes "
            f"{sealed_size(plain_size, chunk_size)} (truncated or extended)"
        )
    return Header(
        version, chunk_size, plain_size, count, key_id, stream_header, bytes(raw[:HEADER_SIZE])
    )


def _read_full(src: BinaryIO, n: int) -> bytes:
    """Read ``n`` bytes, fewer only at end of stream (raw streams and pipes read short)."""
    data = src.read(n)
    if data is None:
        raise CacheError("cannot stream from a non-blocking source")
    if len(data) == n or not data:
        return data if type(data) is bytes else bytes(data)
    parts = [data]
    got = len(data)
    while got < n:
        more = src.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


WRITE_PIECE = 256 * 1024
"""The most bytes one ``write`` system call is given. A file written 1 MiB a call gets its
page cache in 1 MiB folios (Linux 6.x, ext4/xfs large folios), whose allocation waits on
memory compaction once free memory is fragmented: 1 GiB took 2.3 to 2.5 s in 1 MiB writes and
0.4 s in 64 to 256 KiB writes on the development VM (``dd bs=…`` after a fresh 1 GiB file)."""


def write_pieces(dst: IO[bytes], data: bytes | memoryview) -> None:
    """``dst.write(data)`` in calls of at most :data:`WRITE_PIECE` bytes."""
    if len(data) <= WRITE_PIECE:
        dst.write(data)
        return
    with memoryview(data) as view:
        for i in range(0, len(view), WRITE_PIECE):
            dst.write(view[i : i + WRITE_PIECE])


class Hasher:
    """sha256 of a stream, updated in a helper thread so it overlaps the cipher and the I/O.

    hashlib and libsodium (through cffi) both release the GIL on large buffers. Updates stay
    in order: each waits for the one before. Chunks are immutable ``bytes`` (or views the caller
    leaves alone until its next update returns), so the thread reads what the caller is also
    encrypting or writing without copying it.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def update(self, data: bytes | memoryview) -> None:
        self._wait()
        if len(data) < _THREAD_MIN:
            self._h.update(data)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="offload-sha256")
        self._pending = self._pool.submit(self._h.update, data)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def oid(self) -> str:
        self._wait()
        return f"sha256:{self._h.hexdigest()}"

    def __enter__(self) -> Hasher:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def seal(
    src: BinaryIO, dst: BinaryIO, key: ClusterKey, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Sealed:
    """Encrypt everything read from ``src`` into an envelope written to ``dst``, in one pass.

    ``src`` may be any readable stream, a pipe included; ``dst`` must be seekable (a temp
    file): the header is written last, at the position ``dst`` had on entry, and ``dst`` is
    left positioned at the envelope's end. The caller flushes, fsyncs and renames; on an
    error ``dst`` holds a partial envelope, which the caller deletes.
    """
    _check_chunk_size(chunk_size)
    start = dst.tell()
    dst.write(bytes(HEADER_SIZE))
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    stream_header = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, key.sealing_key)
    size = 0
    count = 0
    with Hasher() as hasher:
        while True:
            chunk = _read_full(src, chunk_size)
            if not chunk:
                break
            hasher.update(chunk)
            write_pieces(dst, _push(state, chunk))  # TAG_MESSAGE, no associated data
            size += len(chunk)
            count += 1
            if len(chunk) < chunk_size:  # _read_full reads short only at end of stream
                break
        oid = hasher.oid()
    header = _pack_header(chunk_size, size, count + 1, key.key_id, stream_header)
    dst.write(_push(state, b"", header + oid.encode("ascii"), _TAG_FINAL))
    end = dst.tell()
    dst.seek(start)
    dst.write(header)
    dst.seek(end)
    return Sealed(oid=oid, size=size, name=key.name_of(oid))


def _open(
    src: BinaryIO,
    write: Callable[[bytes], object] | None,
    key: ClusterKey,
    oid: str | None,
    total_size: int | None,
) -> tuple[int, str]:
    """Check (and, given ``write``, decrypt) one envelope; return (plaintext bytes, id)."""
    if oid is not None:
        check_id(oid)
    hdr = parse_header(_read_full(src, HEADER_SIZE), total_size)
    if hdr.key_id != key.key_id:
        raise WrongKey(hdr.fingerprint, key.fingerprint, key.source, oid)
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(
        state, hdr.stream_header, key.sealing_key
    )
    what = f"object {oid}" if oid is not None else "the object"
    count = hdr.chunk_count
    remaining = hdr.plain_size
    with Hasher() as hasher:
        for i in range(count - 1):
            n = min(hdr.chunk_size, remaining)
            ct = _read_full(src, n + ABYTES)
            if len(ct) != n + ABYTES:
                raise IntegrityError(f"{what} is truncated in chunk {i + 1} of {count}")
            try:
                pt, tag = _pull(state, ct, None)
            except nacl.exceptions.CryptoError:
                raise IntegrityError(
                    f"{what}: chunk {i + 1} of {count} failed authentication"
                ) from None
            if tag != _TAG_MESSAGE:
                raise IntegrityError(f"{what}: chunk {i + 1} of {count} has tag {tag}")
            hasher.update(pt)
            if write is not None:
                write(pt)
            remaining -= n
        actual = hasher.oid()
    # The final chunk is empty: all it does is authenticate the header and the id.
    ct = _read_full(src, ABYTES)
    if len(ct) != ABYTES:
        raise IntegrityError(f"{what} is truncated in its final chunk ({count} of {count})")
    bound = oid if oid is not None else actual
    try:
        _, tag = _pull(state, ct, hdr.raw + bound.encode("ascii"))
    except nacl.exceptions.CryptoError:
        why = "altered header, wrong id or swapped object" if oid else "altered header or id"
        raise IntegrityError(
            f"{what}: final chunk ({count} of {count}) failed authentication ({why})"
        ) from None
    if tag != _TAG_FINAL:
        raise IntegrityError(f"{what}: final chunk ({count} of {count}) has tag {tag}")
    if total_size is None and src.read(1):
        raise IntegrityError(f"{what} has bytes after its final chunk")
    if actual != bound:
        raise IntegrityError(f"object {bound} decrypts to content with id {actual}")
    return hdr.plain_size, actual


def unseal(
    src: BinaryIO,
    dst: BinaryIO,
    key: ClusterKey,
    oid: str | None,
    *,
    total_size: int | None = None,
) -> int:
    """Verify and decrypt the envelope read from ``src`` into ``dst``; return plaintext bytes.

    ``oid`` is the id the caller expects, or ``None`` to take the id the content hashes to
    (computed while decrypting; it must be the id bound into the final chunk). ``total_size``,
    when known, is the envelope's length (the blob file's size), checked against the header
    before anything is decrypted. Raises :class:`IntegrityError` for anything wrong with the
    envelope, :class:`WrongKey` for an envelope sealed under another cluster key,
    :class:`CacheError` for a malformed ``oid``.

    Only authenticated plaintext is ever written to ``dst``, chunk by chunk — but the whole
    object is proven right only when this returns. On any error, ``dst`` may hold a partial
    plaintext: the caller writes to a temporary file, deletes it on error, and renames it
    into place only after a normal return.
    """
    size, _ = _open(src, functools.partial(write_pieces, dst), key, oid, total_size)
    return size


def verify(src: BinaryIO, key: ClusterKey, *, total_size: int | None = None) -> str:
    """Check the envelope read from ``src`` without writing anything; return its id.

    Every chunk is authenticated and the plaintext hashed as in :func:`unseal` with
    ``oid=None`` (same errors), and the plaintext is dropped. The returned id is the one the
    content hashes to and the final chunk binds; the caller still checks that the blob is
    stored under that id's name — ``key.name_of(oid) == name`` — since an envelope moved to
    another object's name is intact in itself.
    """
    _, oid = _open(src, None, key, None, total_size)
    return oid
