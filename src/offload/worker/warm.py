"""Warm containers: the items of a batch run one after another in one long-lived container.

:class:`WarmRuntime` is a :class:`~offload.worker.runtime.Runtime`: an attempt that runs on a
node whose runtime is one (``dataclasses.replace(node, runtime=warm)``) goes through its
ordinary steps — stage, create, start, wait (timeout, cancel), finish, remove — and each of
its items sees exactly what an unbatched job sees. The image and the command are unchanged:

* **The container.** Made by :meth:`DockerRuntime.create` from the first item's request, so
  with the same limits and sandbox (CPU, memory = memory+swap, pids, user, read-only root,
  ``/tmp`` tmpfs, network, capabilities dropped, no-new-privileges, labels), its entrypoint
  replaced by offload's agent (``warm_agent.c``: a static 2 KB x86-64 binary without libc,
  written by the worker and mounted read-only, since images are arbitrary). The agent is the
  container's init (PID 1, reaping orphans, as Docker's init is for a job) and reads the
  items to run on its stdin, which the worker holds (``StdinOnce``): when the worker process
  dies, however it dies, the agent reads end of file and the container ends by itself.
* **Its mounts** are those of a job: ``<warm>/in`` read-only at ``/offload/in``, ``<warm>/out``
  writable at ``/offload/out``, ``<warm>/params.json`` read-only at ``/offload/params.json``.
  A bind mount holds the folder it was given, so per item the worker renames the item's input
  entries into ``<warm>/in`` (same filesystem: its work folder), writes its ``params.json``
  in place and gives ``<warm>/out`` the owner and mode of the item's own ``out/``; when the
  item ends, every entry goes back to the item's workspace, where the attempt's finish step
  collects the outputs as for any job. Nothing of one item is left for the next.
* **Each item** is one request to the agent: the image's entrypoint and the item's command
  (or the image's ``CMD``), looked up on ``PATH`` as Docker does, with the item's environment
  (params, ``OFFLOAD_TASK_INDEX``, its job id, ``env``) over the container's, stdin
  ``/dev/null``, the image's working dir and the container's user. Its stdout and stderr are
  the container's: the worker's attach stream gives them to the item's log sink until the
  agent's end marks (a random token per item) on both streams. Its exit code is its own (128
  + N when signal N ended it, as Docker's init reports; 127 when its program cannot be run,
  where a job's container would fail to start). When it ends, the agent kills whatever it
  left running: no process of an item outlives it.
* **OOM.** An item killed for memory is told by its cgroup's ``oom_kill`` counter (cgroup
  v1 ``memory.oom_control``, v2 ``memory.events``), read before and after it where the worker
  sees the engine's cgroups, else by the engine's ``oom`` event of the container (one bounded
  read of the engine's event log per item). The container's ``OOMKilled`` state will not do:
  the engine sets it only when the container's init dies. After an OOM the container is
  replaced: its cgroup and its ``/tmp`` (charged to that cgroup) start clean.
* **Kill** (timeout, cancel, a lost lease) kills the whole container, as for a plain job; the
  next item gets a new one. So does an item whose container ended under it (then the
  platform's loss: ``engine_lost``, no retry spent) or whose request asks for other limits
  than the container has.

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
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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
from offload.worker.warm_agent import AGENT_X86_64

log = logging.getLogger(__name__)

LABEL_WARM = "offload.warm"
AGENT = "/.offload-agent"  # where the agent is mounted in a warm container
OOM_GRACE = 1.0  # seconds the engine's event log is read past a SIGKILLed item's end
MAX_REQUEST = 4 << 20  # the agent's request buffer (argv and environment of one item)
MAX_STRINGS = 65536  # argv or environment entries the agent takes
RS = b"\x1e"  # starts and ends the agent's end marks


def agent_program(machine: str | None = None) -> bytes:
    """The agent for this node's CPU (x86-64 only, for now)."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64"):
        raise StartFailed(f"warm containers need an x86-64 node (the agent's), not {machine}")
    return AGENT_X86_64


