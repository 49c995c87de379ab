"""Delivering a succeeded job's outputs where its spec says (``spec.deliver``).

After the job's container exited 0 and its outputs are in the CAS, the node writes each
output, as plaintext (the destination is the user's own), to the URI the template gives
(:func:`offload.spec.deliver.destination`), through the user-data S3 settings
(``OFFLOAD_DELIVER_*``: :class:`offload.cache.fetch.UserS3`). A failed write is retried
(botocore's standard retries, then ``attempts`` rounds with backoff); what still fails is
reported in :attr:`Delivery.error`, recorded on the job beside the outputs delivered: the
job stays ``succeeded`` and its outputs stay in the CAS.

Delivery is idempotent: an output goes to the same key with the same bytes, so a worker that
dies mid-delivery leaves nothing wrong behind; the job's lease runs out, it runs again (no
memo was written) and delivers everything again.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import botocore.exceptions as bce

from offload.cache.fetch import UserS3
from offload.cache.store import Store
from offload.spec import JobSpec
from offload.spec.deliver import destination

log = logging.getLogger(__name__)

Source = Callable[[str, str], AbstractContextManager[Path]]  # (output, id) -> its file


@dataclass
class Delivery:
    delivered: dict[str, str] = field(default_factory=dict)  # output -> where it went
    error: str = ""  # what could not be delivered ("" when all were)

    def fields(self) -> dict[str, Any]:
        """The job record's fields for this delivery."""
        return {"delivered": self.delivered, "deliver_error": self.error}


def targets(job_id: str, spec: JobSpec, outputs: dict[str, str]) -> dict[str, str]:
    """Each output's destination URI."""
    assert spec.deliver is not None
    values = {"job_id": job_id, "name": spec.name or job_id, "index": ""}
    if spec.task is not None:
        values["index"] = str(spec.task[0])
    return {out: destination(spec.deliver, {**values, "output": out}) for out in outputs}


class Deliverer:
    def __init__(self, s3: UserS3, attempts: int = 3, backoff: float = 1.0, threads: int = 8):
        self.s3, self.attempts, self.backoff, self.threads = s3, attempts, backoff, threads
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            self._client = self.s3.client(pool=self.threads + 2)
        return self._client

    def deliver(
        self, job_id: str, spec: JobSpec, outputs: dict[str, str], source: Source
    ) -> Delivery:
        """Write every output to its destination; never raises for a failed write."""
        result = Delivery()
        if spec.deliver is None or not outputs:
            return result
        where = targets(job_id, spec, outputs)
        failed: list[str] = []

        def one(out: str) -> None:
            try:
                with source(out, outputs[out]) as path:
                    self._put(path, where[out])
                result.delivered[out] = where[out]
            except Exception as exc:  # reported on the job, never failing it
                log.warning(
                    "job %s: output %s not delivered to %s: %s", job_id, out, where[out], exc
                )
                failed.append(f"{out} -> {where[out]}: {exc}")

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(one, sorted(outputs)))
        if failed:
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            result.error = (
                f"{len(failed)} of {len(outputs)} outputs not delivered: {failed[0]}{more}"
            )
        return result

    def _put(self, path: Path, uri: str) -> None:
        parts = urlsplit(uri)
        bucket, key = parts.netloc, parts.path.lstrip("/")
        if not key or key.endswith("/"):
            raise ValueError(f"{uri} names no object")
        for attempt in range(self.attempts):
            try:
                self.client().upload_file(str(path), bucket, key)
                return
            except (bce.BotoCoreError, bce.ClientError, OSError) as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
                if code in ("NoSuchBucket", "AccessDenied", "InvalidBucketName"):
                    raise  # retrying changes nothing
                if attempt + 1 == self.attempts:
                    raise
                time.sleep(self.backoff * 2**attempt)


def run(
    deliverer: Deliverer | None, job_id: str, spec: JobSpec, outputs: dict[str, str], source: Source
) -> Delivery:
    """A node's delivery of ``outputs``; a node without a deliverer reports it cannot."""
    if deliverer is None:
        return Delivery(error="this node has no delivery settings")
    return deliverer.deliver(job_id, spec, outputs, source)


def workspace_source(root: Path) -> Source:
    """Outputs still in the attempt's ``out/`` folder."""

    @contextlib.contextmanager
    def source(out: str, oid: str) -> Iterator[Path]:
        yield root / out

    return source


def store_source(store: Store, work_dir: Path) -> Source:
    """Outputs taken from the store (a memo hit), each to a private temp file, then removed."""

    @contextlib.contextmanager
    def source(out: str, oid: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(dir=work_dir, prefix="deliver-") as tmp:
            path = Path(tmp) / "blob"
            store.export(oid, path)
            yield path

    return source
