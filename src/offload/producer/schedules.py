"""Schedules: a job submitted again and again, on a cron expression or every so often.

A schedule is ``submit``'s arguments (validated at ``add`` by the same code as ``submit``: a
bad option raises :class:`SpecError` naming it, and nothing is stored; local input files are
uploaded once, then referred to by content id) plus its timing and its overlap policy:

* ``skip`` (default): a fire time whose previous run has not finished yet makes no job; it
  shows as ``skipped`` in ``offload schedule ls``.
* ``allow``: every fire time makes a job.

Each run is an ordinary job named after its schedule, labelled ``schedule=<name>``, with its
scheduled time (ISO 8601 UTC) in ``OFFLOAD_SCHEDULED_AT``. A schedule with ``each`` (a
``map``'s items, each checked at ``add`` as ``map`` checks it) makes an array each run
instead — optionally batched (``batch``) — its items the jobs; "the previous run has not
finished" then means an item of the previous array has not. Definitions and state live in
Redis (:mod:`offload.broker.keys`: ``offload:schedules``, ``offload:schedule:<name>:state``);
:mod:`offload.scheduler` fires them. :meth:`Schedules.fire` is the one way a fire time
becomes a job: it *claims* the time first, in one Lua script, so a time is handled once.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Literal

from offload.broker.schedules import ScheduleStore
from offload.errors import JobNotFound, OffloadError, SpecError
from offload.producer.array import JobArray
from offload.producer.client import Client
from offload.producer.items import within
from offload.producer.job import Job
from offload.producer.options import JobOptions, check_names
from offload.producer.timing import Timing, iso
from offload.spec import OutputRef
from offload.spec.arrays import ARRAY_ID_RE, check_batch

log = logging.getLogger(__name__)

SCHEDULED_AT_ENV = "OFFLOAD_SCHEDULED_AT"
SCHEDULE_LABEL = "schedule"
OVERLAPS = ("skip", "allow")
Overlap = Literal["skip", "allow"]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
# The job options a schedule takes: all but the job's name (the schedule's), fan-out and
# ``after`` (a run has no parents). A new job option comes along by itself.
SCHEDULABLE = JobOptions.names() - {"name", "task", "after"}


@dataclass(frozen=True)
class Schedule:
    """A schedule's definition: what to submit, when, and what to do on overlap."""

    name: str
    image: str
    command: list[str] | None
    options: dict[str, Any]  # JobOptions.to_json(); inputs are content ids / s3:// URIs
    timing: Timing
    overlap: Overlap = "skip"
    created_at: float = 0.0
    each: list[dict[str, Any]] | None = None  # a map's items: each run is an array
    batch: int | None = None  # the array's items per warm container

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, data: str | bytes) -> Schedule:
        raw = json.loads(data)
        return cls(**{**raw, "timing": Timing(**raw["timing"])})

    def job_options(self, scheduled_at: float) -> JobOptions:
        """The options of the run of ``scheduled_at``."""
        opts = JobOptions.of(self.options)
        return opts.replace(
            name=self.name,
            env={**opts.env, SCHEDULED_AT_ENV: iso(scheduled_at)},
            labels={**opts.labels, SCHEDULE_LABEL: self.name},
        )


@dataclass(frozen=True)
class ScheduleState:
    next_at: float | None = None
    last_at: float | None = None  # the last fire time handled (run, skipped or failed)
    last_outcome: str = ""  # submitted | skipped: … | error: … | submitting (claimed)
    last_job: str | None = None  # the last job this schedule made (run-now included)
    last_run_at: float | None = None  # that job's scheduled time
    paused: bool = False

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> ScheduleState:
        def num(k: str) -> float | None:
            return float(h[k]) if h.get(k) else None

        return cls(
            next_at=num("next_at"),
            last_at=num("last_at"),
            last_outcome=h.get("last_outcome", ""),
            last_job=h.get("last_job") or None,
            last_run_at=num("last_run_at"),
            paused=h.get("paused") == "1",
        )


@dataclass(frozen=True)
class ScheduleInfo:
    """What ``offload schedule ls`` shows: the definition, its state, the last run's status."""

    schedule: Schedule
    state: ScheduleState
    last_status: str | None  # the last job's status now ("expired" once its record is gone)


@dataclass(frozen=True)
class Fired:
    """What one fire time became."""

    name: str
    at: float
    job_id: str | None
    outcome: str


