"""Jobs sealed and signed by their producer, opened and checked by the worker that runs them.

Redis carries jobs but is not trusted with them: whoever can write it must not be able to run
an image, or change a command, an input or a parameter, and whoever can read it (or its AOF,
or Flower) must not learn a secret. So, before a job's record is written:

* **secrets are sealed**: the values of the params and env named in ``spec.secret`` go into
  one XChaCha20-Poly1305 box (key: the cluster key's *secrets* subkey; associated data: the
  job id, so a box only opens for its own job) and the spec keeps ``***`` in their place;
* **credentials in input URIs are sealed** the same way: an input URI with userinfo or a
  query string (a presigned URL) goes into the box whole, and the spec keeps its redacted
  form (:func:`offload.spec.uris.redact`);
* **the job is signed**: ``sig = BLAKE2b-256(canonical(job id, spec, box), key=jobs subkey)``
  over every field of the spec, the box included. ``canonical`` is sorted-key compact JSON.

A worker calls :func:`open_job` before anything else: an unsigned job, one whose spec, box
or id is not what was signed, raises :class:`~offload.errors.ForgedJob` and the job is
refused, never run. Only then are the secrets opened, in the worker's memory, on their way
into the container's environment and ``params.json``.

Inputs that named another job's output are resolved when that job succeeds (by whoever
records it: the broker layer holds no key). The signature covers the *references*: a
resolved spec keeps them in ``seal.refs``, and the worker checks each resolved id against
the parent's recorded outputs, which the parent's worker signed (:func:`sign_outputs`). A
retry that asks for more memory changes the spec: its worker signs it again (:func:`sign`).

**An array** (``map``) is signed once, not once an item: its *common* spec is sealed and
signed for the array's id (:func:`seal_array`; its box's associated data is the array id),
and each item's own fields — the JSON the item table holds — get a short MAC for the item's
id (:func:`sign_item`, 128-bit keyed BLAKE2b). The feeder (no key) builds an item's spec
from the two (:func:`offload.spec.arrays.item_spec`); a worker checks both signatures and
that the spec is exactly what they give (:func:`open_job` with ``common``) before it runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.utils

from offload.broker.model import OUTPUTS_SIG  # the job record's field of sign_outputs()
from offload.cache.actions import Memo
from offload.cache.keys import ClusterKey
from offload.errors import ForgedJob, SpecError
from offload.spec import JobSpec, Seal
from offload.spec.arrays import BOX, item_spec
from offload.spec.uris import has_credentials, is_redacted, is_uri, redact

HIDDEN = "***"  # what the record holds in place of a secret value
_PERSON_SIG = b"offload:jobsig1"
_PERSON_OUTPUTS = b"offload:outsig1"
_PERSON_MEMO = b"offload:memosig1"
_PERSON_ARRAY = b"offload:arrsig1"
_PERSON_ITEM = b"offload:itemsig1"
_AD = b"offload:secrets:v1\x00"
_NONCE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES

__all__ = [
    "HIDDEN",
    "OUTPUTS_SIG",
    "check_outputs",
    "memo_key",
    "memo_valid",
    "open_job",
    "seal_array",
    "seal_job",
    "sign",
    "sign_item",
    "sign_memo",
    "sign_outputs",
]


def _sets(value: Any) -> list[Any]:
    if isinstance(value, frozenset | set):  # iteration order varies between processes
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not part of a job's wire form")


def _canonical(value: Any) -> bytes:
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
        default=_sets,
    ).encode("ascii")


def _mac(key: bytes, person: bytes, message: bytes) -> str:
    return nacl.hash.blake2b(
        message, digest_size=32, key=key, person=person, encoder=nacl.encoding.HexEncoder
    ).decode("ascii")


def _signature(key: ClusterKey, job_id: str, spec: JobSpec, person: bytes = _PERSON_SIG) -> str:
    seal = spec.seal or Seal()
    data = spec.model_dump(exclude={"seal"})  # sets stay sets: _canonical sorts them
    data["inputs"] = {**spec.inputs, **seal.refs}  # as submitted: references, not their ids
    material = {"v": 1, "job": job_id, "spec": data, "box": seal.box}
    return _mac(key.jobs_key, person, _canonical(material))


def sign(key: ClusterKey, job_id: str, spec: JobSpec) -> JobSpec:
    """``spec`` (already sealed) signed for ``job_id``: after a change, such as more memory."""
    seal = spec.seal or Seal()
    unsigned = spec.model_copy(update={"seal": seal})
    return spec.model_copy(
        update={"seal": seal.model_copy(update={"sig": _signature(key, job_id, unsigned)})}
    )


def seal_job(key: ClusterKey, job_id: str, spec: JobSpec) -> JobSpec:
    """The spec as the record holds it: secret values boxed for ``job_id``, then signed."""
    return sign(key, job_id, _masked(key, job_id, spec))


def seal_array(key: ClusterKey, array_id: str, common: JobSpec) -> JobSpec:
    """An array's common spec as its record holds it: secret values boxed for the array,
    then signed for it (apart from any job's signature: an array id is no job id)."""
    masked = _masked(key, array_id, common)
    seal = masked.seal or Seal()
    unsigned = masked.model_copy(update={"seal": seal})
    sig = _signature(key, array_id, unsigned, _PERSON_ARRAY)
    return masked.model_copy(update={"seal": seal.model_copy(update={"sig": sig})})


def sign_item(key: ClusterKey, job_id: str, fields: bytes) -> str:
    """The MAC of an array item's own fields (``fields``: their JSON, UTF-8) for its id."""
    mac = hashlib.blake2b(
        job_id.encode("ascii") + b"\x00" + fields,
        digest_size=16,
        key=key.jobs_key,
        person=_PERSON_ITEM,
    )
    return mac.hexdigest()


def _masked(key: ClusterKey, box_id: str, spec: JobSpec) -> JobSpec:
    """``spec`` with its secret values (and input URIs with credentials) boxed for
    ``box_id`` and ``***`` (or the redacted URI) in their place; not signed."""
    hidden = {
        "params": {k: v for k, v in spec.params.items() if k in spec.secret},
        "env": {k: v for k, v in spec.env.items() if k in spec.secret},
    }
    uris = {k: v for k, v in spec.inputs.items() if is_uri(v) and has_credentials(v)}
    if uris:
        hidden["inputs"] = uris
    box = ""
    if spec.secret or uris:
        nonce = nacl.utils.random(_NONCE)
        sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            _canonical(hidden), _AD + box_id.encode("ascii"), nonce, key.secrets_key
        )
        box = base64.b64encode(nonce + sealed).decode("ascii")
    return spec.model_copy(
        update={
            "params": {k: HIDDEN if k in spec.secret else v for k, v in spec.params.items()},
            "env": {k: HIDDEN if k in spec.secret else v for k, v in spec.env.items()},
            "inputs": {k: redact(v) if k in uris else v for k, v in spec.inputs.items()},
            "seal": Seal(box=box, refs=spec.seal.refs if spec.seal else {}),
        }
    )


