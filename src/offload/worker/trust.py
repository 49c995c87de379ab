"""What a worker checks before it trusts anything Redis tells it about a job.

Redis may be written by someone without the cluster key (docs/security.md). So a worker runs
a job only when its record is signed for its id (:func:`verify`), its resolved inputs are the
outputs their parents' workers recorded and signed, and it takes another job's outputs as its
own (an identical job that just succeeded) only when that job is signed, did the same action,
and its outputs are signed (:func:`outputs_of`). The crypto is :mod:`offload.cache.jobseal`.
"""

from __future__ import annotations

from offload.broker.status import JobStatus, Reason
from offload.cache import jobseal
from offload.cache.actions import action_key
from offload.errors import ForgedJob, JobNotFound
from offload.spec import JobSpec, parse_output_ref
from offload.worker.node import Node, Outcome


def verify(node: Node, job_id: str, spec: JobSpec) -> JobSpec:
    """``spec`` checked and opened (secrets in clear); :class:`ForgedJob` when it is not
    what a key holder signed for ``job_id``; an :class:`Outcome` when a parent is gone."""
    if node.key is None:
        why = f"node {node.name} has no cluster key to check jobs with"
        raise Outcome(JobStatus.FAILED, Reason.WORKER_ERROR, why)
    opened = jobseal.open_job(node.key, job_id, spec, lambda a: common_spec(node, a))
    assert opened.seal is not None
    for name, ref in sorted(opened.seal.refs.items()):
        parent = parse_output_ref(ref)
        if parent is None or name not in opened.inputs:
            raise ForgedJob(f"input {name!r}: {ref!r} is not an output reference")
        try:
            rec = node.records.get(parent.job_id)
        except JobNotFound:
            why = f"input {name!r}: job {parent.job_id} no longer exists"
            raise Outcome(JobStatus.FAILED, Reason.INPUT_MISSING, why) from None
        if rec.outputs.get(parent.name) != opened.inputs[name] or not jobseal.check_outputs(
            node.key, parent.job_id, rec.outputs, rec.outputs_sig
        ):
            raise ForgedJob(
                f"input {name!r} is not the output {parent.name!r} that job {parent.job_id} "
                "recorded and signed"
            )
    return opened


_COMMON: dict[str, JobSpec] = {}  # arrays' common specs, as read (their signature is checked)
_COMMON_MAX = 64


def common_spec(node: Node, array_id: str) -> JobSpec | None:
    """Array ``array_id``'s common spec (what its items' specs are built over), read once a
    process while it is among the last arrays seen; None when there is no such array."""
    spec = _COMMON.get(array_id)
    if spec is None:
        arrays = node.records.unfed
        spec = arrays.common(array_id) if arrays is not None else None
        if spec is None:
            return None
        if len(_COMMON) >= _COMMON_MAX:
            _COMMON.pop(next(iter(_COMMON)))
        _COMMON[array_id] = spec
    return spec


def outputs_of(node: Node, job_id: str, digest: str, memo_key: str) -> dict[str, str] | None:
    """The outputs of ``job_id`` if it is signed, did the action ``memo_key`` names, and a
    key holder recorded them; None otherwise (the asking job then runs itself)."""
    assert node.key is not None  # verify() ran
    rec = node.records.get(job_id)
    try:
        same = jobseal.open_job(node.key, job_id, rec.spec, lambda a: common_spec(node, a))
    except ForgedJob:
        return None
    if jobseal.memo_key(node.key, action_key(same, digest)) != memo_key:
        return None
    signed = jobseal.check_outputs(node.key, job_id, rec.outputs, rec.outputs_sig)
    return rec.outputs if signed else None
