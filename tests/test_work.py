"""Work per class read from a real Redis as Celery/kombu keep it; metrics; the loop's tick."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from click.testing import CliRunner
from kombu.transport import redis as kombu_redis
from prometheus_client.parser import text_string_to_metric_families

from offload.autoscaler.loop import Autoscaler, join_nodes, limits_from_settings
from offload.autoscaler.metrics import AutoscalerMetrics, start_metrics_server
from offload.autoscaler.policy import ClassLimits, ClassWork, Limits, NodeView, PolicyMemory, decide
from offload.autoscaler.provider import NodeProvider, ProvidedNode
from offload.broker import keys
from offload.broker.app import make_app, redis_client, route
from offload.broker.core import Broker
from offload.broker.depths import UNACKED_KEY, queue_keys
from offload.broker.depths import read_depths as read_work
from offload.broker.nodes import NodeInfo, NodeRegistry
from offload.broker.queues import PRIORITY_SEP, PRIORITY_STEPS
from offload.broker.records import JobRecords
from offload.broker.scaling import read_status
from offload.broker.status import JobStatus
from offload.config import Settings
from offload.errors import ConfigError, ProviderError
from offload.spec import JobSpec
from tests.conftest import Platform, make_platform

CLASSES = ["cpu-small", "cpu-large", "gpu-large"]


@pytest.fixture(scope="module")
def plat(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Platform:
    return make_platform(redis_server, tmp_path_factory.mktemp("work-home"))


@pytest.fixture
def settings(plat: Platform) -> Settings:
    return plat.settings


@pytest.fixture
def r(settings: Settings) -> Iterator[redis.Redis]:
    client = redis_client(settings)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def app(settings: Settings) -> Iterator[Celery]:
    a = make_app(settings)
    yield a
    a.close()


def publish(app: Celery, queue: str, priority: int = 0) -> str:
    """Publish as offload does: a job's priority 0-9 (9 first) into kombu's priority lists."""
    job_id = uuid.uuid4().hex
    route(app, job_id, queue, "test/job", "test", priority=priority)
    return job_id


def test_constants_are_kombus(settings: Settings) -> None:
    """offload's idea of kombu's layout is the one the app configures and kombu uses."""
    options = make_app(settings).conf.broker_transport_options
    assert options["priority_steps"] == list(PRIORITY_STEPS) == list(range(10))
    assert kombu_redis.Channel.sep == PRIORITY_SEP
    assert kombu_redis.Channel.unacked_key == UNACKED_KEY
    assert queue_keys("q") == ["q", *(f"q\x06\x16{p}" for p in range(1, 10))]


def test_ready_counts_every_priority_list(app: Celery, r: redis.Redis) -> None:
    for _ in range(3):
        publish(app, "cpu-small")
    publish(app, "cpu-small", priority=5)
    publish(app, "cpu-small", priority=9)
    publish(app, "cpu-large")
    assert r.llen("cpu-small\x06\x164") == 1 and r.llen("cpu-small") == 1  # 5 and 9
    assert r.llen("cpu-small\x06\x169") == 3  # the default priority 0: served last
    work = read_work(r, CLASSES)
    assert work == {
        "cpu-small": ClassWork(ready=5),
        "cpu-large": ClassWork(ready=1),
        "gpu-large": ClassWork(),
    }


def test_unacked_counts_a_delivered_message_until_acked(app: Celery, r: redis.Redis) -> None:
    publish(app, "cpu-small")
    publish(app, "cpu-small", priority=9)
    publish(app, "cpu-large")
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        message = channel.basic_get("cpu-small", no_ack=False)
        assert message is not None
        assert r.hlen("unacked") == 1
        work = read_work(r, CLASSES)
        assert work["cpu-small"] == ClassWork(ready=1, unacked=1)
        assert work["cpu-large"] == ClassWork(ready=1)
        assert work["cpu-small"].total == 2
        channel.basic_ack(message.delivery_tag)
        assert read_work(r, CLASSES)["cpu-small"] == ClassWork(ready=1)


def test_unacked_entries_of_other_queues_are_ignored(r: redis.Redis) -> None:
    r.hset("unacked", "t1", '[{"properties": {"delivery_info": {"routing_key": "x"}}}, "", "x"]')
    r.hset("unacked", "t2", "not json")
    r.hset(
        "unacked",
        "t3",
        '[{"properties": {"delivery_info": {"routing_key": "gpu-large"}}}, "offload", "other"]',
    )
    assert read_work(r, CLASSES)["gpu-large"] == ClassWork(unacked=1)
    assert sum(w.total for w in read_work(r, CLASSES).values()) == 1


def _record(records: JobRecords, cls: str) -> str:
    job_id = uuid.uuid4().hex
    records.create(job_id, JobSpec(image="offload/base", command=("true",)), cls)
    return job_id


def test_running_from_the_registry_and_job_records(settings: Settings, r: redis.Redis) -> None:
    records = JobRecords(r, record_ttl=600, log_max_entries=1000)
    registry = NodeRegistry(r, lost_after=settings.lost_after)
    registry.register(
        "n1", provider="test", classes=["cpu-large"], slots=2, cpus=4, memory=1 << 30, gpus=0
    )
    active = _record(records, "cpu-large")
    records.begin_attempt(active, "n1")
    records.transition(active, JobStatus.RUNNING)
    done = _record(records, "cpu-large")
    records.transition(done, JobStatus.SUCCEEDED)
    queued = _record(records, "cpu-large")
    # stale entries: a finished job, a queued one, one without a record
    r.sadd(keys.node_running("n1"), done, queued, "no-such-job")
    assert read_work(r, CLASSES)["cpu-large"] == ClassWork(running=1)
    assert read_work(r, CLASSES)["cpu-large"].total == 1  # unacked 0 < running 1: max


def test_read_work_with_a_bytes_client(settings: Settings, app: Celery) -> None:
    raw = redis.Redis.from_url(settings.redis_url)
    raw.flushdb()
    publish(app, "gpu-large")
    assert read_work(raw, CLASSES)["gpu-large"] == ClassWork(ready=1)
    raw.close()


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_are_served_on_loopback() -> None:
    metrics = AutoscalerMetrics()
    work = {"cpu-small": ClassWork(ready=7, unacked=2, running=2)}
    nodes = [
        NodeView("a", "cpu-small", 2, 2, "up", 0),
        NodeView("b", "cpu-small", 0, 0, "starting", 1),
        NodeView("c", "cpu-small", 2, 0, "draining", 1),
    ]
    decision = decide(work, nodes, 5.0, Limits(default=ClassLimits(max_nodes=4)), PolicyMemory())
    metrics.observe(work, nodes, decision, 5.0)
    server = start_metrics_server(0, metrics)
    try:
        assert server.server.server_address[0] == "127.0.0.1"
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read()
    finally:
        server.close()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    cls = (("resource_class", "cpu-small"),)
    assert samples[("offload_jobs_ready", cls)] == 7
    assert samples[("offload_jobs_unacked", cls)] == 2
    assert samples[("offload_jobs_running", cls)] == 2
    assert samples[("offload_work", cls)] == 9
    assert samples[("offload_nodes_desired", cls)] == 4
    for state, count in [("up", 1), ("starting", 1), ("draining", 1), ("lost", 0)]:
        assert samples[("offload_nodes", (*cls, ("state", state)))] == count
    assert samples[("offload_autoscaler_last_tick_timestamp_seconds", ())] == 5.0


# -- joining registry and provider -----------------------------------------------------------


def _info(name: str, classes: tuple[str, ...], state: str = "up", running: int = 0) -> NodeInfo:
    return NodeInfo(
        name=name, provider="p", classes=classes, slots=2, cpus=1, memory=1, gpus=0,
        started_at=10.0, heartbeat_at=10.0, draining=state == "draining",
        running=tuple(f"j{i}" for i in range(running)), state=state,
    )  # fmt: skip


def test_join_nodes() -> None:
    registered = [
        _info("mine", ("cpu-small",), running=1),
        _info("leaving", ("cpu-small",)),
        _info("by-hand", ("cpu-small", "cpu-large", "other")),
        _info("dead", ("cpu-large",), state="lost"),
    ]
    provided = [
        ProvidedNode("mine", "cpu-small", "running", 5.0),
        ProvidedNode("leaving", "cpu-small", "draining", 5.0),
        ProvidedNode("dead", "cpu-large", "running", 5.0),
        ProvidedNode("new", "cpu-large", "starting", 95.0),
        ProvidedNode("stuck", "cpu-large", "starting", 0.0),
        ProvidedNode("gone", "cpu-large", "gone", 0.0),
    ]
    views = {
        (v.name, v.resource_class): v
        for v in join_nodes(registered, provided, CLASSES, 100.0, 60.0)
    }
    assert views.keys() == {
        ("mine", "cpu-small"), ("leaving", "cpu-small"), ("by-hand", "cpu-small"),
        ("by-hand", "cpu-large"), ("dead", "cpu-large"), ("new", "cpu-large"), ("stuck", "cpu-large"),
    }  # fmt: skip
    assert views["mine", "cpu-small"] == NodeView("mine", "cpu-small", 2, 1, "up", 10.0)
    assert views["leaving", "cpu-small"].state == "draining"
    assert not views["by-hand", "cpu-large"].managed
    assert views["dead", "cpu-large"].state == "lost"
    assert views["new", "cpu-large"] == NodeView("new", "cpu-large", 0, 0, "starting", 95.0)
    assert views["stuck", "cpu-large"].state == "lost"  # past the start timeout


# -- the loop --------------------------------------------------------------------------------


class MemoryProvider(NodeProvider):
    """A provider whose nodes are names in a dict: the registry is what tests drive."""

    name = "memory"

    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.drained: list[str] = []
        self._nodes: dict[str, ProvidedNode] = {}

    def start_nodes(self, resource_class: str, count: int) -> list[str]:
        self.started.append((resource_class, count))
        names = [f"{resource_class}-{len(self._nodes) + i}" for i in range(count)]
        for n in names:
            self._nodes[n] = ProvidedNode(n, resource_class, "starting", time.time())
        return names

    def drain(self, node: str) -> None:
        self.drained.append(node)
        p = self._nodes[node]
        self._nodes[node] = ProvidedNode(p.name, p.resource_class, "draining", p.created_at)

    def nodes(self) -> list[ProvidedNode]:
        return list(self._nodes.values())


def test_tick_scales_up_once_then_drains_idle_nodes(
    app: Celery, r: redis.Redis, settings: Settings
) -> None:
    for _ in range(4):
        publish(app, "cpu-small")
    registry = NodeRegistry(r, lost_after=15)
    provider = MemoryProvider()
    recovered: list[float] = []
    limits = Limits(default=ClassLimits(max_nodes=4, jobs_per_node=2, idle_window=5))
    scaler = Autoscaler(
        Broker(settings, client=r, app=app),
        provider,
        CLASSES,
        limits,
        recover=lambda now: recovered.append(now),
    )
    t = time.time()

    d = scaler.tick(t)
    assert provider.started == [("cpu-small", 2)]
    assert d.start == {"cpu-small": 2}
    status = read_status(r, "cpu-small")
    assert status is not None
    assert status["desired"] == "2" and status["starting"] == "2"
    assert status["reason"].startswith("scaling up: 4 jobs, 2 slots/node → 2 nodes")
    assert 0 < r.ttl(keys.autoscaler_status("cpu-small")) <= 60
    assert read_status(r, "gpu-large") == {
        "desired": "0", "up": "0", "starting": "0", "draining": "0", "work": "0",
        "reason": "idle: 0 nodes, min 0", "at": repr(t),
    }  # fmt: skip

    d = scaler.tick(t + 1)  # both still starting: not started again
    assert provider.started == [("cpu-small", 2)]
    assert read_status(r, "cpu-small")["reason"] == "no node of its class yet: 2 starting"  # type: ignore[index]

    names = [p.name for p in provider.nodes()]
    for n in names:
        registry.register(
            n, provider="memory", classes=["cpu-small"], slots=2, cpus=1, memory=1, gpus=0
        )
    r.delete(*queue_keys("cpu-small"))  # the jobs were taken and are done
    records = JobRecords(r, record_ttl=600, log_max_entries=1000)
    busy_job = _record(records, "cpu-small")
    records.begin_attempt(busy_job, names[1])  # names[1] runs a job; the class has 1 job

    scaler.tick(t + 2)
    assert provider.drained == []  # within the idle window
    assert "under capacity" in read_status(r, "cpu-small")["reason"]  # type: ignore[index]
    d = scaler.tick(t + 8)
    assert d.drain == [names[0]]  # the idle one only; the busy one is never drained
    assert provider.drained == [names[0]]
    assert registry.is_draining(names[0]) and not registry.is_draining(names[1])
    assert read_status(r, "cpu-small")["desired"] == "1"  # type: ignore[index]
    scaler.tick(t + 9)
    assert provider.drained == [names[0]]  # a draining node is not drained again
    assert recovered == [t, t + 1, t + 2, t + 8, t + 9]


def test_a_failing_provider_is_reported_and_asked_again(
    app: Celery, r: redis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(MemoryProvider):
        fail = True

        def start_nodes(self, resource_class: str, count: int) -> list[str]:
            if self.fail:
                raise ProviderError("no capacity in zone")
            return super().start_nodes(resource_class, count)

    publish(app, "cpu-large")
    provider = Broken()
    scaler = Autoscaler(Broker(settings, client=r), provider, CLASSES, Limits())
    t = time.time()
    scaler.tick(t)
    assert "no capacity in zone" in read_status(r, "cpu-large")["reason"]  # type: ignore[index]
    assert "starting 1 node(s) failed: no capacity in zone" in caplog.text
    provider.fail = False
    scaler.tick(t + 1)  # the next tick tries again
    assert provider.started == [("cpu-large", 1)]
    assert read_status(r, "cpu-large")["starting"] == "1"  # type: ignore[index]


def test_busy_nodes_are_protected_idle_ones_not_told_on_change(
    app: Celery, r: redis.Redis, settings: Settings
) -> None:
    class Protecting(MemoryProvider):
        def __init__(self) -> None:
            super().__init__()
            self.told: list[tuple[str, bool]] = []

        def protect(self, node: str, busy: bool) -> None:
            self.told.append((node, busy))

    provider = Protecting()
    registry = NodeRegistry(r, lost_after=15)
    lim = Limits(default=ClassLimits(min_nodes=2, max_nodes=2))
    scaler = Autoscaler(Broker(settings, client=r), provider, ["cpu-small"], lim)
    t = time.time()
    scaler.tick(t)
    a, b = sorted(p.name for p in provider.nodes())
    scaler.tick(t + 1)
    assert provider.told == []  # not registered yet: nothing known of them
    for n in (a, b):
        registry.register(n, provider="memory", classes=["cpu-small"], slots=1, cpus=1,
                          memory=1, gpus=0)  # fmt: skip
    records = JobRecords(r, record_ttl=600, log_max_entries=1000)
    job = _record(records, "cpu-small")
    records.begin_attempt(job, a)
    scaler.tick(t + 2)
    assert sorted(provider.told) == [(a, True), (b, False)]
    scaler.tick(t + 3)
    assert len(provider.told) == 2  # no change, nothing told
    records.transition(job, JobStatus.RUNNING, attempt=1)
    records.transition(job, JobStatus.UPLOADING, attempt=1)
    records.transition(job, JobStatus.SUCCEEDED, attempt=1)
    assert not registry.runs(a, job)
    scaler.tick(t + 4)
    assert provider.told[2:] == [(a, False)]


# -- limits from settings, the command -------------------------------------------------------


def test_limits_from_settings_defaults(settings: Settings) -> None:
    limits = limits_from_settings(settings)
    assert limits.for_class("cpu-small") == limits.default
    gpu = limits.for_class("gpu-large")
    assert gpu.gpu and gpu.min_nodes == 0


def test_limits_from_settings_overrides(settings: Settings) -> None:
    def fake(**kw: object) -> Settings:
        return settings.model_copy(update=kw)

    limits = limits_from_settings(
        fake(
            autoscale_min=1,
            autoscale_max=6,
            autoscale={"cpu-large": {"max_nodes": 2, "min_nodes": 0}},
        )
    )
    assert limits.for_class("cpu-small") == ClassLimits(min_nodes=1, max_nodes=6)
    assert limits.for_class("cpu-large") == ClassLimits(min_nodes=0, max_nodes=2)
    assert limits.for_class("gpu-large") == ClassLimits(min_nodes=0, max_nodes=6, gpu=True)
    bads: list[dict[str, dict[str, int]]] = [
        {"nope": {}},
        {"cpu-small": {"maxnodes": 1}},
        {"cpu-small": {"min_nodes": 9}},
    ]
    for bad in bads:
        with pytest.raises(ConfigError):
            limits_from_settings(fake(autoscale=bad))


def test_autoscaler_command(settings: Settings, tmp_path: Path) -> None:
    from offload.cli import cli
    from offload.cli.scalecmd import make_provider

    result = CliRunner().invoke(cli, ["autoscaler", "--help"])
    assert result.exit_code == 0, result.output
    assert "--provider" in result.output and "--metrics-port" in result.output
    with pytest.raises(ConfigError, match="unknown provider"):
        make_provider("nope", settings)
