"""The object envelope and the cluster key: round trips, streaming, reading without an id,
keys and key files, and the CLI.

The adversarial tests — damaged, truncated, swapped and forged envelopes — are in
``test_envelope_integrity.py``.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

import nacl.bindings as sodium
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offload.cache import envelope
from offload.cache.envelope import (
    ABYTES,
    HEADER_SIZE,
    seal,
    sealed_size,
    unseal,
    verify,
)
from offload.cache.keys import ClusterKey, WrongKey, init_key, load_key
from offload.errors import CacheError, ConfigError, IntegrityError
from offload.errors import WrongKey as WrongKeyFromErrors

from .envelope_helpers import (
    FIELDS,
    FINAL,
    KEY,
    MIB,
    MSG,
    OTHER,
    SMALL,
    build,
    check,
    opened,
    sealed,
    sha,
    three_and_a_half_chunks,
    verified,
)

# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [
        (0, SMALL),
        (1, SMALL),
        (SMALL - 1, SMALL),
        (SMALL, SMALL),
        (SMALL + 1, SMALL),
        (5 * SMALL, SMALL),
        (7 * SMALL + 3, SMALL),
        (0, MIB),
        (1, MIB),
        (MIB, MIB),
        (MIB + 1, MIB),
        (3 * MIB + 5, MIB),
    ],
)
def test_round_trip(size: int, chunk_size: int) -> None:
    data = os.urandom(size)
    s, blob = sealed(data, chunk_size=chunk_size)
    assert s.oid == sha(data)
    assert s.size == size
    assert s.name == KEY.name_of(s.oid)
    assert len(blob) == sealed_size(size, chunk_size)
    assert opened(blob, s.oid) == data
    assert opened(blob, s.oid, total=False) == data
    assert opened(blob, None) == data
    assert opened(blob, None, total=False) == data
    assert verified(blob) == verified(blob, total=False) == s.oid


def test_default_chunk_size_and_format_layout() -> None:
    data = os.urandom(MIB + 10)
    _, blob = sealed(data, chunk_size=envelope.DEFAULT_CHUNK_SIZE)
    magic, version, chunk_size, plain_size, count, key_id, _ = FIELDS.unpack_from(blob)
    assert (magic, version, chunk_size, plain_size, count) == (b"OFLDENV", 2, MIB, MIB + 10, 3)
    assert key_id.hex() == KEY.fingerprint
    assert blob[FIELDS.size : HEADER_SIZE] == check(blob[: FIELDS.size])
    assert len(blob) == HEADER_SIZE + MIB + 10 + 3 * ABYTES
    assert data not in blob and data[:64] not in blob


@pytest.mark.parametrize("size", [0, 1, SMALL, 3 * SMALL, 3 * SMALL + 7])
def test_hand_built_envelope_from_the_documented_format_opens(size: int) -> None:
    data = os.urandom(size)
    parts = [data[i : i + SMALL] for i in range(0, len(data), SMALL)]
    chunks = [(p, MSG) for p in parts] + [(b"", FINAL)]
    blob = build(chunks, sha(data))
    assert len(blob) == sealed_size(size, SMALL)
    assert opened(blob, sha(data)) == data
    assert opened(blob, None) == data
    assert verified(blob) == sha(data)


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL])
def test_the_final_chunk_is_empty_and_alone_binds_the_id(size: int) -> None:
    s, blob = sealed(os.urandom(size))
    n_data = -(-size // SMALL)
    assert FIELDS.unpack_from(blob)[4] == n_data + 1
    assert len(blob) == HEADER_SIZE + size + (n_data + 1) * ABYTES
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(
        state, FIELDS.unpack_from(blob)[6], KEY.sealing_key
    )
    pos = HEADER_SIZE
    for i in range(n_data):
        n = min(SMALL, size - i * SMALL) + ABYTES
        pt, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(state, blob[pos : pos + n])
        assert tag == MSG and pt  # no associated data on any data chunk
        pos += n
    final = blob[pos:]
    assert len(final) == ABYTES
    ad = blob[:HEADER_SIZE] + s.oid.encode()
    pt, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(state, final, ad)
    assert (pt, tag) == (b"", FINAL)


def test_an_empty_object_is_the_final_chunk_alone() -> None:
    s, blob = sealed(b"")
    assert s.oid == sha(b"") and len(blob) == HEADER_SIZE + ABYTES == sealed_size(0) == 85
    assert opened(blob, s.oid) == opened(blob, None) == b""
    assert verified(blob) == s.oid


def test_every_seal_is_fresh() -> None:
    s1, b1 = sealed(b"same bytes")
    s2, b2 = sealed(b"same bytes")
    assert s1 == s2 and b1 != b2  # same id and name, new nonce


def test_seal_at_an_offset_writes_its_header_there() -> None:
    out = io.BytesIO()
    out.write(b"prefix")
    s = seal(io.BytesIO(b"x" * 200), out, KEY, chunk_size=SMALL)
    assert out.tell() == 6 + sealed_size(200, SMALL)
    assert opened(out.getvalue()[6:], s.oid) == b"x" * 200


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=2000),
    chunk_size=st.sampled_from([64, 65, 100, 257, 1024]),
    reads=st.lists(st.integers(1, 300), min_size=1, max_size=20),
)
def test_round_trip_random_sizes_and_short_reads(
    data: bytes, chunk_size: int, reads: list[int]
) -> None:
    out = io.BytesIO()
    s = seal(cast(BinaryIO, ShortReads(data, reads)), out, KEY, chunk_size=chunk_size)
    assert s.oid == sha(data) and s.size == len(data)
    blob = out.getvalue()
    assert len(blob) == sealed_size(len(data), chunk_size)
    back = io.BytesIO()
    assert unseal(cast(BinaryIO, ShortReads(blob, reads)), back, KEY, s.oid) == len(data)
    assert back.getvalue() == data
    anon = io.BytesIO()
    assert unseal(cast(BinaryIO, ShortReads(blob, reads)), anon, KEY, None) == len(data)
    assert anon.getvalue() == data
    assert verify(cast(BinaryIO, ShortReads(blob, reads)), KEY) == s.oid


# -- streaming -------------------------------------------------------------------------------


class ShortReads(io.RawIOBase):
    """A non-seekable raw stream that returns fewer bytes than asked, in a cycle of sizes."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._sizes = sizes
        self._i = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._sizes[self._i % len(self._sizes)], len(self._data) - self._pos)
        self._i += 1
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def generated(parts: Iterator[bytes]) -> BinaryIO:
    """A non-seekable stream fed by a generator."""

    class Gen(io.RawIOBase):
        buf = b""

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            while not self.buf:
                nxt = next(parts, None)
                if nxt is None:
                    return 0
                self.buf = nxt
            n = min(len(b), len(self.buf))
            b[:n], self.buf = self.buf[:n], self.buf[n:]
            return n

    return cast(BinaryIO, Gen())


