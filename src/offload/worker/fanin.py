"""Fan-in over a whole array: one input, a folder of every item's output.

An input ``output:<array id>/<name>`` (:meth:`offload.producer.array.JobArray.output`) is staged
as the folder ``/offload/in/<input>/``, holding item ``i``'s output ``name`` as ``<i><suffix of
name>`` (``7.json``). The pipeline queued the job once every item succeeded
(:meth:`offload.broker.pipeline.Pipeline.settle_array`); here the worker reads the items'
outputs (live or archived, a thousand a round trip, not their whole records), takes each item's
output only when the item's worker signed its outputs
(:func:`offload.cache.jobseal.check_outputs`: Redis is not trusted with them), and the staging
copies each object out of the store."""

from __future__ import annotations

from pathlib import PurePosixPath

from offload.broker.status import JobStatus, Reason
from offload.cache import jobseal
from offload.errors import ForgedJob, JobNotFound
from offload.spec import JobSpec, parse_output_ref
from offload.spec.arrays import item_id
from offload.worker.node import Node, Outcome

Folder = list[tuple[str, str]]  # (file name, content id) of each item's output


def array_inputs(node: Node, spec: JobSpec) -> dict[str, Folder]:
    """By input name, the folder each array-wide input is staged as; an :class:`Outcome`
    (``input_missing``) when an item has no such output or the array is gone;
    :class:`ForgedJob` when an item's outputs are not what its worker signed."""
    out: dict[str, Folder] = {}
    for name, value in sorted(spec.inputs.items()):
        ref = parse_output_ref(value)
        if ref is None or not ref.array:
            continue
        arrays = node.records.unfed
        try:
            if arrays is None:
                raise JobNotFound(ref.job_id)
            count = arrays.get(ref.job_id).count
        except JobNotFound:
            why = f"input {name!r}: array {ref.job_id} no longer exists"
            raise Outcome(JobStatus.FAILED, Reason.INPUT_MISSING, why) from None
        ids = [item_id(ref.job_id, i) for i in range(count)]
        suffix = PurePosixPath(ref.name).suffix
        folder: Folder = []
        recorded = node.records.outputs_many(ids)  # not whole records: a million of them
        for index, (job_id, got) in enumerate(zip(ids, recorded, strict=True)):
            outputs, sig = got if got is not None else ({}, "")
            oid = outputs.get(ref.name)
            if got is None or oid is None:
                made = "no record" if got is None else f"outputs {sorted(outputs)}"
                why = f"input {name!r}: item {index} of array {ref.job_id} has no output "
                raise Outcome(JobStatus.FAILED, Reason.INPUT_MISSING,
                              f"{why}{ref.name!r} ({made})")  # fmt: skip
            assert node.key is not None  # verify() ran
            if not jobseal.check_outputs(node.key, job_id, outputs, sig):
                raise ForgedJob(
                    f"input {name!r}: item {index}'s outputs are not what its worker signed"
                )
            folder.append((f"{index}{suffix}", oid))
        out[name] = folder
    return out


__all__ = ["Folder", "array_inputs"]