def agent_request(token: str, argv: list[str], env: dict[str, str]) -> bytes:
    """One item for the agent: ``<length, 10 digits><token argc argv... envc K=V...>``, NUL
    separated."""
    parts = [token, str(len(argv)), *argv, str(len(env)), *(f"{k}={v}" for k, v in env.items())]
    body = b"\0".join(p.encode() for p in parts) + b"\0"
    if any("\0" in p for p in parts):
        raise StartFailed("an argument or environment value holds a NUL byte")
    if len(body) > MAX_REQUEST or len(argv) > MAX_STRINGS or len(env) > MAX_STRINGS:
        raise StartFailed("the item's command and environment are too large to batch")
    return b"%010d" % len(body) + body


@dataclass(frozen=True)
class Batch:
    """Who the warm container belongs to: a job id and attempt whose record is active on this
    node while the batch runs (the reaper removes the container once it is not)."""

    job_id: str
    attempt: int


@dataclass
class _Item:
    req: ContainerRequest
    warm: _Warm
    sources: dict[str, Path]  # mount target -> the item's own path
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    sink: LogSink | None = None
    began: float = 0.0
    oom_kills: int | None = None  # the cgroup's OOM kill count as it began (None: unreadable)
    status: int | None = None  # its exit code, from the agent's end mark on stdout
    ended: dict[str, bool] = field(default_factory=lambda: {"out": False, "err": False})
    done: threading.Event = field(default_factory=threading.Event)  # both end marks seen
    exit: Exit | None = None
    moved: list[tuple[Path, Path]] = field(default_factory=list)  # (in the warm folder, home)
    started: bool = False
    killed: bool = False


