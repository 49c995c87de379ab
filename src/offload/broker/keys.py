"""The Redis key schema — every key offload writes, in one place.

Every key is built by a function of this module; nothing else spells ``offload:`` keys.
Each entry says who writes it and when it goes away (its TTL, or why it has none).

Job records (written by the producer at submit, then by the worker; read by everyone)::

    offload:job:<id>             HASH   the job record
        id            job id (uuid4 hex; an array's item: its array's id and its index,
                      :mod:`offload.spec.arrays`)
        spec          JobSpec wire form (JSON), secrets included — the worker runs from this
        view          redacted spec (JSON) — what UIs and `offload status` show
        name          display name (spec.name or the image)
        image         image reference
        class         resource class / queue name
        status        JobStatus value (transitions: :mod:`offload.broker.status`)
        created_at    unix time, float, of submit
        updated_at    unix time of the last transition
        started_at    unix time the container started (current attempt)
        finished_at   unix time the job reached a terminal status
        node          node name of the current / last attempt
        attempt       attempt number, 0 while queued, 1.. once a worker took it; the fencing
                      token: a write of an attempt that is no longer current is refused
        pid           pool process of the current attempt on its node
        container     container id of the current attempt
        exit_code     container exit code (int) when it exited
        reason        machine-readable failure reason (:class:`~offload.broker.status.Reason`)
        message       human-readable detail for the reason
        outputs       JSON object {relative path: "sha256:<hex>"}
        timings       JSON object of seconds spent {staging, running, uploading}
        cancel        "1" once cancellation of a started job was asked for
        cache_hit     id of the earlier job whose outputs this one reused (memoized)
        gpus          comma list of the GPU UUIDs the current attempt was given
        retry_at      Redis time a delayed retry of this queued job is due
        wait          what a ``waiting`` job waits for besides its parents (empty: its
                      parents): ``limit:<label>=<value>``, ``held:<class>``, ``memo:<job id>``
        log_bytes     bytes of output in the log stream, all attempts (:mod:`offload.broker.logs`);
                      above ``log_max_bytes`` once truncated: an ``s=sys`` marker line ends it
        routed_to     the node whose queue the job's last publication went to (empty: its
                      class queue); written by :func:`offload.broker.publish.publish`
        route_why     why it went there, for people: ``holds 240 MiB of 256 MiB inputs``,
                      ``no live node holds its inputs``, ``node X did not start it within 10 s``
    offload:job:<id>:events      STREAM the status timeline; one entry per transition:
                                        status, at, node, attempt[, reason]
                                 readers block on it (XREAD) to wait for a result
    offload:logs:<id>            STREAM the container's output, capped (MAXLEN ~ log_max_entries):
                                        s=out|err, l=<line>  — a line of output
                                        a=<attempt>          — an attempt begins
                                        eof=<status>         — the job reached a terminal status
    offload:jobs                 ZSET   every job id, scored by created_at (for `offload ls`),
                                        archived ones too; an array is one member, its id,
                                        for all its items (:mod:`offload.broker.listing`);
                                        no TTL (one index): members leave with their archive
                                        segment (pruned after ``record_ttl``), or lazily by
                                        readers of ids (or arrays) whose record expired

Dependencies (:mod:`offload.broker.pipeline`; written at submit, read until the job ends)::

    offload:job:<id>:parents     SET    every job this one waits for (its output references and
                                        ``after``); kept for views, expires with the record
    offload:job:<id>:waiting     SET    the parents not finished yet; the job is released (queued)
                                        when it empties
    offload:job:<id>:children    SET    the jobs that depend on this one (kept for views once it
                                        ended), and identical jobs waiting for its outputs
                                        (their ``wait`` = ``memo:<id>``). ``<id>`` may be an
                                        array's (24 hex digits): the jobs with an input over
                                        every item (``array.output``), which are also in
                                        their parents and waiting sets by the array's id;
                                        TTL ``record_ttl``
    offload:waiting              ZSET   every ``waiting`` job -> when it began waiting; the
                                        sweeper checks the old ones (a release a crash missed).
                                        Members leave with the move out of ``waiting``

Terminal jobs' keys (record, events, logs, parents, waiting, children) leave Redis for the
archive ``Settings.archive_after`` seconds after the end (below); as a safety net for a
cluster whose archiver never runs they also expire after ``Settings.record_ttl`` seconds. A
non-terminal job's keys have no TTL: the job is still owed an outcome.

Arrays (:mod:`offload.broker.arrays`; written by the producer's ``map``, read by everyone)::

    offload:array:<id>           HASH   id, count (items), name, image, created_at, batch, class,
                                        spec (the common spec, sealed and signed); its items
                                        are the jobs ``<id><index as 8 hex digits>``
                                        (:mod:`offload.spec.arrays`): nothing is stored per
                                        item to find them. Written with the items' records,
                                        all or none; TTL ``record_ttl`` from its creation
                                        (about 200 bytes an array, whatever its size)
    offload:array:<id>:feed      HASH   fed (items whose records exist: 0..fed-1), cancelled;
                                        the feeder WATCHes it (:mod:`offload.broker.feeder`)
    offload:array:<id>:feeding   STRING the feeder at work on it (a token; PX 30 s): one at a time
    offload:array:<id>:t:<n>     STRING items n*1000.. of the array's item table: each one's
                                        class, own fields over the common spec and their
                                        MAC, JSON, zlib (about 26 bytes an item);
                                        deleted once every item of it is fed
    offload:array:<id>:live      SET    fed items not ended (at most the feed window); the
                                        transition script removes an item as it ends
    offload:array:<id>:bad       ZSET   item index -> id of the items ended not succeeded
    offload:arrays:feeding       ZSET   array id -> when made: arrays with items still to feed
                                        (or ``pending``: being written)
        An array's keys all expire with its record (``record_ttl``); the transition script
        counts each item's end in its array's record (``n:<status>``), so an array's status
        is read in O(window), not O(items).
    offload:chunk:<chunk id>     STRING ``<node>:<run>``: the worker running a chunk of a
                                        batched array (:mod:`offload.broker.chunks`); its
                                        lease, PX ``lease_ttl``, renewed while it runs and
                                        deleted when it ends (one per running chunk)

The archive (:mod:`offload.broker.archive`; written by the sweeper, read by everyone)::

    offload:ended                ZSET   job id -> when it ended (Redis time; an array's item:
                                        that less ``archive_after - archive_items_after``,
                                        so it is archived sooner); added by the transition
                                        script at the move to a terminal status, removed
                                        when the job is archived (or found expired).
                                        Bound: the jobs ended in the last ``archive_after``
                                        seconds plus the archiver's backlog; no TTL
    offload:archive:where        HASH   archived job id -> its segment number: how an id finds
                                        its segment. Bound: one field per archived job (about
                                        100 bytes), removed when its segment is pruned after
                                        ``record_ttl``; no TTL. Not for an array's items:
    offload:archive:array:<id>   STRING an array's archived items' segment numbers, 8 hex
                                        digits at 8 x the item's index (8 bytes an item);
                                        TTL ``record_ttl`` + 1 day from its last archived item
    offload:archive:segments     HASH   segment number -> the content id of its sealed blob;
                                        removed when pruned. Bound: jobs / ``archive_batch``
    offload:archive:times        ZSET   segment number -> when it was archived (Redis time; what
                                        pruning after ``record_ttl`` goes by); same bound
    offload:archive:seq          STRING the last segment number given (INCR); no TTL (one key)

An archived job keeps its member of ``offload:jobs`` too (``ls`` pages through it); an
array's archived item has none (its array's member stands for it).

The node registry (:mod:`offload.broker.nodes`; written by each worker's heartbeat)::

    offload:nodes                   SET    names of registered nodes; no TTL (one set),
                                           pruned by readers of names whose hash is gone
    offload:node:<name>             HASH   name, provider, classes (comma list), slots, cpus,
                                           memory (allocatable: less the reserve), gpus, machine
                                           (whose room it shares), started_at, heartbeat_at,
                                           draining, engine_down_at (Redis time its Docker
                                           engine stopped answering; "0" while it answers);
                                           no TTL: removed at deregistration, or by the recovery
                                           of a lost node
    offload:node:<name>:running     SET    ids of the jobs this node runs now — written in the
                                           same atomic call as the job's transitions
                                           (:mod:`offload.broker.records`); removed with the node
    offload:node:<name>:owners      HASH   job id -> "<pid>:<attempt>", the pool process running
                                           that attempt (to tell a live attempt from a dead one);
                                           written and removed with ``:running``
    offload:node:<name>:objects     ZSET   content id -> plaintext bytes of the objects this node's
                                           cache holds (locality routing,
                                           :mod:`offload.cache.objindex`): only objects of at
                                           least ``locality_min_bytes``, at most
                                           ``locality_max_objects`` (the smallest dropped first);
                                           added on put / fetch / local read, removed on
                                           eviction; cleared at the node's start and
                                           deregistration. No TTL (bounded; removed with the node)
    offload:node:<name>:recovering  STRING lock (SET NX EX 60) held by whoever redelivers the jobs
                                           of this node once it is lost; expires by itself

Admission (:mod:`offload.broker.room`; written by each attempt as it starts and ends)::

    offload:room:<machine>          HASH   job id -> "<node> <pid> <attempt> <milli-CPUs> <memory>
                                           <GPUs>": what each attempt running on the machine
                                           holds of its room (nodes naming one ``machine`` share
                                           it). Taken and given back by one Lua script each; an
                                           entry whose attempt is no longer its node's owner of
                                           the job (``:owners``, above) is dropped by the next
                                           script that reads the hash. Bound: one entry per
                                           running attempt on the machine; no TTL
    offload:room:<machine>:waiting  HASH   job id -> "<first> <last> <milli-CPUs> <memory> <GPUs>"
                                           (Redis time): jobs that found no room, since when, and
                                           what they need; the oldest that waited longer than
                                           ``admission_starvation`` has the room it needs kept
                                           from smaller jobs. Members leave when admitted, or once
                                           not seen for their TTL (dropped by the next admission).
                                           Bound: the jobs delivered to the machine's nodes

Ownership (:mod:`offload.broker.records`, :mod:`offload.broker.sweeper`)::

    offload:leases               ZSET   job id -> lease expiry (Redis server time) of its current
                                        attempt; added by begin_attempt, renewed by the attempt's
                                        worker, removed by the transition out of the active
                                        states; expired members are requeued by the sweeper.
                                        No TTL (one set; members leave with their attempt)
    offload:queued               ZSET   job id -> when it was (re)published; the sweeper looks for
                                        the message of a job queued longer than a grace period
                                        and publishes it again when it is in no queue. Members
                                        leave at begin_attempt or at any move out of ``queued``
    offload:retries              ZSET   job id -> when its delayed retry is due (Redis time); the
                                        sweeper publishes it then (a retry waiting out its
                                        backoff holds no slot and no unacknowledged message).
                                        Members leave when published or when the job moves on
    offload:routed               ZSET   job id -> when (Redis time) its message went to a node
                                        queue (:mod:`offload.broker.routing`); the sweeper moves
                                        it to its class queue when the node has not started it
                                        within ``locality_grace``. Members leave then, or once
                                        the sweeper finds the job started or gone
    offload:cluster              STRING this cluster's id (uuid4 hex, SET NX by the first node); job
                                        containers carry it as a label, so a node only ever
                                        reaps containers of its own cluster on a shared engine.
                                        No TTL (one key)
    offload:sweeper:lock         STRING who sweeps now (SET NX PX, a few seconds): one at a time
    offload:sweeper:last         STRING Redis server time of the last sweep; a gap longer than a
                                        lease means the broker (or every sweeper) was away: leases
                                        are extended once instead of expired. No TTL (one key)

The autoscaler (:mod:`offload.broker.scaling`)::

    offload:autoscaler:<class>   HASH   the autoscaler's last word on a class, rewritten each tick
                                        and expiring after 60 s (absent: no autoscaler runs):
                                        desired, up, starting, draining, work, reason, at

Schedules (:mod:`offload.producer.schedules`, fired by :mod:`offload.scheduler`)::

    offload:schedules            HASH   schedule name -> its definition (JSON: image, command,
                                        submit options, cron or every, overlap, created_at);
                                        written by ``offload schedule add``, removed by ``rm``.
                                        No TTL (configuration)
    offload:schedule:<name>:state HASH  next_at, last_at (the last fire time handled: claimed
                                        once, atomically, by the active scheduler), last_outcome,
                                        last_job, last_run_at, paused; created with the schedule,
                                        deleted with it
    offload:scheduler:lock       STRING the token of the active scheduler (SET NX PX, renewed
                                        every tick; a standby takes over once it expires)

The data tier's shared indexes (:mod:`offload.cache.actions`, :mod:`offload.cache.fetch`)::

    offload:memo:<key>           STRING the action cache: JSON {outputs, job_id} of the successful
                                        job whose image digest, command, params, env and inputs
                                        hash to <key>; expires after ``Settings.memo_ttl``
    offload:fetched:<hash>       STRING JSON {oid, etag, modified}: the content id an input URI
                                        (``https://``, ``http://``, ``s3://``) was fetched as by
                                        a node, with the validators it was fetched at; <hash> is
                                        the sha256 of the URI (keyed with the cluster key when the
                                        URI carries credentials). Written by the node after a
                                        fetch, read by every node (no fetch while the validators
                                        match) and by routing (locality). Expires after
                                        ``Settings.memo_ttl``; fetched again when gone
    offload:inflight:<key>       STRING the id of the job now running the action of memo <key>
                                        (SET NX by its attempt at the memo check; an identical job
                                        finding it held by an active job waits for that one:
                                        :mod:`offload.broker.inflight`); deleted when the holder's
                                        attempt ends, expires after about the job's timeout

Job control (:mod:`offload.broker.limits`; written by ``offload limit`` / ``hold``, by each
attempt at its start and end, and by the sweeper)::

    offload:limits               HASH   ``<label>=<value>`` -> the most jobs so labelled that may
                                        run at once, cluster-wide. No TTL (configuration)
    offload:limit:<l>=<v>:holders HASH  job id -> attempt holding one of the limit's permits;
                                        taken at the attempt's start (one Lua script), returned
                                        at its end, or by the sweeper once that attempt is no
                                        longer active. Deleted with the limit
    offload:limit:<l>=<v>:waiting ZSET  job id -> when it first found the limit full; the
                                        oldest is queued again when a permit comes back.
                                        Members leave when resumed or when they get a permit
    offload:held                 SET    resource classes whose new jobs do not start (``offload
                                        hold``); no TTL (configuration)
    offload:held:<class>:waiting ZSET   job id -> when it found its class held; all queued
                                        again at ``offload release``. Members leave when resumed

Metrics (:mod:`offload.broker.stats`; exported for Prometheus by the autoscaler only,
``docs/metrics.md``). Counters kept in Redis, so they survive restarts of every process::

    offload:stats:submitted      HASH   resource class -> jobs submitted (HINCRBY in the MULTI
                                        of :meth:`JobRecords.create`). No TTL: one field per
                                        class
    offload:stats:finished       HASH   ``<class>|<status>|<reason>`` -> jobs that reached that
                                        terminal status (HINCRBY in the transition script, in
                                        the same atomic call as the move). No TTL: bounded by
                                        classes x terminal statuses x reasons
    offload:stats:schedules      HASH   fire outcome (submitted, skipped, error) -> fires;
                                        ``missed`` -> fires that made up for missed fire times
                                        (:mod:`offload.scheduler`). No TTL: a handful of fields

Celery owns the queue keys (one list per resource class, named after the class; one per node,
``node.<name>`` (:func:`node_queue`), for jobs routed to the node holding their inputs; plus
kombu's ``unacked`` bookkeeping); offload writes them only through Celery, except the
sweeper's ``LREM`` of one exact message when it moves a job out of a node queue.
"""

