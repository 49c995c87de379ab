"""Settings, read once at the edge (CLI, entry points) from ``OFFLOAD_*`` variables.

Every default is named here; library code receives a :class:`Settings` instance and never
reads the environment itself.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from offload.errors import ConfigError
from offload.spec import (
    DEFAULT_CLASSES,
    GiB,
    MiB,
    ResourceClass,
    RetryPolicy,
    parse_memory,
    parse_size,
)

DEFAULT_LOG_MAX_BYTES = 10 * MiB
HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


class Settings(BaseSettings):
    """All of offload's settings. Environment variable = ``OFFLOAD_`` + upper-case name."""

    model_config = SettingsConfigDict(env_prefix="OFFLOAD_", extra="ignore", frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    # TLS towards Redis (rediss:// URLs; verification is always on): the CA that signed the
    # server's certificate, and a client certificate and key for mutual TLS. Used by every
    # Redis client: kombu (Celery), redis-py and Flower (broker/connection.py).
    redis_ca: Path | None = None
    redis_cert: Path | None = None
    redis_key: Path | None = None
    # this process's Redis ACL user (`offload acl`); also accepted in the URL
    redis_user: str | None = None
    redis_password: SecretStr | None = None
    # the Redis user an autoscaler gives the worker nodes it starts (`offload up`: the worker
    # role's); unset, they get this process's own
    node_redis_user: str | None = None
    node_redis_password: SecretStr | None = None
    # the Sentinel master name for sentinel:// URLs (sentinel://h1:26379;sentinel://h2:26379/0)
    redis_sentinel_master: str = Field(default="mymaster", min_length=1)
    # sentinel:// only: TLS to the Sentinels and to the master they name (OFFLOAD_REDIS_CA,
    # _CERT, _KEY as for rediss://), and the Sentinels' own password (their requirepass, or
    # an ACL user of theirs); the master's credentials are OFFLOAD_REDIS_USER / _PASSWORD
    redis_sentinel_tls: bool = False
    redis_sentinel_user: str | None = None
    redis_sentinel_password: SecretStr | None = None
    visibility_margin: int = Field(default=600, ge=1)
    home: Path = Field(default_factory=lambda: Path.home() / ".offload")
    cache_dir: Path | None = None
    cache_budget: int | None = None
    key_file: Path | None = None
    s3_bucket: str | None = None
    s3_prefix: str = "offload/"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_ca_bundle: Path | None = None  # CA bundle (PEM) for S3 over HTTPS; None: system CAs
    # Data in and out by location (cache/fetch.py, worker/deliver.py). The user's own S3
    # (s3:// inputs a node fetches, deliveries): endpoint and region default to the s3_*
    # ones; credentials come from boto3's chain (OFFLOAD_DELIVER_PROFILE: a named profile).
    deliver_endpoint_url: str | None = None
    deliver_region: str | None = None
    deliver_ca_bundle: Path | None = None
    deliver_profile: str | None = None
    deliver_attempts: int = Field(default=3, ge=1, le=10)
    # URL inputs: tries of a whole fetch, seconds per connect/read, backoff base, redirects
    fetch_attempts: int = Field(default=4, ge=1, le=20)
    fetch_timeout: float = Field(default=30.0, gt=0)
    fetch_backoff: float = Field(default=0.5, ge=0)
    fetch_redirects: int = Field(default=5, ge=0, le=20)
    classes: tuple[ResourceClass, ...] = DEFAULT_CLASSES
    default_timeout: float = Field(default=3600.0, gt=0)
    max_timeout: float = Field(default=24 * 3600.0, gt=0)
    node_name: str = Field(default_factory=socket.gethostname)
    # Admission (worker/admission.py): a node runs a job only while the CPUs, memory and GPUs
    # of what its machine runs, plus the job, fit the machine's allocatable room: its CPUs
    # (node_cpus, default all) and its memory (node_memory, default all) less
    # node_memory_reserve for the worker and the engine. Nodes naming the same ``machine``
    # (default: the host name; the embedded worker and local-provider nodes) share one room.
    # worker_slots caps the jobs a node runs at once (default: 2 per CPU, 2..64).
    worker_slots: int | None = Field(default=None, ge=1, le=1024)
    machine: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9._-]{1,200}$")
    node_cpus: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    node_memory: int | None = Field(default=None, gt=0)
    node_memory_reserve: int = Field(default=512 * MiB, ge=0)
    # a job finding no room waits this long (polling), then goes back to its queue (no retry
    # spent); one that waited longer than admission_starvation has the next room kept for it
    admission_wait: float = Field(default=30.0, gt=0)
    admission_starvation: float = Field(default=60.0, ge=0)
    worker_classes: tuple[str, ...] | None = None
    container_user: str = "65534:65534"
    pids_limit: int = Field(default=512, ge=16)
    tmpfs_size: str = "64m"
    log_max_entries: int = Field(default=10_000, ge=100)
    # bytes of output kept per job, all attempts together (broker/logs.py); then a marker
    log_max_bytes: int = Field(default=DEFAULT_LOG_MAX_BYTES, ge=1024)
    # the embedded redis-server's maxmemory (policy noeviction: full means writes refused)
    redis_max_memory: int = Field(default=1 * GiB, ge=16 * MiB)
    # how long history is kept (in the archive; Redis's own copy is a safety net), then pruned
    record_ttl: int = Field(default=30 * 24 * 3600, ge=60)
    # seconds after its end a job leaves Redis for the archive (broker/archive.py)
    archive_after: float = Field(default=300.0, ge=0)
    # the same for an array's item (at most archive_after): items end by the hundred a second
    archive_items_after: float = Field(default=30.0, ge=0)
    archive_batch: int = Field(default=500, ge=1, le=10_000)  # jobs per segment, at most
    memo_ttl: int = Field(default=30 * 24 * 3600, ge=60)
    pull_timeout: float = Field(default=60.0, gt=0)
    autoscale_min: int = Field(default=0, ge=0)
    autoscale_max: int = Field(default=4, ge=0)
    autoscale_max_step: int = Field(default=4, ge=1)
    autoscale_idle_window: float = Field(default=60.0, ge=0)
    autoscale_jobs_per_node: int | None = Field(default=None, ge=1)
    # per class overrides, e.g. '{"cpu-small": {"min_nodes": 1, "max_nodes": 8}}'
    autoscale: dict[str, dict[str, Any]] = Field(default_factory=dict)
    docker_worker_image: str = "offload/worker"
    aws_group_name: str = "offload-{class}"
    aws_region: str | None = None  # None: s3_region
    aws_endpoint_url: str | None = None
    aws_key_parameter: str = "/offload/cluster-key"
    aws_env_parameter: str | None = None
    aws_install: str = "offload"
    flower_address: str = "127.0.0.1"
    flower_port: int = Field(default=5555, ge=1, le=65535)
    # Flower's basic auth, "user:password"; required for a non-loopback flower_address unless
    # Flower's OAuth is configured (flower_auth_provider + flower_auth_emails, Flower's --auth
    # regex; the FLOWER_OAUTH2_* variables as Flower documents them)
    flower_auth: SecretStr | None = None
    flower_auth_provider: str | None = None
    flower_auth_emails: str | None = None
    # Docker networks a job may name (`network="orders-db"`) instead of full network access
    job_networks: Annotated[tuple[str, ...], NoDecode] = ()
    provider: str = "manual"  # who started this node: manual, local, docker, aws
    heartbeat_interval: float = Field(default=2.0, gt=0)
    lost_after: float = Field(default=15.0, gt=0)  # no heartbeat this long: the node is lost
    # Ownership (broker/sweeper.py): each attempt's lease, renewed by its worker; the sweeper
    # requeues jobs whose lease expired, republishes lost messages, fails poison jobs.
    lease_ttl: float = Field(default=20.0, ge=2)
    sweep_interval: float = Field(default=5.0, gt=0)
    lost_message_grace: float = Field(default=30.0, gt=0)
    max_node_losses: int = Field(default=3, ge=1)  # attempts dying with their worker → failed
    # Every Docker engine call of a worker is bounded by this (seconds), pings too: an engine
    # that does not answer within it is "engine down" (worker/engine.py). At most 10, so a
    # job's timeout is kept within T + 15 s even when its engine hangs.
    engine_timeout: float = Field(default=10.0, gt=0, le=10)
    # The cluster's default retry policy (JSON, fields of offload.spec.RetryPolicy), which a
    # job's own `retry` overrides field by field.
    retry_policy: dict[str, Any] = Field(default_factory=dict)
    # Locality (broker/routing.py): a job goes to the queue of a live node of its class with a
    # free slot whose cache holds the most of its input bytes; one not started there within
    # locality_grace seconds moves to its class queue. Nodes index their cached objects of at
    # least locality_min_bytes, at most locality_max_objects of them (cache/objindex.py).
    locality: bool = True
    locality_grace: float = Field(default=10.0, gt=0)
    locality_min_bytes: int = Field(default=1 * MiB, ge=0)
    locality_max_objects: int = Field(default=10_000, ge=1)
    # Prometheus metrics of this process (docs/metrics.md): a worker node's own figures, the
    # autoscaler's cluster-wide ones. metrics_port None (unset or empty): a worker serves none
    # (the autoscaler: 9464); 0: any free port. Each serving process writes where it listens
    # to <home>/run/metrics/<name>.json (Prometheus file_sd). node_metrics_port: the port an
    # autoscaler gives the nodes it starts (None: none; 0: any free port each).
    metrics_address: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    node_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # the fraction of Redis's maxmemory (INFO memory) above which Redis counts as too full:
    # only the gauge offload_redis_high_water_bytes for now (no maxmemory: no mark)
    redis_high_water: float = Field(default=0.8, gt=0, le=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments and ``OFFLOAD_*`` variables only: offload reads no ``.env`` file and no
        secrets folder, so the sources that would look for each field there are left out
        (half of the time ``Settings()`` took at every start)."""
        return init_settings, env_settings

    @field_validator("metrics_port", "node_metrics_port", mode="before")
    @classmethod
    def _port(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("metrics_address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not HOSTNAME.fullmatch(value):
                raise ValueError(
                    f"OFFLOAD_METRICS_ADDRESS: {value!r} is not an IP address or host name"
                ) from None
        return value

    @field_validator("classes", "autoscale", "retry_policy", mode="before")
    @classmethod
    def _classes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value)
        return value

    @field_validator("retry_policy")
    @classmethod
    def _retry_policy(cls, value: dict[str, Any]) -> dict[str, Any]:
        RetryPolicy.model_validate(value)  # names the bad field, at start-up
        return value

    @field_validator("cache_budget", mode="before")
    @classmethod
    def _budget(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_memory(value) if value.strip() else None
        return value

    @field_validator("node_memory", mode="before")
    @classmethod
    def _node_memory(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_memory(value) if value.strip() else None
        return value

    @field_validator(
        "log_max_bytes",
        "redis_max_memory",
        "locality_min_bytes",
        "node_memory_reserve",
        mode="before",
    )
    @classmethod
    def _size(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_size(value)
        return value

    @field_validator("job_networks", mode="before")
    @classmethod
    def _job_networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
            value = [v.strip() for v in value if v.strip()]
        return value

    @field_validator("redis_ca", "redis_cert", "redis_key", "s3_ca_bundle", "deliver_ca_bundle")
    @classmethod
    def _pem_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {str(value)!r}")
        return value

    @field_validator("worker_classes", mode="before")
    @classmethod
    def _worker_classes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] or None
        return value

    @property
    def store_dir(self) -> Path:
        return self.cache_dir or self.home / "cache"

    @property
    def key_path(self) -> Path:
        return self.key_file or self.home / "key"

    @property
    def visibility_timeout(self) -> int:
        """Broker redelivery window: above the longest job a worker may run."""
        return int(self.max_timeout) + self.visibility_margin

    def flower_credentials(self) -> tuple[str, str] | None:
        """Flower's basic-auth user and password, or None; a malformed value is refused
        (without echoing it: it is a secret)."""
        if self.flower_auth is None:
            return None
        user, colon, password = self.flower_auth.get_secret_value().partition(":")
        if not colon or not user or not password:
            raise ConfigError("OFFLOAD_FLOWER_AUTH: expected user:password (both non-empty)")
        return user, password

    @property
    def metrics_targets(self) -> Path:
        """Where serving processes say where they listen (Prometheus file_sd JSON files)."""
        return self.home / "run" / "metrics"

    @property
    def flower_url(self) -> str:
        return f"http://{self.flower_address}:{self.flower_port}"

    @property
    def work_dir(self) -> Path:
        """This node's job work folders (plaintext inputs and outputs while a job runs)."""
        return self.home / "work" / self.node_name

    @property
    def journal_dir(self) -> Path:
        """This node's journal of outcomes reached while Redis was away."""
        return self.home / "journal" / self.node_name

    def resource_class(self, name: str) -> ResourceClass:
        for c in self.classes:
            if c.name == name:
                return c
        raise ConfigError(
            f"unknown resource class {name!r}; known: {[c.name for c in self.classes]}"
        )


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, turning bad values into :class:`ConfigError`."""
    try:
        return Settings(**overrides)
    except (ValidationError, json.JSONDecodeError, SettingsError) as exc:
        raise ConfigError(f"invalid OFFLOAD_* setting: {exc}") from None
