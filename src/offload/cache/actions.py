"""The action cache: a successful job's outputs, remembered by everything that defines it.

The key is the sha256 of a canonical JSON of the image digest (not its tag), command,
parameters, environment and input ids. Entries live in Redis (``offload:memo:<key>``, see
:mod:`offload.broker.keys`) so every node shares them; they hold only output ids, so a hit
is used only after checking the outputs can still be fetched.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis

from offload.broker import keys
from offload.spec import JobSpec


def action_key(spec: JobSpec, image_digest: str) -> str:
    material = {
        "v": 1,
        "image": image_digest,
        "command": list(spec.command) if spec.command is not None else None,
        "params": spec.params,
        "env": spec.env,
        "inputs": spec.inputs,
        "network": spec.network,
        "task": list(spec.task) if spec.task is not None else None,  # OFFLOAD_TASK_* env
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Memo:
    key: str
    outputs: dict[str, str]
    job_id: str
    sig: str = ""  # by the worker that wrote it (offload.cache.jobseal.sign_memo)


class ActionCache:
    """The memo entries in Redis; each expires ``ttl`` seconds after it was written."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.r = client
        self.ttl = ttl

    def get(self, key: str) -> Memo | None:
        raw: Any = self.r.get(keys.memo(key))
        if not raw:
            return None
        data = json.loads(raw)
        return Memo(key, dict(data["outputs"]), str(data["job_id"]), str(data.get("sig", "")))

    def put(self, key: str, outputs: dict[str, str], job_id: str, sig: str = "") -> None:
        value = json.dumps({"outputs": outputs, "job_id": job_id, "sig": sig})
        self.r.set(keys.memo(key), value, ex=self.ttl)

    def drop(self, key: str) -> None:
        self.r.delete(keys.memo(key))
