"""The staging step that turns a job's input URIs into content ids (:mod:`offload.cache.fetch`).

It runs after the job's signature was checked (the signed spec holds the URIs, credentials
opened from its box) and before the memo check, so the action key, the memo and the
in-flight claim are computed over the content fetched: the same bytes behind two URLs are
one input. The resolved spec lives in the attempt's memory only; the record keeps the URIs
and notes what they resolved to (``fetched``).
"""

from __future__ import annotations

from offload.broker.status import JobStatus, Reason
from offload.errors import CacheError
from offload.spec import JobSpec
from offload.worker.node import Node, Outcome


def resolve_uris(node: Node, spec: JobSpec) -> tuple[JobSpec, dict[str, str]]:
    """``spec`` with each input URI replaced by the id of its content, and those ids; a URI
    that cannot be fetched (or is not its pinned content) ends the job ``input_missing``."""
    uris = spec.uris()
    if not uris:
        return spec, {}
    if node.fetcher is None:
        why = f"node {node.name} cannot fetch input URIs"
        raise Outcome(JobStatus.FAILED, Reason.INPUT_MISSING, why)
    got: dict[str, str] = {}
    for name, uri in sorted(uris.items()):
        try:
            got[name] = node.fetcher.fetch(uri)
        except CacheError as exc:
            why = f"input {name!r} could not be fetched: {exc}"
            raise Outcome(JobStatus.FAILED, Reason.INPUT_MISSING, why) from None
    return spec.model_copy(update={"inputs": {**spec.inputs, **got}}), got