from __future__ import annotations

PREFIX = "offload"
JOBS_INDEX = f"{PREFIX}:jobs"
NODES = f"{PREFIX}:nodes"
LEASES = f"{PREFIX}:leases"
QUEUED = f"{PREFIX}:queued"
WAITING = f"{PREFIX}:waiting"
RETRIES = f"{PREFIX}:retries"
CLUSTER = f"{PREFIX}:cluster"
LIMITS = f"{PREFIX}:limits"
HELD = f"{PREFIX}:held"
SWEEPER_LOCK = f"{PREFIX}:sweeper:lock"
SWEEPER_LAST = f"{PREFIX}:sweeper:last"
ROUTED = f"{PREFIX}:routed"
NODE_QUEUE_PREFIX = "node."
SCHEDULES = f"{PREFIX}:schedules"
SCHEDULER_LOCK = f"{PREFIX}:scheduler:lock"
STATS_SUBMITTED = f"{PREFIX}:stats:submitted"
STATS_FINISHED = f"{PREFIX}:stats:finished"
STATS_SCHEDULES = f"{PREFIX}:stats:schedules"
ENDED = f"{PREFIX}:ended"
ARCHIVE_WHERE = f"{PREFIX}:archive:where"
ARCHIVE_SEGMENTS = f"{PREFIX}:archive:segments"
ARCHIVE_TIMES = f"{PREFIX}:archive:times"
ARCHIVE_SEQ = f"{PREFIX}:archive:seq"
ARRAYS_FEEDING = f"{PREFIX}:arrays:feeding"


