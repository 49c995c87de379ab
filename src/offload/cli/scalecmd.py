"""``offload autoscaler``: the scaling loop, with a node provider and Prometheus metrics."""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from types import FrameType

import click
from rich.console import Console

from offload.autoscaler.provider import NodeProvider
from offload.cli import cli, handle_errors, settings_of
from offload.config import Settings
from offload.errors import ConfigError

console = Console(highlight=False)

PROVIDERS = {
    "local": ("offload.autoscaler.local", "LocalProvider"),
    "docker": ("offload.autoscaler.docker_provider", "DockerProvider"),
    "aws": ("offload.autoscaler.aws", "AwsProvider"),
}


def make_provider(name: str, settings: Settings) -> NodeProvider:
    """The provider called ``name``, its module imported only now (boto3, docker stay unloaded)."""
    try:
        module_name, class_name = PROVIDERS[name]
    except KeyError:
        raise ConfigError(f"unknown provider {name!r}; known: {sorted(PROVIDERS)}") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"provider {name!r} is not available: {exc}") from exc
    provider: NodeProvider = getattr(module, class_name)(settings)
    return provider


@cli.command()
@click.option(
    "--provider",
    "provider_name",
    type=click.Choice(sorted(PROVIDERS)),
    default="local",
    show_default=True,
    help="Where nodes come from.",
)
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Prometheus metrics on OFFLOAD_METRICS_ADDRESS:PORT; 0 turns them off "
    "[default: OFFLOAD_METRICS_PORT (0 there: any free port), else 9464].",
)
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_context
@handle_errors
def autoscaler(
    ctx: click.Context,
    provider_name: str,
    interval: float,
    metrics_port: int | None,
    loglevel: str,
) -> None:
    """Scale worker nodes on queue depth, per resource class (limits from OFFLOAD_AUTOSCALE*)."""
    from offload.autoscaler.clustermetrics import ClusterCollector
    from offload.autoscaler.loop import build_autoscaler
    from offload.autoscaler.metrics import AutoscalerMetrics
    from offload.broker.core import Broker
    from offload.cache.archive import sealed_archive
    from offload.worker.metricserver import check_address, serve

    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_of(ctx)
    if metrics_port is None:  # the setting's 0 is any free port; the option's 0 is off
        metrics_port = 9464 if settings.metrics_port is None else settings.metrics_port or -1
    if metrics_port:
        check_address(settings, max(metrics_port, 0))  # before any node is started
    provider = make_provider(provider_name, settings)
    metrics = AutoscalerMetrics()
    # with the cluster key here (`offload up`), its sweeps archive too: also at zero nodes
    archive = sealed_archive(settings) if settings.key_path.exists() else None
    scaler = build_autoscaler(Broker(settings, archive=archive), provider, metrics=metrics)
    limits, classes = scaler.limits, scaler.classes
    metrics.registry.register(ClusterCollector(scaler.broker, classes))
    server = None
    if metrics_port:
        server = serve(metrics.registry, settings.metrics_address, max(metrics_port, 0),
                       targets=settings.metrics_targets, name="autoscaler",
                       labels={"role": "autoscaler"})  # fmt: skip

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    for name in classes:
        lim = limits.for_class(name)
        console.print(
            f"{name}: {lim.min_nodes}..{lim.max_nodes} nodes, step {lim.max_step}, "
            f"idle window {lim.idle_window:g}s"
            + (", GPU (nodes only with work)" if lim.gpu else "")
        )
    where = f", metrics on {server.url}" if server else ""
    console.print(f"autoscaler: provider {provider.name}, every {interval:g}s{where}")
    try:
        scaler.run(interval, stop)
    finally:
        if server is not None:
            server.close()
        provider.close()
