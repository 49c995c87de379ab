"""The object envelope against an adversary.

Like borg's ``test_decrypt_integrity``: every header byte flipped, body bytes flipped,
truncations, appended junk, swapped objects, reordered and dropped chunks, forged headers,
and a forged key id — each must be refused, and nothing unauthenticated may reach the
output; and each damaged envelope is refused as well by ``unseal(oid=None)`` and ``verify``,
which learn the id from the content.
"""

from __future__ import annotations

import io
import itertools
import os

import pytest

from offload.cache import envelope
from offload.cache.envelope import (
    ABYTES,
    HEADER_SIZE,
    unseal,
    verify,
)
from offload.errors import IntegrityError

from .envelope_helpers import (
    FINAL,
    KEY,
    MIB,
    MSG,
    OTHER,
    SMALL,
    build,
    opened,
    refused,
    reheader,
    sealed,
    sha,
    three_and_a_half_chunks,
    verified,
)


@pytest.fixture
def no_decrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if unseal gets as far as decrypting a chunk."""

    def pull(*args: object) -> object:
        raise AssertionError("decryption was attempted")

    monkeypatch.setattr(envelope, "_pull", pull)


# -- adversarial: every refusal is an IntegrityError ---------------------------------------


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipping_any_header_byte_is_refused(mask: int) -> None:
    _, oid, blob = three_and_a_half_chunks()
    for i in range(HEADER_SIZE):
        bad = bytearray(blob)
        bad[i] ^= mask
        refused(bytes(bad), oid)


def test_flipping_any_byte_of_a_small_envelope_is_refused() -> None:
    _, oid, blob = three_and_a_half_chunks()
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        refused(bytes(bad), oid)


def test_flipping_sampled_body_bytes_of_a_large_envelope_is_refused() -> None:
    data = os.urandom(3 * MIB + 1000)
    s, blob = sealed(data, chunk_size=MIB)
    stride = MIB + ABYTES
    positions: set[int] = set()
    # four data chunks (the last 1000 + 17 bytes) and the 17-byte final chunk
    starts = [HEADER_SIZE + k * stride for k in range(4)] + [len(blob) - ABYTES, len(blob)]
    for start, end in itertools.pairwise(starts):
        # the encrypted tag byte, first and last payload bytes, first and last MAC bytes
        positions |= {start, start + 1, start + 2, end - 17, end - 16, end - 1, (start + end) // 2}
    for i in sorted(positions):
        bad = bytearray(blob)
        bad[i] ^= 0x40
        with pytest.raises(IntegrityError):
            opened(bytes(bad), s.oid)
        with pytest.raises(IntegrityError):
            verified(bytes(bad))


def test_truncation_anywhere_is_refused() -> None:
    _, oid, blob = three_and_a_half_chunks()
    for n in range(len(blob)):  # every chunk boundary, mid-chunk, mid-header, empty
        refused(blob[:n], oid)


def test_truncation_at_a_chunk_boundary_with_a_forged_consistent_header_is_refused() -> None:
    data = os.urandom(4 * SMALL)
    s, blob = sealed(data)
    size = SMALL + ABYTES
    final = blob[-ABYTES:]
    for keep in (0, 1, 2, 3, 4):
        cut = blob[: HEADER_SIZE + keep * size]  # the final chunk dropped
        spliced = [cut + final, cut + blob[len(cut) : len(cut) + ABYTES]] if keep < 4 else []
        for body in [cut, *spliced]:
            # no final chunk; the real final chunk after fewer data chunks (a chain cut);
            # the first 17 bytes of the next data chunk standing in for a final chunk
            forged = reheader(body, plain_size=keep * SMALL, count=keep + 1)
            refused(forged, s.oid)
            refused(forged, sha(data[: keep * SMALL]))
    refused(blob[:-ABYTES], s.oid)  # the real header, the final chunk dropped


@pytest.mark.parametrize(
    "junk",
    [b"\x00", b"junk", bytes(range(ABYTES)), bytes(i % 251 for i in range(SMALL + ABYTES))],
    ids=["zero-byte", "text", "a-tag", "a-chunk-and-a-tag"],
)
def test_appended_junk_is_refused(junk: bytes) -> None:
    _, oid, blob = three_and_a_half_chunks()
    refused(blob + junk, oid)


def test_appended_chunk_with_a_forged_header_is_refused() -> None:
    data = os.urandom(2 * SMALL)
    s, blob = sealed(data)
    extra = blob[HEADER_SIZE : HEADER_SIZE + SMALL + ABYTES]
    refused(reheader(blob + extra, plain_size=3 * SMALL, count=4), s.oid)
    # the same chunk inserted before the final one
    body = blob[:-ABYTES] + extra + blob[-ABYTES:]
    refused(reheader(body, plain_size=3 * SMALL, count=4), s.oid)


def test_swapped_objects_are_refused() -> None:
    a, b = os.urandom(200), os.urandom(200)
    sa, blob_a = sealed(a)
    sb, blob_b = sealed(b)
    refused(blob_a, sb.oid, intact=True)  # A's file stored under B's name
    refused(blob_b, sa.oid, intact=True)
    _, blob_c = sealed(os.urandom(5))
    refused(blob_c, sa.oid, intact=True)
    # Read without an id, A's file is a sound envelope of A: the caller, which knows the
    # name the file is stored under, catches the swap by comparing names.
    assert verified(blob_a) == sa.oid and KEY.name_of(sa.oid) != sb.name


def test_reordered_dropped_and_repeated_chunks_are_refused() -> None:
    data = os.urandom(4 * SMALL)
    s, blob = sealed(data)
    head, size, final = blob[:HEADER_SIZE], SMALL + ABYTES, blob[-ABYTES:]
    c = [blob[HEADER_SIZE + i * size : HEADER_SIZE + (i + 1) * size] for i in range(4)]
    assert head + b"".join(c) + final == blob
    refused(head + c[1] + c[0] + c[2] + c[3] + final, s.oid)
    refused(head + c[0] + c[0] + c[2] + c[3] + final, s.oid)
    refused(reheader(head + c[0] + c[2] + c[3] + final, plain_size=3 * SMALL, count=4), s.oid)
    refused(reheader(head + c[0] + c[1] + c[2] + final, plain_size=3 * SMALL, count=4), s.oid)


def test_body_spliced_from_another_object_under_its_header_is_refused() -> None:
    data = os.urandom(2 * SMALL)
    s1, b1 = sealed(data)
    _, b2 = sealed(data)  # same plaintext, same id, different nonce
    refused(b1[:HEADER_SIZE] + b2[HEADER_SIZE:], s1.oid)


@pytest.mark.usefixtures("no_decrypt")
@pytest.mark.parametrize(
    "changes",
    [
        {"version": 1},  # the undeployed layout whose final chunk carried data
        {"version": 3},
        {"version": 0},
        {"chunk_size": 63},
        {"chunk_size": 0},
        {"chunk_size": 16 * MIB + 1},
        {"chunk_size": 2**32 - 1},
        {"count": 4},  # the v1 count: max(1, ceil(plain_size / chunk_size))
        {"count": 6},
        {"count": 0},
        {"plain_size": 2**63},
        {"plain_size": 3 * SMALL},
    ],
)
def test_unknown_versions_and_inconsistent_sizes_are_refused_before_decryption(
    changes: dict[str, int],
) -> None:
    _, oid, blob = three_and_a_half_chunks()
    for expected in (oid, None):
        out = io.BytesIO()
        with pytest.raises(IntegrityError):
            unseal(io.BytesIO(reheader(blob, **changes)), out, KEY, expected, total_size=len(blob))
        assert out.getvalue() == b""
    with pytest.raises(IntegrityError):
        verify(io.BytesIO(reheader(blob, **changes)), KEY, total_size=len(blob))


@pytest.mark.usefixtures("no_decrypt")
def test_a_length_unlike_the_header_is_refused_before_decryption() -> None:
    _, oid, blob = three_and_a_half_chunks()
    for total in (0, HEADER_SIZE, len(blob) - 1, len(blob) + 1):
        with pytest.raises(IntegrityError):
            unseal(io.BytesIO(blob), io.BytesIO(), KEY, oid, total_size=total)
        with pytest.raises(IntegrityError):
            verify(io.BytesIO(blob), KEY, total_size=total)


def test_missing_final_tag_is_refused() -> None:
    data = os.urandom(2 * SMALL)
    blob = build([(data[:SMALL], MSG), (data[SMALL:], MSG), (b"", MSG)], sha(data))
    refused(blob, sha(data))


def test_final_tag_before_the_end_is_refused() -> None:
    data = os.urandom(3 * SMALL)
    parts = [data[:SMALL], data[SMALL : 2 * SMALL], data[2 * SMALL :]]
    early = [(parts[0], MSG), (parts[1], FINAL), (parts[2], MSG), (b"", FINAL)]
    refused(build(early, sha(data), ad_on=1), sha(data))
    refused(build(early, sha(data)), sha(data))
    # the last data chunk tagged final (the never-deployed v1 layout, with a v2 header)
    last = [(parts[0], MSG), (parts[1], MSG), (parts[2], FINAL), (b"", FINAL)]
    refused(build(last, sha(data), ad_on=2), sha(data))
    refused(build(last, sha(data)), sha(data))


def test_data_in_the_final_chunk_is_refused() -> None:
    data = os.urandom(SMALL)
    # sizes consistent with the header (SMALL bytes, 2 chunks), but the final chunk holds
    # the last byte: the reader's chunk boundaries do not match the writer's
    blob = build([(data[:-1], MSG), (data[-1:], FINAL)], sha(data))
    refused(blob, sha(data))
    # the v1 layout itself: one final chunk holding the data, under a v1 header
    refused(build([(data, FINAL)], sha(data), version=1), sha(data))


def test_id_not_bound_in_the_final_chunk_is_refused() -> None:
    data = os.urandom(2 * SMALL)
    chunks = [(data[:SMALL], MSG), (data[SMALL:], MSG), (b"", FINAL)]
    for ad_on in (0, 1):
        refused(build(chunks, sha(data), ad_on=ad_on), sha(data))


def test_a_key_holder_lying_about_the_id_is_caught_by_the_hash() -> None:
    data, lie = os.urandom(100), sha(b"something else")
    # authenticates under `lie`, but the plaintext is not `lie`
    blob = build([(data, MSG), (b"", FINAL)], lie, chunk_size=128)
    with pytest.raises(IntegrityError, match="decrypts to content"):
        opened(blob, lie)
    with pytest.raises(IntegrityError):  # read without an id, the final chunk fails
        opened(blob, None)
    with pytest.raises(IntegrityError):
        verified(blob)


def test_a_forged_key_id_does_not_get_past_authentication() -> None:
    _, oid, blob = three_and_a_half_chunks()
    refused(reheader(blob, key_id=OTHER.key_id), oid, OTHER)
