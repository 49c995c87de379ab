"""Publishing a queued job: the one place that decides which queue its message goes to.

Every publication — at submit, when a waiting job is released, on a retry, when the sweeper
requeues a dead attempt's job or republishes a lost message — goes through :func:`publish`,
so routing (the class queue, or a node queue for data locality) is decided in one place.
"""

from __future__ import annotations

from celery import Celery

from offload.broker.app import route
from offload.broker.records import JobRecord


def publish(app: Celery, rec: JobRecord, task_id: str | None = None) -> str:
    """Send ``rec``'s job to its queue; returns the queue's name."""
    queue = rec.resource_class
    route(app, rec.id, queue, rec.spec.display_name(), rec.spec.summary(), task_id)
    return queue