def test_seal_from_a_pipe_and_unseal_from_a_pipe() -> None:
    data = os.urandom(2 * MIB + 12345)

    def feed(payload: bytes) -> BinaryIO:
        r, w = os.pipe()

        def write() -> None:
            with os.fdopen(w, "wb") as f:
                for i in range(0, len(payload), 7000):  # the reader sees short reads
                    f.write(payload[i : i + 7000])

        threading.Thread(target=write, daemon=True).start()
        src = os.fdopen(r, "rb", buffering=0)
        assert not src.seekable()
        return cast(BinaryIO, src)

    out = io.BytesIO()
    with feed(data) as src:
        s = seal(src, out, KEY)
    assert s.oid == sha(data)
    back = io.BytesIO()
    with feed(out.getvalue()) as src:
        assert unseal(src, back, KEY, s.oid) == len(data)
    assert back.getvalue() == data
    with feed(out.getvalue()) as src:
        assert verify(src, KEY) == s.oid


def test_seal_from_a_generator_backed_stream() -> None:
    pieces = [os.urandom(n) for n in (1, 1000, 64 * 1024, 0, 300_000, 5)]
    s = seal(generated(iter(pieces)), io.BytesIO(), KEY, chunk_size=100_000)
    assert s.oid == sha(b"".join(pieces))


# -- reading without the id: unseal(oid=None) and verify ------------------------------------


def test_unseal_without_an_id_learns_it_from_the_content() -> None:
    data = os.urandom(5 * SMALL + 9)
    _, blob = sealed(data)
    for total in (True, False):
        assert opened(blob, None, total=total) == data


class ReadOnly(io.BytesIO):
    def write(self, b: object) -> int:
        raise AssertionError("verify wrote")


def test_verify_returns_the_id_and_writes_nothing() -> None:
    data = os.urandom(3 * MIB + 1)
    s, blob = sealed(data, chunk_size=MIB)
    assert verify(ReadOnly(blob), KEY, total_size=len(blob)) == s.oid
    assert verify(ReadOnly(blob), KEY) == s.oid
    assert KEY.name_of(s.oid) == s.name


