"""Warm containers: the items of a batch run one after another in one long-lived container.

:class:`WarmRuntime` is a :class:`~offload.worker.runtime.Runtime`: an attempt that runs on a
node whose runtime is one (``dataclasses.replace(node, runtime=warm)``) goes through its
ordinary steps — stage, create, start, wait (timeout, cancel), finish, remove — and each of
its items sees exactly what an unbatched job sees. The image and the command are unchanged:

* **The container.** Made by :meth:`DockerRuntime.create` from the first item's request, so
  with the same limits and sandbox (CPU, memory = memory+swap, pids, user, read-only root,
  ``/tmp`` tmpfs, network, capabilities dropped, no-new-privileges, Docker's init), its
  entrypoint replaced by a tiny static idle program (:func:`idle_program`, 148 bytes, written
  by the worker and mounted read-only: images are arbitrary and may lack ``sleep``). The
  program reads its stdin until end of file; the worker holds that stdin (``StdinOnce``), so
  when the worker process dies, however it dies, the container ends by itself.
* **Its mounts** are those of a job: ``<warm>/in`` read-only at ``/offload/in``, ``<warm>/out``
  writable at ``/offload/out``, ``<warm>/params.json`` read-only at ``/offload/params.json``.
  A bind mount holds the folder it was given, so per item the worker renames the item's input
  entries into ``<warm>/in`` (same filesystem: its work folder), writes its ``params.json``
  in place and gives ``<warm>/out`` the owner and mode of the item's own ``out/``; when the
  item ends, every entry goes back to the item's workspace, where the attempt's finish step
  collects the outputs as for any job. Nothing of one item is left for the next.
* **Each item** is a ``docker exec`` of the image's entrypoint and the item's command (or the
  image's ``CMD``), with the item's environment (params, ``OFFLOAD_TASK_INDEX``, its job id)
  over the image's, its user and the image's working directory. Its output streams into the
  item's log sink; its exit code is the exec's (128 + N when signal N ended it, as Docker's
  init reports for a plain container).
* **OOM.** An item killed for memory is told by the engine's ``oom`` event of the container
  (one bounded read of the engine's event log per item; cgroup v1 and v2 alike: the
  container's ``OOMKilled`` state is set only when its init dies). After an OOM the container
  is replaced: its cgroup and its ``/tmp`` (charged to that cgroup) start clean.
* **Kill** (timeout, cancel, a lost lease) kills the whole container, as for a plain job; the
  next item gets a new one. So does an item that leaves a process running behind it (checked
  per item with the engine's ``top``), a container that ended under an item, or an item whose
  request asks for other limits than the container has.

What the items of one batch share: the array's spec, user and cgroup (a memory peak of one
item is not another's), the container's ``/tmp`` and ``/dev/shm`` (not emptied between items:
the image may have no ``rm`` and the root is read-only), its hostname, and nothing else.

The warm container is labelled like a job container, with the *batch's* identity
(:class:`Batch`: the job id and attempt the caller holds a live record and lease for) plus
``offload.warm``: the node's reaper removes it, and its folder ``<work>/<batch>-<attempt>``,
once that attempt is dead; ``remove_job_containers(batch id)`` finds it. :meth:`close` (or
leaving the ``with`` block) removes both when the batch ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import requests
from docker.errors import APIError, NotFound

from offload.worker import staging
from offload.worker.docker_runtime import DockerRuntime
from offload.worker.runtime import (
    ContainerRequest,
    EngineUnavailable,
    Exit,
    LogSink,
    Mount,
    Runtime,
    StartFailed,
)

log = logging.getLogger(__name__)

LABEL_WARM = "offload.warm"
IDLE = "/.offload-idle"  # where the idle program is mounted in a warm container
OOM_GRACE = 1.0  # seconds the engine's event log is read past a SIGKILLed item's end


def idle_program(machine: str | None = None) -> bytes:
    """A static ELF executable that reads stdin until end of file, then exits 0.

    Written here rather than taken from the image (which may have no ``sleep``) or the host
    (which may have no static binary to lend): x86-64 and aarch64 Linux.
    """
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64"):
        # loop: read(0, rsp, 1); if > 0 goto loop; exit(0)
        code = bytes.fromhex("31c031ff4889e6ba010000000f054885c07fedb83c00000031ff0f05")
        arch = 0x3E
    elif machine in ("aarch64", "arm64"):
        words = [
            0xD2800000,  # mov x0, #0
            0x910003E1,  # mov x1, sp
            0xD2800022,  # mov x2, #1
            0xD28007E8,  # mov x8, #63 (read)
            0xD4000001,  # svc #0
            0xF100001F,  # cmp x0, #0
            0x54FFFF4C,  # b.gt loop
            0xD2800000,  # mov x0, #0
            0xD2800BA8,  # mov x8, #93 (exit)
            0xD4000001,  # svc #0
        ]
        code = struct.pack("<10I", *words)
        arch = 0xB7
    else:
        raise StartFailed(f"warm containers need an x86-64 or aarch64 node, not {machine}")
    base, ehsize, phsize = 0x400000, 64, 56
    size = ehsize + phsize + len(code)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header += struct.pack(
        "<HHIQQQIHHHHHH", 2, arch, 1, base + ehsize + phsize, ehsize, 0, 0, ehsize, phsize, 1,
        0, 0, 0,
    )  # fmt: skip
    program = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return header + program + code


@dataclass(frozen=True)
class Batch:
    """Who the warm container belongs to: a job id and attempt whose record is active on this
    node while the batch runs (the reaper removes the container once it is not)."""

    job_id: str
    attempt: int


@dataclass
class _Warm:
    """One warm container and its folder."""

    cid: str
    folder: Path
    key: tuple[Any, ...]
    stdin: Any  # the attached socket holding its stdin open
    dirty: bool = False  # replaced before the next item runs
    items: int = 0

    @property
    def inputs(self) -> Path:
        return self.folder / "in"

    @property
    def outputs(self) -> Path:
        return self.folder / "out"

    @property
    def params(self) -> Path:
        return self.folder / "params.json"


@dataclass
class _Item:
    req: ContainerRequest
    warm: _Warm
    sources: dict[str, Path]  # mount target -> the item's own path
    exited: threading.Event = field(default_factory=threading.Event)
    exit: Exit | None = None
    error: BaseException | None = None
    moved: list[tuple[Path, Path]] = field(default_factory=list)  # (in the warm folder, home)
    started: bool = False
    killed: bool = False


class WarmRuntime(Runtime):
    """Runs the items of one batch, one after another, in one warm container."""

    def __init__(self, docker: DockerRuntime, work_dir: Path, batch: Batch) -> None:
        self.docker, self.api, self.health = docker, docker.api, docker.health
        self.batch = batch
        self.root = work_dir / f"{batch.job_id}-{batch.attempt}"
        self.warm: _Warm | None = None
        self.items: dict[str, _Item] = {}
        self.started = 0  # warm containers started (replacements included)
        self._seq = 0
        self._images: dict[str, tuple[list[str], list[str], str]] = {}

    def __enter__(self) -> WarmRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the worker's other paths use, unchanged -------------------------------------

    def responsive(self) -> bool:
        return self.docker.responsive()

    def ensure_image(self, image: str) -> str:
        return self.docker.ensure_image(image)

    def remove_job_containers(self, job_id: str) -> list[str]:
        return self.docker.remove_job_containers(job_id)

    def job_containers(self, cluster: str) -> list[tuple[str, str, str, int]]:
        return self.docker.job_containers(cluster)

    def gpus_in_use(self) -> set[str]:
        return self.docker.gpus_in_use()

    # -- an item's life --------------------------------------------------------------------

    def create(self, req: ContainerRequest) -> str:
        sources = {m.target: m.source for m in req.mounts}
        if set(sources) != {staging.IN, staging.OUT, staging.PARAMS}:
            raise StartFailed(f"a batched item needs exactly a job's mounts, not {sorted(sources)}")
        warm = self._ready(req)
        self._seq += 1
        handle = f"{warm.cid}.{self._seq}"
        self.items[handle] = _Item(req, warm, sources)
        return handle

    def start(self, container: str, sink: LogSink) -> None:
        item = self.items[container]
        warm, req = item.warm, item.req
        argv, workdir = self._argv(req)
        self._move_in(item)
        item.started = True
        try:
            with self.health.call():
                exec_id = self.api.exec_create(
                    warm.cid, argv, environment=req.env, user=req.user, workdir=workdir or None
                )["Id"]
            with self.health.call():
                stream = self.api.exec_start(exec_id, stream=True, demux=True)
        except APIError as exc:
            warm.dirty = True
            self._move_out(item)
            item.exited.set()
            raise StartFailed(f"the engine refused to run the item: {exc.explanation}") from exc
        except EngineUnavailable:
            warm.dirty = True
            self._move_out(item)
            item.exited.set()
            raise
        warm.items += 1
        threading.Thread(
            target=self._run, args=(item, exec_id, stream, sink, time.time()), daemon=True,
            name=f"item {container[:16]}",
        ).start()  # fmt: skip

    def wait(self, container: str, timeout: float) -> Exit | None:
        item = self.items[container]
        if not item.exited.wait(timeout):
            return None
        if item.error is not None:
            raise item.error
        return item.exit

    def kill(self, container: str) -> None:
        item = self.items.get(container)
        if item is None:
            return
        item.killed = True
        item.warm.dirty = True  # the item's exec cannot be killed alone: the container goes
        self.docker.kill(item.warm.cid)

    def finish_logs(self, container: str, timeout: float) -> None:
        item = self.items.get(container)
        if item is not None:  # the output is drained before the item's end is told
            item.exited.wait(0 if self.health.down else timeout)

    def remove(self, container: str) -> None:
        """The item is done with: its files are back in its workspace; the container stays
        for the next item (killed first if the item still runs)."""
        item = self.items.pop(container, None)
        if item is None:
            return
        if item.started and not item.exited.is_set():
            self.kill(container)
            item.exited.wait(5)
        if item.moved:
            self._move_out(item)

    def close(self) -> None:
        """Remove the warm container and its folder (the batch is over)."""
        if self.warm is not None:
            self._discard(self.warm)
            self.warm = None
        shutil.rmtree(self.root, ignore_errors=True)

    # -- the warm container ----------------------------------------------------------------

    @staticmethod
    def _key(req: ContainerRequest) -> tuple[Any, ...]:
        """What a container is made with and an item must share with it."""
        return (
            req.image, req.cpu, req.memory, req.gpus, req.network, req.user, req.pids_limit,
            req.tmpfs_size, tuple(sorted(req.labels.items())), req.node, req.cluster,
        )  # fmt: skip

    def _ready(self, req: ContainerRequest) -> _Warm:
        """The warm container for ``req``, started now if there is none fit to run it."""
        warm = self.warm
        if warm is not None and (
            warm.dirty or warm.key != self._key(req) or self.docker.wait(warm.cid, 0) is not None
        ):
            self._discard(warm)
            warm = self.warm = None
        if warm is None:
            warm = self.warm = self._launch(req)
        return warm

    def _launch(self, req: ContainerRequest) -> _Warm:
        staging.private_dir(self.root)
        idle = self.root / "idle"
        if not idle.exists():
            idle.write_bytes(idle_program())
            os.chmod(idle, 0o555)
        self.started += 1
        folder = self.root / f"c{self.started}"
        folder.mkdir(mode=0o755)
        (folder / "in").mkdir(mode=0o555)
        (folder / "out").mkdir(mode=0o777)
        (folder / "params.json").write_text("{}")
        os.chmod(folder / "params.json", 0o444)
        os.chmod(folder / "out", 0o777)
        mounts = (
            Mount(folder / "in", staging.IN, read_only=True),
            Mount(folder / "out", staging.OUT, read_only=False),
            Mount(folder / "params.json", staging.PARAMS, read_only=True),
            Mount(idle, IDLE, read_only=True),
        )
        container = replace(
            req,
            job_id=self.batch.job_id,
            attempt=self.batch.attempt,
            command=(),
            entrypoint=(IDLE,),
            env={},
            mounts=mounts,
            labels={**req.labels, LABEL_WARM: "1"},
            stdin=True,
            name=f"offload-{self.batch.job_id}-{self.batch.attempt}-warm{self.started}",
        )
        cid = self.docker.create(container)
        try:
            with self.health.call():
                stdin = self.api.attach_socket(cid, params={"stdin": 1, "stream": 1})
            self.docker.start(cid, lambda stream, data: None)  # the idle program says nothing
        except BaseException:
            self.docker.remove(cid)
            raise
        return _Warm(cid, folder, self._key(req), stdin)

    def _discard(self, warm: _Warm) -> None:
        _close_socket(warm.stdin)
        try:
            self.docker.remove(warm.cid)
        except EngineUnavailable as exc:  # it ends by itself: its stdin is closed
            log.warning("warm container %s stays until its engine answers (%s)", warm.cid[:12],
                        exc)  # fmt: skip
        shutil.rmtree(warm.folder, ignore_errors=True)

    def _argv(self, req: ContainerRequest) -> tuple[list[str], str]:
        """What Docker would run for ``req`` in a container of its own: the image's
        entrypoint, then the command (or the image's CMD); and the image's working dir."""
        if req.image not in self._images:
            with self.health.call():
                config = self.api.inspect_image(req.image).get("Config") or {}
            self._images[req.image] = (
                list(config.get("Entrypoint") or []),
                list(config.get("Cmd") or []),
                str(config.get("WorkingDir") or ""),
            )
        entrypoint, cmd, workdir = self._images[req.image]
        argv = entrypoint + (list(req.command) if req.command is not None else cmd)
        if not argv:
            raise StartFailed(f"image {req.image!r} has no command and the job gave none")
        return argv, workdir

    # -- moving an item's folders in and out -------------------------------------------------

    def _move_in(self, item: _Item) -> None:
        warm = item.warm
        home_in, home_out = item.sources[staging.IN], item.sources[staging.OUT]
        with _writable(home_in), _writable(warm.inputs):
            for entry in os.listdir(home_in):
                dest = warm.inputs / entry
                os.rename(home_in / entry, dest)
                item.moved.append((dest, home_in / entry))
        st = os.stat(home_out)
        os.chmod(warm.outputs, stat.S_IMODE(st.st_mode))
        if os.geteuid() == 0:
            os.chown(warm.outputs, st.st_uid, st.st_gid)
        os.chmod(warm.params, 0o644)
        shutil.copyfile(item.sources[staging.PARAMS], warm.params)  # in place: the mount holds it
        os.chmod(warm.params, 0o444)

    def _move_out(self, item: _Item) -> None:
        """Every entry back to the item's workspace; a warm folder that cannot be emptied
        marks its container for replacement."""
        warm = item.warm
        home_in, home_out = item.sources[staging.IN], item.sources[staging.OUT]
        with _writable(home_in), _writable(warm.inputs):
            for src, dest in item.moved:
                with contextlib.suppress(OSError):
                    os.rename(src, dest)
        item.moved.clear()
        for entry in _listdir(warm.outputs):
            try:
                os.rename(warm.outputs / entry, home_out / entry)
            except OSError as exc:  # not ours to move (a non-root worker): copy what it can
                log.warning("item output %s not moved (%s); copied", entry, exc)
                warm.dirty = True
                with contextlib.suppress(OSError):
                    shutil.move(str(warm.outputs / entry), str(home_out / entry))
        if _listdir(warm.inputs) or _listdir(warm.outputs):
            warm.dirty = True

    # -- running an item -----------------------------------------------------------------------

    def _run(self, item: _Item, exec_id: str, stream: Any, sink: LogSink, began: float) -> None:
        warm = item.warm
        lost = ""
        try:
            try:
                for out, err in stream:
                    if out:
                        sink("out", out)
                    if err:
                        sink("err", err)
            except requests.RequestException as exc:  # killed with its container, or the engine
                log.debug("item stream ended: %s", exc)
            code, lost = self._exit_code(item, exec_id)
            oom = False
            if not item.killed and not lost:
                oom = self._oom(warm, began, code)
                container_exit = self.docker.wait(warm.cid, 0)
                if container_exit is not None:  # it ended under the item
                    warm.dirty = True
                    oom = oom or container_exit.oom_killed
                    if not oom and not container_exit.engine_lost:
                        lost = "its warm container ended while it ran"
                    lost = lost or container_exit.engine_lost
                elif oom:
                    warm.dirty = True
                else:
                    self._check_alone(warm)
            item.exit = Exit(code, oom, "" if oom else lost)
        except EngineUnavailable as exc:
            warm.dirty = True
            item.exit = Exit(-1, False, f"its engine stopped answering while it ran ({exc})")
        except BaseException as exc:
            warm.dirty = True
            item.error = exc
        finally:
            try:
                self._move_out(item)
            except BaseException as exc:
                warm.dirty = True
                item.error = item.error or exc
            item.exited.set()

    def _exit_code(self, item: _Item, exec_id: str) -> tuple[int, str]:
        """The exec's exit code once it ended (its output may close before it does)."""
        while True:
            try:
                with self.health.call():
                    info = self.api.exec_inspect(exec_id)
            except NotFound:  # its container was removed with it
                return 137, "" if item.killed else "its warm container was removed while it ran"
            if not info.get("Running"):
                code = info.get("ExitCode")
                return (137 if code is None else int(code)), ""
            if item.killed and self.docker.wait(item.warm.cid, 0) is not None:
                return 137, ""
            time.sleep(0.05)

    def _oom(self, warm: _Warm, began: float, code: int) -> bool:
        """Whether the engine saw an OOM kill in the container since the item began (any kill
        in it is this item's: after one, the container is replaced)."""
        grace = OOM_GRACE if code == 137 else 0.0  # an OOM's event may follow the exit a little
        until = time.time() + grace
        params = {
            "since": str(int(began) - 1),
            "until": f"{int(until)}.{int(until % 1 * 1e9):09d}",
            "filters": json.dumps({"container": [warm.cid], "event": ["oom"]}),
        }
        with self.health.call():
            reply = self.api.get(
                self.api._url("/events"), params=params, timeout=self.health.timeout + grace
            )
            reply.raise_for_status()
        return any(line.strip() for line in reply.text.splitlines())

    def _check_alone(self, warm: _Warm) -> None:
        """Mark the container for replacement when a process of the item outlived it."""
        with self.health.call():
            processes = self.api.top(warm.cid).get("Processes") or []
        if len(processes) > 2:  # Docker's init and the idle program
            log.info("an item left %d processes behind; its container is replaced",
                     len(processes) - 2)  # fmt: skip
            warm.dirty = True


@contextlib.contextmanager
def _writable(folder: Path) -> Any:
    """``folder`` writable by its owner for a while (in/ folders are 0555)."""
    mode = stat.S_IMODE(os.stat(folder).st_mode)
    if mode & stat.S_IWUSR:
        yield
        return
    os.chmod(folder, mode | stat.S_IWUSR)
    try:
        yield
    finally:
        os.chmod(folder, mode)


def _listdir(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _close_socket(sock: Any) -> None:
    raw = getattr(sock, "_sock", sock)
    with contextlib.suppress(Exception):
        raw.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        raw.close()
