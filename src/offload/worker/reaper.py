"""Removing what dead attempts left behind on this machine: containers and work folders.

An attempt is dead once the job's record no longer names it as the current, active attempt on
its node — the sweeper requeued it after its lease expired, a newer attempt took the job, or
the job ended while its worker was gone. Its container (labelled with node, job and attempt)
is removed from this engine, and its work folder (``<home>/work/<node>/<job>-<attempt>``:
inputs, outputs and ``params.json`` in plaintext, and ``<job>-<attempt>.fetch``: the inputs
fetched for it) from this disk, whichever node made them —
a node that died for good leaves nothing behind once any node sharing its engine or home
sweeps. A warm container (a chunk of a batched array, :mod:`offload.worker.chunks`) and its
folder ``<chunk>-<run>`` are dead once that run no longer holds the chunk's lease. Run by
every worker's heartbeat thread each sweep, and once when the node starts.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from offload.broker.chunks import ChunkLeases
from offload.broker.records import JobRecords
from offload.broker.status import ACTIVE
from offload.errors import JobNotFound
from offload.spec.arrays import parse_chunk
from offload.worker.runtime import Runtime

log = logging.getLogger(__name__)


class LocalReaper:
    def __init__(
        self, node: str, cluster: str, records: JobRecords, runtime: Runtime, work_root: Path
    ) -> None:
        self.node, self.cluster, self.records = node, cluster, records
        self.runtime, self.work_root = runtime, work_root

    def live(self, node: str, job_id: str, attempt: int) -> bool:
        if parse_chunk(job_id) is not None:  # a warm container and its folder: a chunk's run
            leases = ChunkLeases(self.records.r, self.records.lease_ttl)
            return leases.holder(job_id) == ChunkLeases.owner(node, attempt)
        try:
            rec = self.records.get(job_id)
        except JobNotFound:
            return False
        return rec.status in ACTIVE and rec.node == node and rec.attempt == attempt

    def reap(self) -> list[str]:
        """Remove dead attempts' containers and folders; returns what was removed."""
        removed = []
        for container, node, job_id, attempt in self.runtime.job_containers(self.cluster):
            if not self.live(node, job_id, attempt):
                self.runtime.remove(container)
                removed.append(f"container {container[:12]} ({job_id} attempt {attempt})")
        for node_dir in self.work_root.glob("*"):
            for folder in node_dir.glob("*"):
                attempt_of = folder.name.removesuffix(".fetch")  # its spool (fetching.py)
                job_id, _, number = attempt_of.rpartition("-")
                if not number.isdigit() or not self.live(node_dir.name, job_id, int(number)):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(f"folder {folder}")
        if removed:
            log.warning("node %s: removed what dead attempts left: %s", self.node, removed)
        return removed
