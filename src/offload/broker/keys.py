"""The Redis key schema — every key offload writes, in one place.

Job records (written by the producer at submit, then by the worker; read by everyone)::

    offload:job:<id>             HASH   the job record
        id            job id (uuid4 hex)
        spec          JobSpec wire form (JSON), secrets included — the worker runs from this
        view          redacted spec (JSON) — what UIs and `offload status` show
        name          display name (spec.name or the image)
        image         image reference
        class         resource class / queue name
        status        JobStatus value
        created_at    unix time, float, of submit
        updated_at    unix time of the last transition
        started_at    unix time the container started (current attempt)
        finished_at   unix time the job reached a terminal status
        node          node name of the current / last attempt
        attempt       attempt number, 0 while queued, 1.. once a worker took it
        container     container id of the current attempt
        exit_code     container exit code (int) when it exited
        reason        machine-readable failure reason (JobStatus docs list them)
        message       human-readable detail for the reason
        outputs       JSON object {relative path: "sha256:<hex>"}
        timings       JSON object of seconds spent {staging, running, uploading}
        cancel        "1" once cancellation of a started job was asked for
        cache_hit     id of the earlier job whose outputs this one reused (memoized)
    offload:job:<id>:events      STREAM the status timeline; one entry per transition:
                                        status, at, node, attempt[, reason]
                                 readers block on it (XREAD) to wait for a result
    offload:logs:<id>            STREAM the container's output, capped (MAXLEN ~ log_max_entries):
                                        s=out|err, l=<line>  — a line of output
                                        a=<attempt>          — an attempt begins
                                        eof=<status>         — the job reached a terminal status
    offload:jobs                 ZSET   every job id, scored by created_at (for `offload ls`)
    offload:autoscaler:<class>   HASH   the autoscaler's last word on a class, rewritten each tick
                                        and expiring after 60 s (absent: no autoscaler runs):
                                        desired, up, starting, draining, work, reason, at
                                        (:mod:`offload.autoscaler.loop`)
    offload:nodes, offload:node:<name>[:running|:owners|:recovering]
                                        the node registry (:mod:`.nodes`)
    offload:memo:<key>           STRING the action cache (:mod:`offload.cache.actions`): JSON
                                        {outputs, job_id} of the successful job whose image
                                        digest, command, params, env and inputs hash to <key>

Terminal jobs' keys expire after ``Settings.record_ttl`` seconds; ``offload:jobs`` is
pruned lazily by readers. Celery owns the queue keys (one list per resource class, named
after the class, plus kombu's ``unacked`` bookkeeping); offload never writes them directly.
"""

from __future__ import annotations

PREFIX = "offload"
JOBS_INDEX = f"{PREFIX}:jobs"


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def events(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:events"


def logs(job_id: str) -> str:
    return f"{PREFIX}:logs:{job_id}"
