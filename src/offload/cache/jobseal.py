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
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Any

import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.utils

from offload.broker.model import OUTPUTS_SIG  # the job record's field of sign_outputs()
from offload.cache.actions import Memo
from offload.cache.keys import ClusterKey
from offload.errors import ForgedJob
from offload.spec import JobSpec, Seal
from offload.spec.uris import has_credentials, is_redacted, is_uri, redact

HIDDEN = "***"  # what the record holds in place of a secret value
_PERSON_SIG = b"offload:jobsig1"
_PERSON_OUTPUTS = b"offload:outsig1"
_PERSON_MEMO = b"offload:memosig1"
_AD = b"offload:secrets:v1\x00"
_NONCE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES

__all__ = [
    "HIDDEN",
    "OUTPUTS_SIG",
    "check_outputs",
    "memo_key",
    "memo_valid",
    "open_job",
    "seal_job",
    "sign",
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


def _signature(key: ClusterKey, job_id: str, spec: JobSpec) -> str:
    seal = spec.seal or Seal()
    data = spec.model_dump(exclude={"seal"})  # sets stay sets: _canonical sorts them
    data["inputs"] = {**spec.inputs, **seal.refs}  # as submitted: references, not their ids
    material = {"v": 1, "job": job_id, "spec": data, "box": seal.box}
    return _mac(key.jobs_key, _PERSON_SIG, _canonical(material))


def sign(key: ClusterKey, job_id: str, spec: JobSpec) -> JobSpec:
    """``spec`` (already sealed) signed for ``job_id``: after a change, such as more memory."""
    seal = spec.seal or Seal()
    unsigned = spec.model_copy(update={"seal": seal})
    return spec.model_copy(
        update={"seal": seal.model_copy(update={"sig": _signature(key, job_id, unsigned)})}
    )


def seal_job(key: ClusterKey, job_id: str, spec: JobSpec) -> JobSpec:
    """The spec as the record holds it: secret values boxed for ``job_id``, then signed."""
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
            _canonical(hidden), _AD + job_id.encode("ascii"), nonce, key.secrets_key
        )
        box = base64.b64encode(nonce + sealed).decode("ascii")
    masked = spec.model_copy(
        update={
            "params": {k: HIDDEN if k in spec.secret else v for k, v in spec.params.items()},
            "env": {k: HIDDEN if k in spec.secret else v for k, v in spec.env.items()},
            "inputs": {k: redact(v) if k in uris else v for k, v in spec.inputs.items()},
            "seal": Seal(box=box, refs=spec.seal.refs if spec.seal else {}),
        }
    )
    return sign(key, job_id, masked)


def open_job(key: ClusterKey, job_id: str, spec: JobSpec) -> JobSpec:
    """Check ``spec``'s signature for ``job_id`` and return it with its secrets in clear
    (``seal`` kept: its ``refs`` are still to be checked). Raises :class:`ForgedJob`."""
    seal = spec.seal
    if seal is None or not seal.sig:
        raise ForgedJob(f"job {job_id} is not signed: it was not submitted by a key holder")
    if not hmac.compare_digest(seal.sig, _signature(key, job_id, spec)):
        raise ForgedJob(
            f"job {job_id}'s signature does not match its spec: the record was altered, "
            "copied from another job, or signed with another cluster key"
        )
    if not spec.secret and not seal.box:
        return spec
    try:
        raw = base64.b64decode(seal.box, validate=True)
        plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            raw[_NONCE:], _AD + job_id.encode("ascii"), raw[:_NONCE], key.secrets_key
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
