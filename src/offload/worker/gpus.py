"""Giving each GPU job GPUs of its own, across the pool processes of every worker on a machine.

A GPU is taken by holding an exclusive ``flock`` on its lock file, ``<dir>/<uuid>.lock``::

    <home>/run/gpus/GPU-1b2c….lock     held by the process whose attempt has that GPU;
                                       its text names the holder (pid, job, attempt)

* Cross-process: a node runs several Celery pool processes, and local-provider nodes and the
  embedded worker share one machine (and one ``<home>``); every one of them takes GPUs from
  the same folder, keyed by the GPU's UUID, so no two attempts on a machine get one GPU.
* Crash-safe by construction: the kernel drops a ``flock`` when the last descriptor of its
  holder closes, so a pool process killed with SIGKILL frees its GPUs with nothing to sweep.
  ``flock`` locks belong to the open file, so two attempts in one process exclude each other
  too. The descriptors are close-on-exec: a container or helper the holder spawns keeps none.
* A container can outlive the attempt that started it (its process died mid-job), until the
  sweeper removes it; a GPU such a container still runs on is skipped (``in_use``).
* All or nothing: a job needing several GPUs takes them together or holds none, so two jobs
  never wait on each other holding half of what each needs.

There is no cross-process event for "a lock file was unlocked", so a job finding too few free
GPUs polls (``poll`` seconds apart, non-blocking) for at most ``wait`` seconds, then raises
:class:`GpusBusy`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from offload.worker.capacity import Gpu


def lock_dir(home: Path) -> Path:
    """The machine's GPU lock folder: shared by every worker with this ``home``."""
    return home / "run" / "gpus"


class GpusBusy(Exception):
    """Fewer GPUs than the job needs were free for as long as it may wait: hand it back."""

    def __init__(self, wanted: int, total: int, waited: float) -> None:
        self.wanted, self.total, self.waited = wanted, total, waited
        super().__init__(
            f"no {wanted} free GPU(s) among this node's {total} after waiting {waited:g}s: "
            "other jobs hold them"
        )


class GpuLease:
    """GPUs held for one attempt; :meth:`release` (idempotent) gives them back."""

    def __init__(self, held: dict[str, int]) -> None:
        self._held = held

    @property
    def uuids(self) -> tuple[str, ...]:
        return tuple(self._held)

    def release(self) -> None:
        held, self._held = self._held, {}
        for fd in held.values():
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> GpuLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class GpuAllocator:
    """Takes GPUs of ``gpus`` for attempts; one per worker process, all sharing ``lock_dir``."""

    def __init__(
        self, gpus: Sequence[Gpu], lock_dir: Path, *, wait: float = 30.0, poll: float = 0.25
    ) -> None:
        self.gpus = tuple(sorted(gpus, key=lambda g: g.index))
        self.lock_dir = lock_dir
        self.wait = wait
        self.poll = poll

    def acquire(
        self,
        count: int,
        *,
        holder: str = "",
        in_use: Callable[[], set[str]] | None = None,
        wait: float | None = None,
    ) -> GpuLease:
        """Take ``count`` GPUs no one else holds, waiting up to ``wait`` seconds (default: the
        allocator's) for them; :class:`GpusBusy` when they do not free up in time.

        ``holder`` is written into the lock files for people; ``in_use`` returns the UUIDs
        containers run on now (checked only once enough locks are held: it costs an engine
        call).
        """
        if count <= 0:
            return GpuLease({})
        if count > len(self.gpus):
            raise GpusBusy(count, len(self.gpus), 0)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        limit = self.wait if wait is None else wait
        deadline = time.monotonic() + limit
        while True:
            lease = self._try(count, holder, in_use)
            if lease is not None:
                return lease
            left = deadline - time.monotonic()
            if left <= 0:
                raise GpusBusy(count, len(self.gpus), limit)
            time.sleep(min(self.poll, left))

    def _try(
        self, count: int, holder: str, in_use: Callable[[], set[str]] | None
    ) -> GpuLease | None:
        held: dict[str, int] = {}
        busy: set[str] | None = None  # asked of the engine once, when enough locks are held
        try:
            for gpu in self.gpus:
                if busy is not None and gpu.uuid in busy:
                    continue
                fd = self._lock(gpu.uuid)
                if fd is None:
                    continue
                held[gpu.uuid] = fd
                if len(held) == count and in_use is not None and busy is None:
                    busy = in_use()  # containers of dead attempts may still run on a free GPU
                    for uuid in [u for u in held if u in busy]:
                        os.close(held.pop(uuid))
                if len(held) == count:
                    break
        except BaseException:
            GpuLease(held).release()  # a raw descriptor is never collected: close it
            raise
        if len(held) < count:
            GpuLease(held).release()
            return None
        for fd in held.values():
            _note(fd, f"pid={os.getpid()} {holder}\n")
        return GpuLease(held)

    def _lock(self, uuid: str) -> int | None:
        path = self.lock_dir / f"{_safe(uuid)}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def holders(self) -> dict[str, str]:
        """UUID -> what its lock file says, for each GPU held now (for people and tests)."""
        found = {}
        for gpu in self.gpus:
            fd = self._lock(gpu.uuid)
            if fd is not None:
                os.close(fd)
                continue
            path = self.lock_dir / f"{_safe(gpu.uuid)}.lock"
            with contextlib.suppress(OSError):
                found[gpu.uuid] = path.read_text().strip()
        return found


def _safe(uuid: str) -> str:
    """A file name for a GPU UUID (MIG device names may hold ``/``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", uuid)


def _note(fd: int, text: str) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