class Schedules:
    """Add, list, pause, resume, remove and run schedules; ``client.settings`` picks Redis."""

    def __init__(self, client: Client | None = None) -> None:
        self.client = client or Client()

    @property
    def store(self) -> ScheduleStore:
        return self.client.broker.schedules

    def add(
        self,
        name: str,
        image: str,
        command: str | Sequence[str] | None = None,
        *,
        cron: str | None = None,
        every: str | float | timedelta | None = None,
        overlap: Overlap = "skip",
        now: float | None = None,
        options: JobOptions | None = None,
        each: Sequence[dict[str, Any]] | None = None,
        batch: int | None = None,
        **fields: Any,
    ) -> Schedule:
        """Store a schedule running ``image`` (with ``command``) on ``cron`` or ``every``.

        ``options`` and ``fields`` are a job's options (:class:`JobOptions`: inputs, params,
        secrets, cpu, memory, gpus, timeout, retries, env, network, cache, labels, …), checked
        as submit checks them. The first run is at the first fire time after now.

        ``each`` makes every run a ``map`` over those items (each checked now, naming
        ``each[<i>].<field>``; their local input files uploaded once, now), ``batch`` its
        items per warm container, as :meth:`Client.map` takes them.
        """
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise SpecError(
                "name", f"expected letters, digits, '.', '_' or '-' (at most 100), got {name!r}"
            )
        if overlap not in OVERLAPS:
            raise SpecError("overlap", f"expected one of {list(OVERLAPS)}, got {overlap!r}")
        check_names([*fields, *(options.explicit() if options else {})], SCHEDULABLE, "a schedule")
        opts = JobOptions.of(options, **fields)
        now = time.time() if now is None else now
        timing = Timing.of(cron, every, now)
        if SCHEDULED_AT_ENV in opts.env:
            raise SpecError(f"env.{SCHEDULED_AT_ENV}", "is set by the scheduler")
        for key, ref in opts.inputs.items():
            if isinstance(ref, OutputRef) or (isinstance(ref, str) and ref.startswith("output:")):
                raise SpecError(
                    f"inputs.{key}",
                    "a schedule's input is a file, a content id or an s3:// URI, "
                    "not another job's output",
                )
        draft = self.client.draft(image, command, opts.replace(name=name))
        if opts.inputs:  # local files uploaded once; s3:// imported at each run
            refs = {k: v for k, v in draft.refs.items() if not str(v).startswith("s3://")}
            opts = opts.replace(inputs={**draft.refs, **self.client.upload_inputs(refs)})
        items = self._items(image, command, opts.replace(name=name), each, batch)
        schedule = Schedule(
            name=name,
            image=image,
            command=(shlex.split(command) if isinstance(command, str) else list(command or []))
            or None,
            options=opts.to_json(),
            timing=timing,
            overlap=overlap,
            created_at=now,
            each=items,
            batch=batch,
        )
        try:
            encoded = schedule.encode()
        except (TypeError, ValueError) as exc:
            raise SpecError("options", f"must be JSON-able to be stored: {exc}") from None
        state = {"next_at": repr(timing.next_after(now)), "paused": "0"}
        if not self.store.add(name, encoded, state):
            raise SpecError("name", f"a schedule named {name!r} exists; remove it first")
        return schedule

    def _items(
        self,
        image: str,
        command: str | Sequence[str] | None,
        opts: JobOptions,
        each: Sequence[dict[str, Any]] | None,
        batch: int | None,
    ) -> list[dict[str, Any]] | None:
        """A map schedule's items, checked as ``map`` checks them, their local input files
        uploaded (stored as content ids); None for a schedule of single jobs."""
        if batch is not None:
            check_batch(batch)
            if each is None:
                raise SpecError("batch", "is for a schedule of maps (with each)")
        if each is None:
            return None
        if not each:
            raise SpecError("each", "expected at least one item to map over")
        items = []
        for i, item in enumerate(each):
            try:
                if not isinstance(item, dict):
                    raise SpecError("", f"expected a mapping of job options, got {item!r}")
                check_names(item, SCHEDULABLE, "a schedule's item")
                draft = self.client.draft(image, command, opts.merged(item))
                stored = dict(item)
                if item.get("inputs"):  # local files uploaded once, now: content ids stored
                    refs = {k: v for k, v in draft.refs.items() if k in item["inputs"]}
                    local = {k: v for k, v in refs.items() if not str(v).startswith("s3://")}
                    uploaded = {**refs, **self.client.upload_inputs(local)}
                    stored["inputs"] = {k: str(v) for k, v in uploaded.items()}
                items.append(stored)
            except SpecError as exc:
                raise within(f"each[{i}]", exc) from None
        return items

    def _submit(self, schedule: Schedule, at: float) -> Job | JobArray:
        """Submit the run of ``at``: a job, or an array for a map schedule."""
        opts = schedule.job_options(at)
        if schedule.each is None:
            return self.client.submit(schedule.image, schedule.command, opts)
        return self.client.map(
            schedule.image, schedule.command, each=schedule.each, options=opts,
            batch=schedule.batch,
        )  # fmt: skip

    def get(self, name: str) -> ScheduleInfo:
        raw = self.store.definition(name)
        if raw is None:
            raise SpecError("name", f"no schedule named {name!r}")
        return self._info(Schedule.decode(raw), self.state(name))

    def ls(self) -> list[ScheduleInfo]:
        return [self._info(s, st) for s, st in self.all()]

    def all(self) -> list[tuple[Schedule, ScheduleState]]:
        """Every schedule with its state, by name; a definition that cannot be read is logged."""
        out = []
        for name, raw in sorted(self.store.definitions().items()):
            try:
                out.append((Schedule.decode(raw), self.state(name)))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("schedule %s: cannot read its definition: %s", name, exc)
        return out

    def state(self, name: str) -> ScheduleState:
        return ScheduleState.from_hash(self.store.state(name))

    def rm(self, name: str) -> None:
        if not self.store.remove(name):
            raise SpecError("name", f"no schedule named {name!r}")

    def pause(self, name: str) -> None:
        self.get(name)
        self.store.set_state(name, {"paused": "1"})

    def resume(self, name: str, now: float | None = None) -> None:
        """Fire again from the next fire time on; times missed while paused are not made up."""
        info = self.get(name)
        now = time.time() if now is None else now
        nxt = info.schedule.timing.next_after(now)
        self.store.set_state(name, {"paused": "0", "next_at": repr(nxt)})

    def run(self, name: str, now: float | None = None) -> Job | JobArray:
        """Submit a run now (``OFFLOAD_SCHEDULED_AT`` = now), paused or not; timing unchanged.
        Returns its job (its array, for a map schedule)."""
        schedule = self.get(name).schedule
        at = round(time.time() if now is None else now, 3)
        made = self._submit(schedule, at)
        self._record(name, at, made.id, "")
        return made

    # -- firing (the scheduler) ------------------------------------------------------------

    def fire(
        self, schedule: Schedule, state: ScheduleState, now: float, token: str
    ) -> Fired | None:
        """Handle the latest fire time at or before ``now`` (once due): claim it, then submit
        its run, or record it skipped. None when it was not this caller's to handle.

        The claim comes first: a scheduler that dies after it and before submitting loses
        that one run (shown as ``submitting``); no later scheduler submits it again.
        """
        if state.paused or state.next_at is None or state.next_at > now:
            return None
        at = max(schedule.timing.latest_at_or_before(now) or state.next_at, state.next_at)
        nxt = schedule.timing.next_after(now)
        busy = self._unfinished(state.last_job) if schedule.overlap == "skip" else None
        outcome = f"skipped: run {state.last_job} is {busy}" if busy else "submitting"
        if self.store.claim(schedule.name, repr(at), repr(nxt), outcome, token) != "claimed":
            return None
        if busy:
            log.info("schedule %s: %s skipped, %s", schedule.name, iso(at), outcome)
            return Fired(schedule.name, at, None, outcome)
        try:
            run_id = self._submit(schedule, at).id
        except OffloadError as exc:
            log.warning(
                "schedule %s: the run of %s was not submitted: %s", schedule.name, iso(at), exc
            )
            self._record(schedule.name, at, "", f"error: {exc}")
            return Fired(schedule.name, at, None, f"error: {exc}")
        self._record(schedule.name, at, run_id, "submitted")
        log.info("schedule %s: %s submitted as %s", schedule.name, iso(at), run_id)
        return Fired(schedule.name, at, run_id, "submitted")

    def _record(self, name: str, at: float, job_id: str, outcome: str) -> None:
        self.store.record(name, repr(at), job_id, outcome)

    def _unfinished(self, job_id: str | None) -> str | None:
        """The status of ``job_id`` while it has not finished; None once it has (or is gone)."""
        if job_id is None:
            return None
        try:
            if ARRAY_ID_RE.match(job_id):  # a map schedule's run: unfinished while an item is
                st = self.client.array(job_id).status()
                return None if st.done else f"running ({st.ended:,}/{st.count:,} items ended)"
            status = self.client.broker.records.status(job_id)
        except JobNotFound:
            return None
        return None if status.terminal else status.value

    def _info(self, schedule: Schedule, state: ScheduleState) -> ScheduleInfo:
        last: str | None = None
        if state.last_job:
            try:
                if ARRAY_ID_RE.match(state.last_job):
                    st = self.client.array(state.last_job).status()
                    last = f"{'ended' if st.done else 'running'} {st.ended:,}/{st.count:,}"
                else:
                    last = self.client.broker.records.status(state.last_job).value
            except JobNotFound:
                last = "expired"
        return ScheduleInfo(schedule, state, last)