def test_verify_refuses_a_damaged_blob() -> None:
    _, _, blob = three_and_a_half_chunks()
    bad = bytearray(blob)
    bad[HEADER_SIZE + 3] ^= 1
    with pytest.raises(IntegrityError):
        verified(bytes(bad))
    with pytest.raises(IntegrityError):
        verified(blob[:-1], total=False)
    with pytest.raises(IntegrityError):
        verified(blob + b"x", total=False)


def test_verify_of_a_blob_under_the_wrong_name_is_caught_by_comparing_names(
    tmp_path: Path,
) -> None:
    """What `offload cache verify` does: each blob must verify AND hash to its own name."""
    a, b = os.urandom(300), os.urandom(300)
    sa, blob_a = sealed(a)
    sb, blob_b = sealed(b)
    (tmp_path / sa.name).write_bytes(blob_a)
    (tmp_path / sb.name).write_bytes(blob_b)
    # a third blob, a sound envelope of `a`, stored under a name of content it is not
    stray = KEY.name_of(sha(b"not a"))
    (tmp_path / stray).write_bytes(sealed(a)[1])
    # and A's file swapped in for B's
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / sb.name).write_bytes(blob_a)

    def audit(folder: Path) -> dict[str, str]:
        verdicts = {}
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            with path.open("rb") as f:
                try:
                    oid = verify(f, KEY, total_size=path.stat().st_size)
                except IntegrityError:
                    verdicts[path.name] = "damaged"
                    continue
            verdicts[path.name] = "ok" if KEY.name_of(oid) == path.name else "misnamed"
        return verdicts

    assert audit(tmp_path) == {sa.name: "ok", sb.name: "ok", stray: "misnamed"}
    assert audit(swapped) == {sb.name: "misnamed"}


def test_malformed_id_is_a_cache_error() -> None:
    _, _, blob = three_and_a_half_chunks()
    with pytest.raises(CacheError) as info:
        opened(blob, "sha256:xyz")
    assert not isinstance(info.value, IntegrityError)


# -- keys ------------------------------------------------------------------------------------


def test_wrong_key_is_its_own_error_and_writes_nothing() -> None:
    _, oid, blob = three_and_a_half_chunks()
    out = io.BytesIO()
    with pytest.raises(WrongKey) as info:
        unseal(io.BytesIO(blob), out, OTHER, oid, total_size=len(blob))
    err = info.value
    assert isinstance(err, ConfigError) and not isinstance(err, CacheError)
    assert KEY.fingerprint in str(err) and OTHER.fingerprint in str(err)
    assert err.exit_code == 2
    assert out.getvalue() == b""
    with pytest.raises(WrongKey):
        unseal(io.BytesIO(blob), out, OTHER, None, total_size=len(blob))
    with pytest.raises(WrongKey):
        verify(io.BytesIO(blob), OTHER)
    assert out.getvalue() == b""


def test_wrong_key_lives_in_the_error_tree_and_is_re_exported_by_keys() -> None:
    assert WrongKey is WrongKeyFromErrors
    assert issubclass(WrongKey, ConfigError) and not issubclass(WrongKey, CacheError)
    assert WrongKey.exit_code == 2


def test_name_of_is_a_keyed_hash_of_the_id() -> None:
    oid, oid2 = sha(b"a"), sha(b"b")
    name = KEY.name_of(oid)
    assert len(name) == 64 and int(name, 16) >= 0 and name == name.lower()
    assert name == KEY.name_of(oid) == ClusterKey(KEY.secret).name_of(oid)
    assert name != OTHER.name_of(oid)
    assert name != KEY.name_of(oid2)
    assert oid.removeprefix("sha256:") != name
    with pytest.raises(CacheError):
        KEY.name_of("md5:abc")


def test_subkeys_and_fingerprint_are_independent_of_each_other() -> None:
    values = [KEY.secret, KEY.naming_key, KEY.sealing_key, KEY.key_id]
    assert len({v[:8] for v in values}) == 4
    assert len(KEY.fingerprint) == 16 and KEY.fingerprint != OTHER.fingerprint
    assert KEY.fingerprint not in KEY.secret.hex()
    assert KEY.secret.hex() not in repr(KEY) and KEY.fingerprint in repr(KEY)
    assert ClusterKey(bytes(range(32))) == KEY and KEY != OTHER
    with pytest.raises(ConfigError):
        ClusterKey(b"short")


def listing(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        p.name: (stat.S_IMODE(p.stat().st_mode), p.read_bytes() if p.is_file() else b"")
        for p in folder.iterdir()
    }


