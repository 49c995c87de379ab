"""Data in and out of a job's container: a per-attempt folder on the node.

``<work>/<job>-<attempt>/in/<name>``  inputs, read-only, mounted at ``/offload/in``
``<work>/<job>-<attempt>/out/``       mounted writable at ``/offload/out``
``<work>/<job>-<attempt>/params.json`` mounted read-only at ``/offload/params.json``

Everything there is plaintext: ``<work>`` and each attempt's folder are mode 0700 (only the
worker's user; the container reaches its three mounts, never the folder above them). An
attempt's folder is removed when the attempt ends, a dead attempt's by the node's reaper, and
whatever a killed worker left by :func:`clear` when the node starts again.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from offload.cache.store import Store
from offload.errors import ObjectNotFound
from offload.spec import MAX_ENV_PARAM, JobSpec, param_text
from offload.worker.runtime import Mount

IN, OUT, PARAMS = "/offload/in", "/offload/out", "/offload/params.json"


class InputMissing(Exception):
    """An input id is not in the store."""


class OutputRejected(Exception):
    """The job left something in /offload/out that is not a regular file inside it."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def inputs(self) -> Path:
        return self.root / "in"

    @property
    def outputs(self) -> Path:
        return self.root / "out"

    @property
    def params(self) -> Path:
        return self.root / "params.json"

    def mounts(self) -> tuple[Mount, ...]:
        return (
            Mount(self.inputs, IN, read_only=True),
            Mount(self.outputs, OUT, read_only=False),
            Mount(self.params, PARAMS, read_only=True),
        )

    def remove(self) -> None:
        _make_removable(self.root)  # in/ is 0555: a worker not running as root needs u+w
        shutil.rmtree(self.root, ignore_errors=True)


def prepare(
    work_dir: Path,
    job_id: str,
    attempt: int,
    spec: JobSpec,
    store: Store,
    uid: int | None,
    fetched: Mapping[str, Path] | None = None,
    folders: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> Workspace:
    """Create the attempt's folder, copy inputs out of the store (or move in the ones just
    fetched for it: ``fetched``, by input name), write the params file. ``folders``: inputs
    staged as a folder of objects, (file name, content id) each (an array's outputs:
    :mod:`offload.worker.fanin`)."""
    ws = Workspace(work_dir / f"{job_id}-{attempt}")
    private_dir(work_dir)
    if ws.root.exists():
        ws.remove()
    ws.root.mkdir(mode=0o700)
    ws.inputs.mkdir()
    ws.outputs.mkdir()
    for name, oid in spec.inputs.items():
        dest = ws.inputs / name
        if folders and name in folders:
            dest.mkdir()
            for file, each in folders[name]:
                try:
                    store.export(each, dest / file)
                except ObjectNotFound:
                    why = f"input {name!r}: {file} ({each}) is not in the store"
                    raise InputMissing(why) from None
                os.chmod(dest / file, 0o444)
            os.chmod(dest, 0o555)
            continue
        if fetched and name in fetched:
            os.replace(fetched[name], dest)
            os.chmod(dest, 0o444)
            continue
        try:
            store.export(oid, dest)
        except ObjectNotFound:
            raise InputMissing(f"input {name!r} ({oid}) is not in the store") from None
        os.chmod(dest, 0o444)
    ws.params.write_text(json.dumps(spec.params, sort_keys=True))
    os.chmod(ws.params, 0o444)
    os.chmod(ws.inputs, 0o555)
    if uid is not None and os.geteuid() == 0:
        os.chown(ws.outputs, uid, uid)
        os.chmod(ws.outputs, 0o755)
    else:
        os.chmod(ws.outputs, 0o777)
    os.chmod(ws.root, 0o700)
    return ws


def private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) a folder only its owner can enter: mode 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def clear(work_dir: Path) -> list[str]:
    """Remove every attempt folder under ``work_dir`` (a node starting: none is live).

    Returns the names removed. ``work_dir`` itself is left, empty and 0700.
    """
    private_dir(work_dir)
    removed = []
    for entry in work_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            Workspace(entry).remove()
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


def _make_removable(root: Path) -> None:
    """Let the owner remove ``root``'s files: in/ (ours, mounted read-only) is 0555.

    Only in/ is touched: a folder under out/ is the job's, and may be swapped for a link.
    """
    inputs = root / "in"
    try:
        if stat.S_ISDIR(os.lstat(inputs).st_mode):
            os.chmod(inputs, 0o700)
    except OSError:
        pass


def job_env(job_id: str, spec: JobSpec) -> dict[str, str]:
    """The container's environment: the spec's env, params as OFFLOAD_PARAM_<NAME>, the job id.

    A parameter larger than MAX_ENV_PARAM is left out of the environment (it would push the
    container's exec over the kernel's limits): the job reads it from /offload/params.json.
    """
    env = dict(spec.env)
    for key, value in spec.params.items():
        text = param_text(value)
        if len(text.encode()) <= MAX_ENV_PARAM:
            env[f"OFFLOAD_PARAM_{key.upper()}"] = text
    env["OFFLOAD_JOB_ID"] = job_id
    if spec.task is not None:
        env["OFFLOAD_TASK_INDEX"], env["OFFLOAD_TASK_COUNT"] = map(str, spec.task)
    return env


def collect(ws: Workspace, store: Store) -> dict[str, str]:
    """Store every regular file under out/; refuse symlinks, special files and escapes."""
    root = ws.outputs
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in dirnames + filenames:
            path = base / name
            rel = path.relative_to(root).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise OutputRejected(
                    f"output {rel!r} is a symbolic link (to {os.readlink(path)!r}); "
                    "only regular files under /offload/out are collected"
                )
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise OutputRejected(f"output {rel!r} is not a regular file")
            resolved = path.resolve()
            if not resolved.is_relative_to(root.resolve()):
                raise OutputRejected(f"output {rel!r} resolves outside /offload/out")
            found.append((rel, path))
    outputs: dict[str, str] = {}
    for rel, path in sorted(found):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            outputs[rel] = store.put_stream(f)
    return outputs
