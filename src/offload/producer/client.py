"""The producer API: validate, upload inputs, route to a resource class, publish."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from offload.broker.core import Broker
from offload.broker.limits import LimitUsage
from offload.broker.listing import JobQuery, Page, list_jobs
from offload.broker.records import JobRecord
from offload.broker.status import JobStatus
from offload.cache.archive import SealedArchive
from offload.cache.jobseal import seal_job
from offload.cache.keys import ClusterKey, load_key
from offload.cache.store import Progress, Store
from offload.config import Settings, load_settings
from offload.errors import CacheError, JobNotFound, SpecError
from offload.producer.array import JobArray
from offload.producer.arraybuild import ArrayBuilder
from offload.producer.control import Control
from offload.producer.download import Progress as DownloadProgress
from offload.producer.download import Report, download
from offload.producer.items import InputRef, check_ref, fill_inputs, output_ref
from offload.producer.job import Job, JobResult
from offload.producer.options import JobOptions
from offload.spec import (
    OBJECT_ID_RE,
    JobSpec,
    OutputRef,
    RetryPolicy,
    resolve_class,
)
from offload.spec.arrays import MAX_ITEMS, check_batch
from offload.spec.uris import is_uri

PLACEHOLDER_ID = "sha256:" + "0" * 64


class Client:
    """Submits jobs and reads their records. Settings default to the ``OFFLOAD_*`` env; the
    :class:`~offload.broker.core.Broker` to one built from them."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        broker: Broker | None = None,
        store: Store | None = None,
        progress: Progress | None = None,
    ) -> None:
        if settings is None:
            settings = broker.settings if broker is not None else load_settings()
        self.settings = settings
        self.broker = broker if broker is not None else Broker(settings)
        self._store = store
        if not self.broker.has_archive:  # archived jobs are read through this client's store
            self.broker.attach_archive(SealedArchive(lambda: self.store))
        self.progress = progress  # told (path, bytes done, total) while files are uploaded

    @cached_property
    def key(self) -> ClusterKey:
        """The cluster key: seals each job's secrets and signs the job."""
        return load_key(self.settings.key_path)

    @property
    def store(self) -> Store:
        if self._store is None:
            from offload.cache.factory import open_store  # boto3: only once a store is used

            self._store = open_store(self.settings)
        return self._store

    # -- submit ----------------------------------------------------------------------------

    def submit(
        self,
        image: str,
        command: str | Sequence[str] | None = None,
        options: JobOptions | None = None,
        **fields: Any,
    ) -> Job:
        """Validate and queue a job. Bad input raises :class:`SpecError`; nothing is queued.

        ``options`` (a :class:`JobOptions`) and ``fields`` (its field names as keywords:
        ``cpu=2, memory="4g", inputs={...}``) say everything about the job but its image and
        command. An input may be another job's future output (``job.output("name")``) and
        ``after`` lists jobs that must succeed first: the job then waits (status ``waiting``)
        and is queued the moment its last parent succeeds, its references resolved to
        content ids.
        """
        draft = self.draft(image, command, JobOptions.of(options, **fields))
        return self._publish(self._build(draft), draft.queue)

    def map(
        self,
        image: str,
        command: str | Sequence[str] | None = None,
        *,
        each: Sequence[Mapping[str, Any] | JobOptions],
        options: JobOptions | None = None,
        batch: int | None = None,
        progress: Callable[[str, int, int], object] | None = None,
        **common: Any,
    ) -> JobArray:
        """Fan out: an array of one job per item of ``each``, with ``OFFLOAD_TASK_INDEX`` /
        ``OFFLOAD_TASK_COUNT`` set; returns its :class:`JobArray` (a ``Sequence[Job]``).
        An item is a :class:`JobOptions` or a mapping of its fields: its ``inputs`` /
        ``params`` / ``secrets`` / ``env`` / ``labels`` are merged over the common options',
        the others (``name``, ``memory``, ``timeout``, …) replace them.

        Every field of every item is validated, and every item's inputs uploaded, before the
        first job is queued: a bad item raises :class:`SpecError` naming ``each[<i>].<field>``,
        and nothing is queued.

        ``batch=K`` runs up to K consecutive items one after another in one warm container
        (one message, one container start), each item still seeing exactly what a job sees
        and keeping its own exit code, timeout, logs, outputs and retries
        (:mod:`offload.worker.chunks`); for tiny items. Unset: one container per item.

        ``progress(stage, done, total)``, if given, is told how far the checking
        (``"checking"``, items) and the full builds (``"building"``) are: a progress bar's.
        """
        if batch is not None:
            check_batch(batch)
        if not each:
            raise SpecError("each", "expected at least one item to map over")
        if len(each) > MAX_ITEMS:
            raise SpecError("each", f"an array holds at most {MAX_ITEMS:,} items")
        base = JobOptions.of(options, **common)
        self.broker.admit(len(each))  # refused whole before anything is checked or uploaded
        # the common spec checked and signed once, each item's own fields over it
        builder = ArrayBuilder(self, image, command, base, len(each), batch or 0)
        info, parts = builder.build(each, progress)
        # all or none; items fed to the queue as their class has room (broker/feeder.py)
        return JobArray(self.broker, self.broker.submit_array(info, parts))

    def array(self, array_id: str) -> JobArray:
        """The array ``array_id`` (a ``map``'s); :class:`JobNotFound` if there is none."""
        return JobArray.from_id(array_id, self.broker)

    def statuses(self, jobs: Sequence[Job | str]) -> list[JobStatus]:
        """The status of each job (a :class:`Job` or its id), in order, read in pipelined
        chunks: one round trip per thousand live jobs, not one per job."""
        ids = [j.id if isinstance(j, Job) else j for j in jobs]
        return self.broker.records.statuses(ids)

    def wait(self, jobs: Sequence[Job], timeout: float | None = None) -> list[JobResult]:
        """Every job's result, in order (failures included, not raised)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        results = []
        for job in jobs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            results.append(job.result(left, raise_on_failure=False))
        return results

    def draft(self, image: str, command: str | Sequence[str] | None, options: JobOptions) -> Draft:
        """Check everything about a job that needs no upload: every field, its class, and
        that its local input files exist. Nothing is written anywhere."""
        o = options
        fields: dict[str, Any] = dict(
            image=image,
            command=command,
            params={**o.params, **o.secrets},
            secret=frozenset(o.secrets),
            resources={"cpu": o.cpu, "memory": o.memory, "gpus": o.gpus},
            timeout=(
                min(self.settings.default_timeout, self.settings.max_timeout)
                if o.timeout is None
                else o.timeout
            ),
            retries=o.retries,
            env=dict(o.env),
            network=o.network,
            cache=o.cache,
            name=o.name,
            labels=dict(o.labels),
            task=o.task,
            after=tuple(o.after),
            retry=self._retry_policy(o.retry),
            priority=o.priority,
        )
        refs = dict(o.inputs)
        if o.deliver is not None:
            fields["deliver"] = (
                fill_inputs(o.deliver, refs) if isinstance(o.deliver, str) else o.deliver
            )
        draft = JobSpec.create(**fields, inputs={name: PLACEHOLDER_ID for name in refs})
        self._check_timeout(draft.timeout)
        self._check_network(draft.network)
        queue = resolve_class(draft.resources, self.settings.classes).name
        for input_name, ref in refs.items():
            check_ref(input_name, ref)
            parent = output_ref(input_name, ref)
            if parent is not None:
                self._check_job(f"inputs.{input_name}", parent.job_id)
        for i, job_id in enumerate(draft.after):
            self._check_job(f"after[{i}]", job_id)
        return Draft(fields, refs, queue)

    def _retry_policy(self, retry: RetryPolicy | Mapping[str, Any] | None) -> dict[str, Any]:
        """The cluster's default policy (``OFFLOAD_RETRY_POLICY``), overridden by the job's."""
        own = retry.model_dump() if isinstance(retry, RetryPolicy) else dict(retry or {})
        return {**self.settings.retry_policy, **own}

    def _check_job(self, field: str, job_id: str) -> None:
        try:
            if len(job_id) == 24:  # every item of an array (JobArray.output)
                self.broker.arrays.get(job_id)
            else:
                self.broker.records.status(job_id)
        except JobNotFound:
            raise SpecError(field, f"no job {job_id} (a job must exist to be waited for)") from None

    def _build(self, draft: Draft) -> JobSpec:
        """The job's spec, once its inputs are content ids in the store (uploaded if local)."""
        return JobSpec.create(**draft.fields, inputs=self.upload_inputs(draft.refs))

    def _check_timeout(self, timeout: float) -> None:
        if timeout > self.settings.max_timeout:
            raise SpecError(
                "timeout", f"must be at most {self.settings.max_timeout:g}s (OFFLOAD_MAX_TIMEOUT)"
            )

    def upload_inputs(self, refs: Mapping[str, InputRef]) -> dict[str, str]:
        ids: dict[str, str] = {}
        for name, ref in refs.items():
            parent = output_ref(name, ref)
            if parent is not None:
                ids[name] = str(parent)  # resolved when the parent succeeds
                continue
            if isinstance(ref, str) and ref.startswith("sha256:"):
                if not OBJECT_ID_RE.match(ref):
                    raise SpecError(
                        f"inputs.{name}", f"expected 'sha256:<64 hex digits>', got {ref!r}"
                    )
                self._check_present(name, ref)
                ids[name] = ref
                continue
            if isinstance(ref, str) and is_uri(ref):
                ids[name] = ref  # fetched by the node that runs the job, not here
                continue
            assert not isinstance(ref, OutputRef)  # handled above
            path = Path(ref)
            if not path.exists():
                raise SpecError(f"inputs.{name}", f"no such file: {str(path)!r}")
            if not path.is_file():
                raise SpecError(f"inputs.{name}", f"expected a regular file, got {str(path)!r}")
            ids[name] = self.store.put_file(path, self.progress)
        return ids

    def _check_network(self, network: bool | str) -> None:
        allowed = self.settings.job_networks
        if isinstance(network, str) and network not in allowed:
            raise SpecError(
                "network",
                f"network {network!r} is not allowed in this cluster; OFFLOAD_JOB_NETWORKS "
                f"allows {', '.join(allowed) if allowed else 'none'}",
            )

    def _check_present(self, name: str, oid: str) -> None:
        # has() raises StoreUnavailable when S3 cannot be reached: an outage, not a bad spec
        if not self.store.has(oid):
            raise SpecError(f"inputs.{name}", f"{oid} is not in the store")

    def _publish(self, spec: JobSpec, queue: str) -> Job:
        job_id = uuid.uuid4().hex
        spec = seal_job(self.key, job_id, spec)  # secrets boxed, job signed: Redis is untrusted
        self.broker.submit(job_id, spec, queue)
        return Job(self.broker, job_id)

    # -- reads -----------------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        return Job.from_id(job_id, self.broker)

    def jobs(
        self,
        limit: int = 50,
        *,
        status: Iterable[JobStatus | str] = (),
        resource_class: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        name: str = "",
        since: float | None = None,
        until: float | None = None,
        after: str | None = None,
        array: str = "",
    ) -> list[JobRecord]:
        """The newest ``limit`` jobs, live and archived, that match every filter given
        (statuses, classes, labels, a name prefix, submitted between ``since`` and ``until``,
        unix times, the items of ``array``); ``after``: a cursor (:meth:`job_page`) to start
        after."""
        return self.job_page(
            limit,
            status=status,
            resource_class=resource_class,
            labels=labels,
            name=name,
            since=since,
            until=until,
            after=after,
            array=array,
        ).jobs

    def job_page(
        self,
        limit: int = 50,
        *,
        status: Iterable[JobStatus | str] = (),
        resource_class: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        name: str = "",
        since: float | None = None,
        until: float | None = None,
        after: str | None = None,
        array: str = "",
    ) -> Page:
        """Like :meth:`jobs`, with the cursor of the next page (``page.next``; None at the
        end)."""
        query = JobQuery(
            statuses=frozenset(JobStatus(s) for s in status),
            classes=frozenset(resource_class),
            labels=tuple(sorted((labels or {}).items())),
            name=name,
            since=since,
            until=until,
            limit=max(1, limit),
            after=after,
            array=array,
        )
        return list_jobs(self.broker.records, query)

    # -- job control: concurrency limits and held classes (offload.producer.control) --------

    @cached_property
    def control(self) -> Control:
        return Control(self.broker)

    def set_limit(self, limit: str, max_running: int) -> LimitUsage:
        """At most ``max_running`` jobs labelled ``limit`` ("db=orders") run at once."""
        return self.control.set_limit(limit, max_running)

    def remove_limit(self, limit: str) -> bool:
        return self.control.remove_limit(limit)

    def limits(self) -> list[LimitUsage]:
        return self.control.limits()

    def hold(self, resource_class: str) -> bool:
        """Start no new job of the class until :meth:`release`; running ones finish."""
        return self.control.hold(resource_class)

    def release(self, resource_class: str) -> list[str]:
        return self.control.release(resource_class)

    # -- data ------------------------------------------------------------------------------

    def put(self, path: str | os.PathLike[str]) -> str:
        return self.store.put_file(Path(path), self.progress)

    def read(self, oid: str) -> bytes:
        return self.store.read_bytes(oid)

    def download(self, oid: str, dest: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the object's verified content to ``dest`` (atomically; never half-written)."""
        dest = Path(dest)
        if not dest.parent.is_dir():
            raise CacheError(f"cannot write {dest}: folder {dest.parent} does not exist")
        if dest.exists() and not overwrite:
            raise CacheError(f"{dest} exists; pass overwrite=True (--force) to replace it")
        self.store.export(oid, dest)
        return dest

    def download_outputs(
        self,
        jobs: Job | str | Sequence[Job | str],
        dest: str | os.PathLike[str],
        name: str | None = None,
        *,
        workers: int = 16,
        progress: DownloadProgress | None = None,
    ) -> Report:
        """Every output of ``jobs`` (a Job, what ``map`` returned, or job ids) into the folder
        ``dest``, named by the template ``name`` (:mod:`offload.producer.download`); files
        already there with the same content are skipped. Raises
        :class:`~offload.producer.download.DownloadFailed` naming what it could not get."""
        many = [jobs] if isinstance(jobs, Job | str) else list(jobs)
        records = [self.broker.records.get(j.id if isinstance(j, Job) else j) for j in many]
        return download(self.store, records, Path(dest), name, workers=workers, progress=progress)


@dataclass(frozen=True)
class Draft:
    """A job checked but not yet built: its fields, its input references, its queue."""

    fields: dict[str, Any]
    refs: dict[str, InputRef]
    queue: str