def array(array_id: str) -> str:
    return f"{PREFIX}:array:{array_id}"


def array_feed(array_id: str) -> str:
    return f"{PREFIX}:array:{array_id}:feed"


def array_feeding(array_id: str) -> str:
    return f"{PREFIX}:array:{array_id}:feeding"


def array_table(array_id: str, part: int) -> str:
    return f"{PREFIX}:array:{array_id}:t:{part}"


def array_live(array_id: str) -> str:
    return f"{PREFIX}:array:{array_id}:live"


def array_bad(array_id: str) -> str:
    return f"{PREFIX}:array:{array_id}:bad"


def array_key_of(job_id: str) -> str:
    """The array record an item's id points to (a key that never exists for other ids): the
    transition script counts an item's end there."""
    return array(job_id[:24]) if len(job_id) == 32 else f"{PREFIX}:array:-"


def archive_array(array_id: str) -> str:
    return f"{PREFIX}:archive:array:{array_id}"


def chunk(chunk_id: str) -> str:
    return f"{PREFIX}:chunk:{chunk_id}"


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def events(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:events"


def logs(job_id: str) -> str:
    return f"{PREFIX}:logs:{job_id}"


def parents(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:parents"


def waiting_on(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:waiting"


def children(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:children"


def node(name: str) -> str:
    return f"{PREFIX}:node:{name}"


def node_running(name: str) -> str:
    return f"{PREFIX}:node:{name}:running"


def node_owners(name: str) -> str:
    return f"{PREFIX}:node:{name}:owners"


def node_objects(name: str) -> str:
    return f"{PREFIX}:node:{name}:objects"


def room(machine: str) -> str:
    return f"{PREFIX}:room:{machine}"


def room_waiting(machine: str) -> str:
    return f"{PREFIX}:room:{machine}:waiting"


def node_queue(name: str) -> str:
    """The Celery queue of one node (jobs routed to it for their inputs), not an offload key."""
    return f"{NODE_QUEUE_PREFIX}{name}"


def node_recovering(name: str) -> str:
    return f"{PREFIX}:node:{name}:recovering"


def autoscaler_status(resource_class: str) -> str:
    return f"{PREFIX}:autoscaler:{resource_class}"


def memo(key: str) -> str:
    return f"{PREFIX}:memo:{key}"


def fetched(digest: str) -> str:
    return f"{PREFIX}:fetched:{digest}"


def inflight(key: str) -> str:
    return f"{PREFIX}:inflight:{key}"


def limit_holders(limit: str) -> str:
    return f"{PREFIX}:limit:{limit}:holders"


def limit_waiting(limit: str) -> str:
    return f"{PREFIX}:limit:{limit}:waiting"


def held_waiting(resource_class: str) -> str:
    return f"{PREFIX}:held:{resource_class}:waiting"


def schedule_state(name: str) -> str:
    return f"{PREFIX}:schedule:{name}:state"
