"""An identical job instead of this one: its memoized outputs, or its run in flight.

Same image digest, command, parameters, environment and input ids as an earlier success
(the memo, :mod:`offload.cache.actions`, each entry signed by a key holder) → its outputs,
no container (:class:`CacheHit`). The same as a job queued or running now (the in-flight
table, :mod:`offload.broker.inflight`) → this attempt gives its slot back and the job waits
for that one (:class:`Parked`); queued again when it ends, it takes the outputs from the memo
or runs itself. An attempt that runs holds a claim on its action until its end and memo are
written (:meth:`Identical.release`, the last thing its attempt does).
"""

from __future__ import annotations

import logging

from offload.broker.inflight import InFlight, wait_for
from offload.broker.status import JobStatus
from offload.cache import jobseal
from offload.cache.actions import ActionCache, Memo, action_key
from offload.errors import BrokerError, StoreUnavailable
from offload.spec import JobSpec
from offload.worker import trust
from offload.worker.node import CacheHit, Node, Parked

log = logging.getLogger(__name__)


class Identical:
    """One attempt's memo key and in-flight claim."""

    def __init__(self, node: Node, job_id: str, attempt: int) -> None:
        self.node, self.job_id, self.attempt = node, job_id, attempt
        self.spec: JobSpec | None = None
        self.memo_key: str | None = None
        self.in_flight: InFlight | None = None  # set once this attempt claimed its action

    def check(self, spec: JobSpec, digest: str) -> None:
        """Raise :class:`CacheHit` or :class:`Parked` when an identical job answers for this
        one; return when this attempt runs (its action then claimed)."""
        self.spec = spec
        memo = self.node.memo
        if memo is None or not spec.cache:
            return
        assert self.node.key is not None  # verify() ran
        self.memo_key = jobseal.memo_key(self.node.key, action_key(spec, digest))
        hit = memo.get(self.memo_key)
        if hit is not None and not jobseal.memo_valid(self.node.key, hit):
            log.error("job %s: memo entry not signed by a key holder; ignored", self.job_id)
            hit = None  # this run's success writes a signed entry over it
        if hit is None:
            self.check_in_flight(memo, digest)
            return
        try:
            present = all(self.node.store.has(oid) for oid in hit.outputs.values())
        except StoreUnavailable as exc:
            # Cannot tell whether the outputs are still fetchable: run the job, and leave
            # the entry as it is (not dropped, not overwritten by this run).
            log.warning(
                "job %s: memo unusable while the store is unreachable: %s", self.job_id, exc
            )
            self.memo_key = None
            return
        if present:
            raise CacheHit(hit)
        memo.drop(self.memo_key)  # its outputs are gone: run the job again
        self.check_in_flight(memo, digest)

    def check_in_flight(self, memo: ActionCache, digest: str) -> None:
        """No memo: claim the action for this job. When an identical job runs it now, this
        attempt gives its slot back and the job waits for it."""
        assert self.memo_key is not None and self.spec is not None
        inflight = self.node.inflight
        if inflight is None:  # a node without the table runs every job itself
            return
        ttl = self.spec.timeout + self.node.records.lease_ttl + 60
        holder = inflight.claim(self.memo_key, self.job_id, ttl)
        if holder is None:
            self.in_flight = inflight
            return
        if holder.status is JobStatus.SUCCEEDED:  # it ended a moment ago, memo not written yet
            outputs = trust.outputs_of(self.node, holder.job_id, digest, self.memo_key)
            try:
                if outputs is not None and all(
                    self.node.store.has(oid) for oid in outputs.values()
                ):
                    raise CacheHit(Memo(self.memo_key, outputs, holder.job_id))
            except StoreUnavailable:
                pass
            return  # run it ourselves
        log.info("job %s: identical job %s runs now; waiting for it", self.job_id, holder.job_id)
        if wait_for(self.node.records, self.job_id, self.attempt, holder.job_id):
            self.node.requeue(self.job_id, self.spec, self.attempt)  # it ended meanwhile
        raise Parked()

    def remember(self, outputs: dict[str, str]) -> None:
        """A success of this attempt: its outputs answer for identical jobs from now on."""
        if self.node.memo is None or not self.memo_key:
            return
        try:
            assert self.node.key is not None  # verify() ran
            sig = jobseal.sign_memo(self.node.key, self.memo_key, outputs, self.job_id)
            self.node.memo.put(self.memo_key, outputs, self.job_id, sig)
        except BrokerError as exc:  # an outage: the job is done, only its memo is lost
            log.warning("job %s: memo not written (%s)", self.job_id, exc)

    def release(self) -> None:
        """Let go of this job's claim on its action, however the attempt ended."""
        if self.in_flight is None or self.memo_key is None:
            return
        try:
            self.in_flight.release(self.memo_key, self.job_id, self.attempt)
        except BrokerError as exc:  # it expires by itself
            log.warning("job %s: in-flight marker not released (%s)", self.job_id, exc)
