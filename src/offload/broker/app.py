"""The Celery application: one queue per resource class on Redis, JSON only.

Delivery is at least once — late acknowledgement, prefetch 1, requeue when a worker process
dies — and made effectively once by the job records (see :mod:`offload.worker.tasks`).
"""

from __future__ import annotations

import weakref
from typing import Any, TypeAlias

from celery import Celery
from celery.app.amqp import AMQP
from kombu import Exchange, Queue

from offload.broker import sentinel
from offload.broker.connection import (
    broker_url,
    redis_client,
    ssl_options,
    transport_options,
    warn_if_plain,
)
from offload.broker.queues import PRIORITY_STEPS, kombu_priority
from offload.config import Settings
from offload.errors import JobError

TASK_NAME = "offload.run_job"
CHUNK_TASK_NAME = "offload.run_chunk"  # a chunk of a batched array's items (spec/arrays.py)
EXCHANGE = Exchange("offload", type="direct")

App: TypeAlias = Celery  # the app's type for the layers above broker/, which import no Celery


class TaskFailed(JobError):
    """Raised by ``run_job`` when its job ended failed, timed_out or cancelled.

    Not a fault of the task: the job's record holds the outcome. Raising lets Celery (and
    Flower, whose Failed filter finds it) show the task as FAILURE with the reason and message
    (``TaskFailed: oom_killed: killed for using more than …``); the message is acknowledged
    all the same (``task_acks_on_failure_or_timeout``), nothing retries the task, and the
    worker logs one line without a traceback (the task ``throws`` it).
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(reason, message)  # args re-create it: it crosses the pool's pipe
        self.reason, self.message = reason, message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}" if self.message else self.reason

    def __repr__(self) -> str:  # what Celery puts in the task-failed event Flower shows
        return f"{type(self).__name__}: {self}"


def queues_for(settings: Settings) -> list[Queue]:
    return [Queue(c.name, EXCHANGE, routing_key=c.name) for c in settings.classes]


class _ShadowNamedAMQP(AMQP):
    """Celery's message builder, with the ``task-sent`` event naming the task by its shadow.

    Celery puts the shadow (the job's name) in ``task-received`` but the real task name in
    ``task-sent``; when Flower sees task-sent last (the producer sends it just after the
    worker may already have received the job) or alone (a queued job), it would show the
    job as ``offload.run_job``.
    """

    def as_task_v2(self, *args: Any, **kwargs: Any) -> Any:
        message = super().as_task_v2(*args, **kwargs)
        shadow = message.headers.get("shadow")
        if shadow and message.sent_event is not None:
            message.sent_event["name"] = shadow
        return message


def make_app(settings: Settings) -> Celery:
    """Build the Celery app for ``settings``. Producers and workers build the same one."""
    warn_if_plain(settings)
    sentinel.install()
    app = Celery(
        "offload", broker=broker_url(settings), set_as_current=False, amqp=_ShadowNamedAMQP
    )
    transport: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout,
        # sweep for messages of dead workers every 5 s (kombu's default is ~100 s)
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
        # ten priority lists per queue, so each of a job's priorities 0-9 is its own
        "priority_steps": list(PRIORITY_STEPS),
        "queue_order_strategy": "priority",
        **transport_options(settings),  # sentinel://: the master's name
    }
    conf: dict[str, Any] = dict(
        task_queues=queues_for(settings),
        task_default_queue=settings.classes[0].name,
        task_default_exchange=EXCHANGE.name,
        task_create_missing_queues=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,  # a job's failure is in its record: ack
        # an ended job's failure is expected: logged in one line, no traceback
        task_annotations={
            TASK_NAME: {"throws": (TaskFailed,)},
            CHUNK_TASK_NAME: {"throws": (TaskFailed,)},
        },
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=False,
        accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        result_accept_content=["json"],
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
        # locality routing (broker/publish.py): plain values, shown by `celery inspect conf`
        offload_locality=settings.locality,
        offload_lost_after=settings.lost_after,
    )
    tls = ssl_options(settings)  # the same TLS options as every redis-py client
    if tls is not None:
        conf["broker_use_ssl"] = tls
    app.conf.update(conf)
    _settings[app] = settings
    return app


_settings: weakref.WeakKeyDictionary[Celery, Settings] = weakref.WeakKeyDictionary()


def settings_of(app: Celery) -> Settings:
    """The settings ``app`` was made from (its Redis connection options among them)."""
    return _settings[app]


def route(
    app: Celery,
    job_id: str,
    queue: str,
    shown_as: str,
    summary: str,
    task_id: str | None = None,
    priority: int = 0,
    producer: Any = None,
    task: str = TASK_NAME,
) -> None:
    """Publish a job to ``queue`` with its ``priority`` (0-9, 9 first); Flower shows it as
    ``shown_as`` with ``summary``. ``producer``: a kombu producer to send with (a warm one a
    :class:`~offload.broker.core.Broker` keeps), else one from the app's pool. ``task``:
    :data:`CHUNK_TASK_NAME` for a chunk of a batched array (``job_id`` is the chunk's id)."""
    app.send_task(
        task,
        args=[job_id],
        # The default exchange puts the message straight into the queue's list: no binding
        # lookup, so a Redis that lost its bindings (restart, FLUSHDB) cannot drop the job.
        queue=queue,
        exchange="",
        routing_key=queue,
        task_id=task_id or job_id,
        shadow=shown_as,
        priority=kombu_priority(priority),
        argsrepr=summary,
        kwargsrepr="{}",
        producer=producer,
    )


__all__ = [
    "CHUNK_TASK_NAME",
    "App",
    "TaskFailed",
    "make_app",
    "redis_client",
    "route",
    "settings_of",
]
