"""The scheduler: turns the schedules of :mod:`offload.producer.schedules` into jobs.

One scheduler is active in the cluster at a time: the holder of ``offload:scheduler:lock``
(``SET NX PX``, a random token, renewed every tick for ``lock_ttl``). Any number may run;
the others stand by, trying for the lock each tick, and one takes over within ``lock_ttl``
(plus a tick) of the active one dying. ``offload up`` runs one; ``offload scheduler`` runs
one anywhere.

Each tick, for every schedule that is due (its ``next_at`` at or before now), the active
scheduler handles the *latest* fire time T at or before now — after downtime, the missed
times collapse into that one run: at most one missed run is made up — and sets ``next_at``
to the first fire time after now.

Exactly once per fire time: T is *claimed* before anything is submitted, in one Lua script
that checks the caller still holds the lock, the schedule exists and is not paused, and T is
later than the schedule's ``last_at``; it then writes ``last_at = T`` and the next fire time.
So a second scheduler (a standby taking over, a restarted one, a stale one that lost its
lock while paused) finds T handled and never submits it again. If the scheduler dies
between the claim and the submit, that one run is lost: ``offload schedule ls`` shows its
outcome as ``submitting``, and the schedule goes on from its next fire time. A run never
happens twice; a lost run is made up by no one (that would need to know the submit did not
happen).

Overlap ``skip``: when the schedule's last job has not finished, T is claimed as ``skipped``
and no job is made. ``tick(now)`` takes the time, so tests drive the clock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from offload.broker.schedules import ScheduleStore
from offload.errors import OffloadError
from offload.producer.client import Client
from offload.producer.schedules import Fired, Schedules

log = logging.getLogger(__name__)

DEFAULT_LOCK_TTL = 10.0  # seconds; a standby takes over this long after the active one died
DEFAULT_INTERVAL = 0.5  # seconds between ticks


class SchedulerLock:
    """The cluster's one-active-scheduler lock, held under a token of this process."""

    def __init__(self, store: ScheduleStore, ttl: float = DEFAULT_LOCK_TTL) -> None:
        self.store = store
        self.ttl = ttl
        self.token = store.new_token()

    def hold(self) -> bool:
        """Extend the lock if this process holds it, take it if free; whether it is ours."""
        return self.store.hold(self.token, self.ttl)

    def release(self) -> None:
        self.store.release(self.token)


class Scheduler:
    """Fires due schedules while it holds the lock."""

    def __init__(
        self,
        client: Client,
        *,
        lock_ttl: float = DEFAULT_LOCK_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.schedules = Schedules(client)
        self.lock = SchedulerLock(client.broker.schedules, lock_ttl)
        self.clock = clock
        self.active = False

    def tick(self, now: float | None = None) -> list[Fired]:
        """One round: hold the lock, then handle every due schedule; what was fired."""
        now = self.clock() if now is None else now
        active = self.lock.hold()
        if active != self.active:
            log.info("scheduler %s is %s", self.lock.token, "active" if active else "standing by")
            self.active = active
        if not active:
            return []
        fired = []
        for schedule, state in self.schedules.all():
            try:
                done = self.schedules.fire(schedule, state, now, self.lock.token)
                if done is not None:  # metrics: a later fire time than due means some missed
                    missed = done.at > (state.next_at or done.at)
                    self.lock.store.count_fire(done.outcome, missed)
            except OffloadError as exc:
                log.warning("schedule %s: %s", schedule.name, exc)
                continue
            if done is not None:
                fired.append(done)
        return fired

    def run(self, interval: float, stop: threading.Event) -> None:
        """Tick every ``interval`` seconds until ``stop`` is set; then give the lock up."""
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except OffloadError as exc:
                    log.warning("scheduler tick failed: %s", exc)
                except Exception:
                    log.exception("scheduler tick failed")
                stop.wait(interval)
        finally:
            with contextlib.suppress(OffloadError):  # else it expires by itself
                self.lock.release()