def open_job(
    key: ClusterKey,
    job_id: str,
    spec: JobSpec,
    common: Callable[[str], JobSpec | None] | None = None,
) -> JobSpec:
    """Check ``spec``'s signature for ``job_id`` and return it with its secrets in clear
    (``seal`` kept: its ``refs`` are still to be checked). Raises :class:`ForgedJob`.

    An array's item signed as one (``seal.item_sig``) is checked against its array's common
    spec, which ``common(array id)`` reads (None: no such array)."""
    seal = spec.seal
    if seal is not None and not seal.sig and seal.item_sig:
        _check_item(key, job_id, spec, common)
    elif seal is None or not seal.sig:
        raise ForgedJob(f"job {job_id} is not signed: it was not submitted by a key holder")
    elif not hmac.compare_digest(seal.sig, _signature(key, job_id, spec)):
        raise ForgedJob(
            f"job {job_id}'s signature does not match its spec: the record was altered, "
            "copied from another job, or signed with another cluster key"
        )
    if not spec.secret and not seal.box:
        return spec
    try:  # an item's box is its own (sealed for its id) or its array's common one
        own = json.loads(seal.item) if seal.item else {BOX: ""}
        box_id = job_id if not isinstance(own, dict) or BOX in own else job_id[:24]
        raw = base64.b64decode(seal.box, validate=True)
        plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            raw[_NONCE:], _AD + box_id.encode("ascii"), raw[:_NONCE], key.secrets_key
        )
        hidden = json.loads(plain)
    except (binascii.Error, ValueError, nacl.exceptions.CryptoError):
        raise ForgedJob(f"job {job_id}'s secrets do not open with this cluster key") from None
    names = spec.secret
    if set(hidden["params"]) != names & set(spec.params) or set(hidden["env"]) != names & set(
        spec.env
    ):
        raise ForgedJob(f"job {job_id}'s sealed secrets are not the ones its spec names")
    uris = hidden.get("inputs", {})
    redacted = {k for k, v in spec.inputs.items() if is_uri(v) and is_redacted(v)}
    if set(uris) != redacted or any(redact(uris[k]) != spec.inputs[k] for k in uris):
        raise ForgedJob(f"job {job_id}'s sealed input URIs are not the ones its spec names")
    return spec.model_copy(
        update={
            "params": {**spec.params, **hidden["params"]},
            "env": {**spec.env, **hidden["env"]},
            "inputs": {**spec.inputs, **uris},
        }
    )