def test_init_writes_an_owner_only_key_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "home" / "key"
    old_umask = os.umask(0)
    try:
        assert init_key(path) == path
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    lines = path.read_text().splitlines()
    assert lines[0] == "offload-cluster-key v1" and len(lines) == 3
    key = load_key(path)
    assert key.source == path and load_key(path) == key
    before = listing(path.parent)
    with pytest.raises(ConfigError, match="already exists"):
        init_key(path)
    assert listing(path.parent) == before  # same key, no temp files left
    init_key(path, force=True)
    assert load_key(path) != key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(path.parent)) == ["key"]


def test_two_random_keys_differ(tmp_path: Path) -> None:
    assert load_key(init_key(tmp_path / "a")) != load_key(init_key(tmp_path / "b"))


def test_load_of_a_missing_key_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="offload key init"):
        load_key(tmp_path / "nope" / "key")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_load_refuses_a_key_others_can_access(tmp_path: Path, mode: int) -> None:
    path = init_key(tmp_path / "key")
    os.chmod(path, mode)
    before = listing(tmp_path)
    with pytest.raises(ConfigError, match=f"{mode:04o}.*chmod 600"):
        load_key(path)
    assert listing(tmp_path) == before


def damaged_variants(text: str) -> Iterator[tuple[str, bytes]]:
    header, b64, chk = text.splitlines()
    yield "empty", b""
    yield "binary", os.urandom(100)
    yield "header only", f"{header}\n".encode()
    yield "no check", f"{header}\n{b64}\n".encode()
    yield "extra line", f"{text}more\n".encode()
    yield "unknown version", text.replace("v1", "v2").encode()
    yield "not a key file", text.replace("offload-cluster-key", "something").encode()
    yield "short key", f"{header}\n{b64[:20]}\n{chk}\n".encode()
    yield "bad base64", f"{header}\n{b64[:-2]}!=\n{chk}\n".encode()
    yield "bad check", f"{header}\n{b64}\ncheck 0000000000000000\n".encode()
    yield "huge", text.encode() + b"#" * 5000
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for i, ch in enumerate(b64):
        if ch == "=":
            continue
        other = alphabet[(alphabet.index(ch) + 1) % 64]
        yield f"key char {i}", f"{header}\n{b64[:i]}{other}{b64[i + 1 :]}\n{chk}\n".encode()


def test_load_refuses_a_damaged_key_file_and_writes_nothing(tmp_path: Path) -> None:
    good = init_key(tmp_path / "good").read_text()
    path = tmp_path / "key"
    for what, content in damaged_variants(good):
        path.write_bytes(content)
        os.chmod(path, 0o600)
        before = listing(tmp_path)
        with pytest.raises(ConfigError):
            load_key(path)
            pytest.fail(f"{what}: accepted")
        assert listing(tmp_path) == before, what


def test_load_refuses_a_folder(tmp_path: Path) -> None:
    (tmp_path / "key").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_key(tmp_path / "key")


def test_a_sealed_object_opens_with_the_key_reloaded_from_its_file(tmp_path: Path) -> None:
    path = init_key(tmp_path / "key")
    s, blob = sealed(b"hello", key=load_key(path))
    assert opened(blob, s.oid, key=load_key(path)) == b"hello"
    other = init_key(tmp_path / "other")
    with pytest.raises(WrongKey, match=f"from {other}"):
        opened(blob, s.oid, key=load_key(other))


# -- the CLI ---------------------------------------------------------------------------------


def test_key_init_and_show_through_click(tmp_path: Path) -> None:
    import offload.cli.keycmd  # noqa: F401  (registers `offload key`)
    from offload.cli import cli

    runner = CliRunner()
    env = {"OFFLOAD_HOME": str(tmp_path / "home")}
    shown = runner.invoke(cli, ["key", "show"], env=env)
    assert shown.exit_code == 2 and "offload key init" in shown.output
    first = runner.invoke(cli, ["key", "init"], env=env)
    assert first.exit_code == 0, first.output
    path = tmp_path / "home" / "key"
    fp = load_key(path).fingerprint
    assert str(path) in first.output and fp in first.output
    again = runner.invoke(cli, ["key", "init"], env=env)
    assert again.exit_code == 2 and "already exists" in again.output
    assert load_key(path).fingerprint == fp
    shown = runner.invoke(cli, ["key", "show"], env=env)
    assert shown.exit_code == 0 and fp in shown.output
    forced = runner.invoke(cli, ["key", "init", "--force"], env=env)
    assert forced.exit_code == 0 and load_key(path).fingerprint != fp


def test_offload_key_init_as_a_command(tmp_path: Path) -> None:
    env = {**os.environ, "OFFLOAD_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "offload", "key", "init"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "home" / "key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path).fingerprint in done.stdout
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already exists" in again.stderr
