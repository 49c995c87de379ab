"""The broker: everything offload keeps in Redis, and the Celery queues on top of it.

Every process gets one :class:`Broker` (:mod:`.core`), built from its settings at the edge,
and reaches Redis and Celery only through it::

    broker = Broker(settings)
    broker.records        # job records, timelines, logs, leases, fenced transitions
    broker.pipeline       # dependencies: waiting, release, failure flowing downstream
    broker.limits         # concurrency limits and held classes
    broker.inflight       # identical jobs in flight run once
    broker.arrays         # arrays' records (a map's items are jobs with derived ids)
    broker.nodes          # the node registry: capacity, heartbeats, running sets
    broker.room           # each machine's room: CPUs, memory, GPUs its attempts hold
    broker.schedules      # schedule definitions, fire-time claims, the scheduler's lock
    broker.sweeper        # expired leases, lost messages, due retries, waiting jobs
    broker.submit(...)    # record a sealed job and queue it (or leave it waiting)
    broker.publish(rec)   # send a queued job's message; routing decides the queue
    broker.depths()       # ready + unacked + running per class (kombu's formats decoded)

Where things are:

========================  ====================================================================
``core``                  :class:`Broker`, the composition root
``keys``                  the Redis key schema: every key, who writes it, its bound or TTL
``status``                the job state machine: states, reasons, the transitions table
``scripts``               the Lua scripts every transition goes through (sets from ``status``)
``records``, ``model``    job records and timelines (:class:`JobRecords`, :class:`JobRecord`)
``logs``                  per-job log streams, byte-capped
``pipeline``              parents and children, release, upstream failure
``limits``                concurrency limits, held classes (permits, parking, waking)
``inflight``              the in-flight table of identical jobs
``arrays``                an array's one record; its items' ids come from ``spec.arrays``
``nodes``                 the node registry
``room``                  admission: a machine's room, taken and given back atomically
``recovery``, ``sweeper``  requeueing dead attempts; the periodic sweep
``app``, ``queues``       the Celery app; queue topology, priority lists, kombu's formats
``publish``, ``routing``  the one publish path; locality routing to node queues
``depths``, ``scaling``   queue depths per class; the autoscaler's status per class
``schedules``             schedules' storage and the one-active-scheduler lock
``connection``, ``sentinel``, ``credentials``, ``acl``  how clients connect (TLS, ACL users,
                          Sentinel), the embedded Redis's credentials and ACL roles
``flower``                Flower behind authentication
========================  ====================================================================

Celery is imported only by ``app``, ``publish``, ``pipeline``, ``recovery``, ``sweeper`` and
``flower``, and only when a process first uses one of them (``Broker.app`` builds it lazily):
reading a record imports no Celery.
"""

from offload.broker.core import Broker
from offload.broker.records import Event, JobRecord, JobRecords
from offload.broker.status import JobStatus, Reason

__all__ = ["Broker", "Event", "JobRecord", "JobRecords", "JobStatus", "Reason"]