@dataclass
class _Warm:
    """One warm container, its folder, and the item it runs."""

    cid: str
    folder: Path
    key: tuple[Any, ...]
    stdin: Any  # the attached socket holding its stdin open
    dirty: bool = False  # replaced before the next item runs
    oom_file: Path | None = None  # its cgroup's OOM kill counter, where this host shows it
    current: _Item | None = None
    pending: dict[str, bytes] = field(default_factory=lambda: {"out": b"", "err": b""})
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def inputs(self) -> Path:
        return self.folder / "in"

    @property
    def outputs(self) -> Path:
        return self.folder / "out"

    @property
    def params(self) -> Path:
        return self.folder / "params.json"

    def output(self, stream: str, data: bytes) -> None:
        """The container's output: the current item's, up to its end mark on this stream."""
        with self.lock:
            item = self.current
            buf = self.pending[stream] + data
            self.pending[stream] = b""
            while buf:
                if item is None or item.ended[stream]:
                    if buf.strip():
                        log.debug("warm %s: output outside an item dropped", self.cid[:12])
                    return
                mark = RS + item.token.encode() + (b":" if stream == "out" else RS)
                i = buf.find(RS)
                if i < 0:
                    self._emit(item, stream, buf)
                    return
                self._emit(item, stream, buf[:i])
                buf = buf[i:]
                if len(buf) < len(mark):
                    if mark.startswith(buf):
                        self.pending[stream] = buf  # perhaps a mark, cut by the stream
                        return
                elif buf.startswith(mark):
                    if stream == "err":
                        self._ended(item, stream)
                        buf = buf[len(mark) :]
                        continue
                    j = buf.find(RS, len(mark))
                    if j < 0 and len(buf) < len(mark) + 8:
                        self.pending[stream] = buf
                        return
                    digits = buf[len(mark) : j if j >= 0 else len(mark)]
                    if j >= 0 and digits.isdigit():
                        item.status = int(digits)
                        self._ended(item, stream)
                        buf = buf[j + 1 :]
                        continue
                self._emit(item, stream, buf[:1])  # an RS of the item's own
                buf = buf[1:]

    @staticmethod
    def _emit(item: _Item, stream: str, data: bytes) -> None:
        if data and item.sink is not None:
            item.sink(stream, data)

    @staticmethod
    def _ended(item: _Item, stream: str) -> None:
        item.ended[stream] = True
        if all(item.ended.values()):
            item.done.set()


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
        self._images: dict[str, tuple[list[str], list[str]]] = {}
        self._digests: dict[str, str] = {}

    def __enter__(self) -> WarmRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the worker's other paths use, unchanged -------------------------------------

    def responsive(self) -> bool:
        return self.docker.responsive()

    def ensure_image(self, image: str) -> str:
        """The image's id, asked of the engine once per batch (2-3 ms an item otherwise): the
        batch's items share it, and its warm container already runs it."""
        if image not in self._digests:
            self._digests[image] = self.docker.ensure_image(image)
        return self._digests[image]

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
        request = agent_request(item.token, self._argv(req), req.env)
        self._move_in(item)
        item.sink, item.began, item.started = sink, time.time(), True
        item.oom_kills = _oom_kills(warm.oom_file)
        with warm.lock:
            warm.current = item
            warm.pending = {"out": b"", "err": b""}
        try:
            getattr(warm.stdin, "_sock", warm.stdin).sendall(request)
        except OSError as exc:  # the container (or its engine) went away meanwhile
            warm.dirty = True
            self._move_out(item)
            item.exit = Exit(-1, False, f"its warm container went away as it started ({exc})")
            item.done.set()

    def wait(self, container: str, timeout: float) -> Exit | None:
        item = self.items[container]
        deadline = time.monotonic() + timeout
        while item.exit is None:
            left = deadline - time.monotonic()
            if item.done.wait(max(0.0, min(0.05, left))):
                break
            if self.docker.wait(item.warm.cid, 0) is not None:  # it ended under the item
                break
            if left <= 0:
                return None
        if item.exit is None:
            item.exit = self._ending(item)
        return item.exit

    def kill(self, container: str) -> None:
        item = self.items.get(container)
        if item is None:
            return
        item.killed = True
        item.warm.dirty = True  # an item cannot be killed alone: the container goes
        self.docker.kill(item.warm.cid)

    def finish_logs(self, container: str, timeout: float) -> None:
        """Nothing to wait for: an item's output comes before its end marks."""

    def remove(self, container: str) -> None:
        """The item is done with: its files are back in its workspace; the container stays
        for the next item (killed first if the item still runs)."""
        item = self.items.pop(container, None)
        if item is None:
            return
        if item.started and item.exit is None:
            self.items[container] = item
            try:
                if not item.done.is_set():
                    self.kill(container)
                self.wait(container, 5)
            finally:
                del self.items[container]
        if item.moved:
            self._move_out(item)
        with item.warm.lock:
            if item.warm.current is item:
                item.warm.current = None

    def close(self) -> None:
        """Remove the warm container and its folder (the batch is over)."""
        if self.warm is not None:
            self._discard(self.warm)
            self.warm = None
        shutil.rmtree(self.root, ignore_errors=True)

    # -- how an item ended -----------------------------------------------------------------

    def _ending(self, item: _Item) -> Exit:
        warm = item.warm
        try:
            if item.done.is_set() and item.status is not None:
                code, oom, lost = item.status, False, ""
                if not item.killed:
                    oom = self._oom(item, code)
            else:  # the container ended before the item told its end
                warm.dirty = True
                ended = self.docker.wait(warm.cid, 5)
                code = 137 if item.killed or ended is None else ended.code
                oom = bool(ended and ended.oom_killed)
                if not item.killed:
                    oom = oom or self._oom(item, 137)
                lost = ""
                if not item.killed and not oom:
                    lost = (ended.engine_lost if ended else "") or "its warm container ended"
            if oom:
                warm.dirty = True
            return Exit(code, oom, lost)
        except EngineUnavailable as exc:
            warm.dirty = True
            return Exit(-1, False, f"its engine stopped answering while it ran ({exc})")
        finally:
            self._move_out(item)
            with warm.lock:
                if warm.current is item:
                    warm.current = None

    def _oom(self, item: _Item, code: int) -> bool:
        """Whether the kernel killed a process of the container for memory since the item
        began: its cgroup's ``oom_kill`` counter where the worker sees the engine's cgroups
        (exact, a file read), else the engine's ``oom`` events (any in the container is this
        item's: after one, the container is replaced)."""
        warm, began = item.warm, item.began
        if item.oom_kills is not None:
            now = _oom_kills(warm.oom_file)
            if now is not None:
                return now > item.oom_kills
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
        agent = self.root / "agent"
        if not agent.exists():
            agent.write_bytes(agent_program())
            os.chmod(agent, 0o555)
        self.started += 1
        folder = self.root / f"c{self.started}"
        folder.mkdir(mode=0o755)
        (folder / "in").mkdir(mode=0o555)
        (folder / "out").mkdir()
        os.chmod(folder / "out", 0o777)
        (folder / "params.json").write_text("{}")
        os.chmod(folder / "params.json", 0o444)
        mounts = (
            Mount(folder / "in", staging.IN, read_only=True),
            Mount(folder / "out", staging.OUT, read_only=False),
            Mount(folder / "params.json", staging.PARAMS, read_only=True),
            Mount(agent, AGENT, read_only=True),
        )
        container = replace(
            req,
            job_id=self.batch.job_id,
            attempt=self.batch.attempt,
            command=(),
            entrypoint=(AGENT,),
            env={},
            mounts=mounts,
            labels={**req.labels, LABEL_WARM: "1"},
            init=False,  # the agent is the container's init
            stdin=True,
            name=f"offload-{self.batch.job_id}-{self.batch.attempt}-warm{self.started}",
        )
        cid = self.docker.create(container)
        warm = _Warm(cid, folder, self._key(req), None)
        try:
            with self.health.call():
                warm.stdin = self.api.attach_socket(cid, params={"stdin": 1, "stream": 1})
            self.docker.start(cid, warm.output)
        except BaseException:
            _close_socket(warm.stdin)
            self.docker.remove(cid)
            raise
        warm.oom_file = _oom_file(cid)
        return warm

    def _discard(self, warm: _Warm) -> None:
        _close_socket(warm.stdin)
        try:
            self.docker.remove(warm.cid)
        except EngineUnavailable as exc:  # it ends by itself: its stdin is closed
            log.warning("warm container %s stays until its engine answers (%s)", warm.cid[:12],
                        exc)  # fmt: skip
        shutil.rmtree(warm.folder, ignore_errors=True)

    def _argv(self, req: ContainerRequest) -> list[str]:
        """What Docker would run for ``req`` in a container of its own: the image's
        entrypoint, then the command (or the image's CMD)."""
        if req.image not in self._images:
            with self.health.call():
                config = self.api.inspect_image(req.image).get("Config") or {}
            self._images[req.image] = (
                list(config.get("Entrypoint") or []),
                list(config.get("Cmd") or []),
            )
        entrypoint, cmd = self._images[req.image]
        argv = entrypoint + (list(req.command) if req.command is not None else cmd)
        if not argv:
            raise StartFailed(f"image {req.image!r} has no command and the job gave none")
        return argv

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


def _oom_file(cid: str) -> Path | None:
    """The file counting the container's OOM kills, if this host shows the engine's cgroups
    (cgroup v1: ``memory.oom_control``; v2: ``memory.events``; cgroupfs or systemd driver)."""
    for path in (
        f"/sys/fs/cgroup/memory/docker/{cid}/memory.oom_control",
        f"/sys/fs/cgroup/memory/system.slice/docker-{cid}.scope/memory.oom_control",
        f"/sys/fs/cgroup/docker/{cid}/memory.events",
        f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.events",
    ):
        if _oom_kills(Path(path)) is not None:
            return Path(path)
    return None


def _oom_kills(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def _listdir(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _close_socket(sock: Any) -> None:
    if sock is None:
        return
    raw = getattr(sock, "_sock", sock)
    with contextlib.suppress(Exception):
        raw.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        raw.close()
