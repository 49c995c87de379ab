"""The staging step that turns a job's input URIs into content ids (:mod:`offload.cache.fetch`).

It runs after the job's signature was checked (the signed spec holds the URIs, credentials
opened from its box) and before the memo check, so the action key, the memo and the
in-flight claim are computed over the content fetched: the same bytes behind two URLs are
one input. The resolved spec lives in the attempt's memory only; the record keeps the URIs
and notes what they resolved to (``fetched``).

A URI fetched now is written, in plaintext, to the attempt's spool folder and moved into its
workspace as the input file: the job starts once its bytes are on disk, not after they were
sealed into the cache and opened out of it again (the copy is sealed meanwhile, from that
file: :meth:`offload.cache.fetch.Fetcher.fetch_to`).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from offload.broker.status import JobStatus, Reason
from offload.errors import CacheError
from offload.spec import JobSpec
from offload.worker.node import Node, Outcome


@dataclass
class Fetched:
    """What the fetch of an attempt's input URIs left: the content ids by input name, the
    files fetched now (plaintext, in the attempt's spool folder, to move into its workspace)
    and the sealing of their copies into the store (waited for before the job's success is
    recorded, so the next job finds them: :meth:`wait_sealed`)."""

    ids: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    sealing: list[Future[None]] = field(default_factory=list)

    def wait_sealed(self) -> None:
        for future in self.sealing:
            future.result()


def spool_dir(work_dir: Path, job_id: str, attempt: int) -> Path:
    """Where an attempt's fetched inputs land before its workspace exists (under the work
    folder: one file system with the workspace, cleared with it when a node starts)."""
    return work_dir / f"{job_id}-{attempt}.fetch"


def resolve_uris(node: Node, spec: JobSpec, spool: Path | None = None) -> tuple[JobSpec, Fetched]:
    """``spec`` with each input URI replaced by the id of its content, and what was fetched;
    a URI that cannot be fetched (or is not its pinned content) ends the job
    ``input_missing``. With ``spool`` (a folder, created here: the caller removes it), what
    must be fetched is written there in plaintext for the job, and sealed behind it."""
    uris = spec.uris()
    fetched = Fetched()
    if not uris:
        return spec, fetched
    if node.fetcher is None:
        why = f"node {node.name} cannot fetch input URIs"
        raise Outcome(JobStatus.FAILED, Reason.INPUT_MISSING, why)
    if spool is not None:
        spool.mkdir(mode=0o700, exist_ok=True)
    for name, uri in sorted(uris.items()):
        try:
            if spool is None:
                fetched.ids[name] = node.fetcher.fetch(uri)
                continue
            dest = spool / name
            fetched.ids[name], sealing = node.fetcher.fetch_to(uri, dest)
            if sealing is not None:
                fetched.files[name] = dest
                fetched.sealing.append(sealing)
        except CacheError as exc:
            why = f"input {name!r} could not be fetched: {exc}"
            raise Outcome(JobStatus.FAILED, Reason.INPUT_MISSING, why) from None
    return spec.model_copy(update={"inputs": {**spec.inputs, **fetched.ids}}), fetched