def _check_item(
    key: ClusterKey,
    job_id: str,
    spec: JobSpec,
    common: Callable[[str], JobSpec | None] | None,
) -> None:
    """An array item's spec is its array's signed common spec with its own signed fields
    over it, and nothing else; :class:`ForgedJob` otherwise."""
    seal = spec.seal
    assert seal is not None
    array_id = job_id[:24]
    if not hmac.compare_digest(seal.item_sig, sign_item(key, job_id, seal.item.encode())):
        raise ForgedJob(
            f"job {job_id}'s fields are not what a key holder signed for this item of "
            f"array {array_id}: the record or the array's table was altered"
        )
    base = common(array_id) if common is not None and len(job_id) == 32 else None
    if base is None:
        raise ForgedJob(f"job {job_id} is signed as an item of array {array_id}, which is gone")
    if base.seal is None or not hmac.compare_digest(
        base.seal.sig, _signature(key, array_id, base, _PERSON_ARRAY)
    ):
        raise ForgedJob(f"array {array_id}'s common spec is not what a key holder signed")
    try:
        expected = item_spec(base, seal.item, int(job_id[24:], 16), seal.item_sig)
    except (ValueError, SpecError):  # SpecError: the fields, signed, no longer make a spec
        raise ForgedJob(f"job {job_id}'s signed fields do not make a valid spec") from None
    given = spec.model_dump(exclude={"seal"})
    given["inputs"] = {**spec.inputs, **seal.refs}  # as submitted: references, not their ids
    if given != expected.model_dump(exclude={"seal"}) or seal.box != (expected.seal or seal).box:
        raise ForgedJob(
            f"job {job_id}'s spec is not its array's common spec with its own signed fields"
        )


def sign_outputs(key: ClusterKey, job_id: str, outputs: dict[str, str]) -> str:
    """The signature a worker records with a job's outputs (its children's inputs)."""
    return _mac(key.jobs_key, _PERSON_OUTPUTS, _canonical({"job": job_id, "outputs": outputs}))


def check_outputs(key: ClusterKey, job_id: str, outputs: dict[str, str], sig: str) -> bool:
    """Whether ``outputs`` are what a key holder recorded for ``job_id``."""
    return bool(sig) and hmac.compare_digest(sig, sign_outputs(key, job_id, outputs))


def sign_memo(key: ClusterKey, action: str, outputs: dict[str, str], job_id: str) -> str:
    """The signature of a memo entry: these outputs, made by ``job_id``, for this action."""
    material = {"action": action, "job": job_id, "outputs": outputs}
    return _mac(key.jobs_key, _PERSON_MEMO, _canonical(material))


def memo_key(key: ClusterKey, action: str) -> str:
    """The name of an action's memo entry: keyed, since the action hashes secret values."""
    return _mac(key.jobs_key, b"offload:memokey1", action.encode("ascii"))


def memo_valid(key: ClusterKey, memo: Memo) -> bool:
    """Whether a memo entry is one a key holder wrote for its action."""
    sig = sign_memo(key, memo.key, memo.outputs, memo.job_id)
    return bool(memo.sig) and hmac.compare_digest(memo.sig, sig)
