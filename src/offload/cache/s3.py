"""S3BlobStore: the shared blob tier on S3 (or any S3-compatible server), over boto3.

Blob ``name`` (64 hex digits, already a keyed hash: see :mod:`offload.cache.keys`) is stored
at key ``<prefix><name[:2]>/<name>``. Only ciphertext envelopes ever reach this class.

Writes are create-if-absent: ``PutObject`` / ``CompleteMultipartUpload`` carry
``If-None-Match: *`` and a ``412 PreconditionFailed`` means "already there" (``put`` returns
False). Whether the server honours the header is detected once per store, on the first put,
with a probe object at ``<prefix>.probe/if-none-match`` (written twice; an ignored header or a
``501 NotImplemented`` means "unsupported"); where unsupported, ``put`` checks with HEAD
before writing instead (racy between two writers of the same name, which is harmless here:
both write a valid envelope of the same content, and every S3 write is atomic). Set
``S3Config.conditional_writes`` to skip the probe.

Errors: every boto3/botocore failure becomes a :class:`~offload.errors.CacheError`; an
endpoint that cannot be reached (refused, timed out, 5xx after retries) is
:class:`S3Unavailable`, so the tier above can tell "unreachable, try later" from "absent"
(:class:`~offload.errors.ObjectNotFound`) and from a configuration problem (missing bucket,
refused credentials: plain ``CacheError``). Retries: botocore's standard mode with
``max_attempts`` (default 3) and short connect timeouts, so an endpoint that is down fails
within a few seconds.

Transfers: files below ``S3Config.multipart_threshold`` go up as one streamed ``PutObject``,
larger ones as a multipart upload (:mod:`offload.cache.s3multipart`). Downloads are one
streamed ``GetObject`` copied in 1 MiB chunks, resumed after a broken stream with a ranged
``GetObject`` pinned by ``If-Match: <etag>``. Why these strategies and sizes: the
measurements in ``docs/benchmarks.md`` (section "S3 transfers").
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from offload.cache.blobs import NAME_RE, BlobStore, check_name
from offload.cache.envelope import write_pieces
from offload.cache.probe import probe
from offload.cache.s3multipart import upload_multipart
from offload.errors import CacheError, ObjectNotFound, StoreUnavailable

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_PART = 5 * MiB
COPY_CHUNK = 1 * MiB
PROBE_KEY = ".probe/if-none-match"


class S3Unavailable(StoreUnavailable):
    """The S3 endpoint cannot be reached (refused, timed out, or failing with 5xx)."""


@dataclass(frozen=True)
class S3Config:
    """Where and how to reach the bucket (built from offload's ``s3_*`` settings by
    :func:`offload.cache.factory.remote_tier`)."""

    bucket: str
    prefix: str = "offload/"
    endpoint_url: str | None = None
    region: str = "us-east-1"
    #: a CA bundle (PEM) to verify the endpoint's HTTPS certificate; None: the system CAs
    ca_bundle: str | None = None
    #: None: detect on the first put; True/False: trust the caller, no probe.
    conditional_writes: bool | None = None
    connect_timeout: float = 3.0
    read_timeout: float = 30.0
    max_attempts: int = 3
    #: Files of at least this size go up as multipart uploads of ``part_size`` parts.
    multipart_threshold: int = 64 * MiB
    part_size: int = 16 * MiB
    upload_concurrency: int = 4
    #: Keys per ListObjectsV2 page (S3's maximum is 1000).
    list_page_size: int = 1000

    def __post_init__(self) -> None:
        if not self.bucket:
            raise CacheError("S3 bucket name is empty")
        if self.prefix and not self.prefix.endswith("/"):
            object.__setattr__(self, "prefix", self.prefix + "/")
        if self.part_size < MIN_PART:
            raise CacheError(f"S3 part_size must be at least {MIN_PART} bytes")
        if self.max_attempts < 1 or self.upload_concurrency < 1:
            raise CacheError("S3 max_attempts and upload_concurrency must be at least 1")

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint_url or 'AWS ' + self.region}"


def _status(exc: bce.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(exc: bce.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3BlobStore(BlobStore):
    """Write-once blobs under ``<prefix><name[:2]>/<name>`` in one bucket."""

    def __init__(self, config: S3Config, client: Any = None) -> None:
        self.config = config
        self.client = client if client is not None else self._make_client(config)
        self._conditional = config.conditional_writes
        self._probe_lock = threading.Lock()

    @staticmethod
    def _make_client(config: S3Config) -> Any:
        botocore_config = Config(
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            retries={"mode": "standard", "max_attempts": config.max_attempts},
            max_pool_connections=max(10, config.upload_concurrency + 2),
            tcp_keepalive=True,
            # Custom endpoints (moto, MinIO, Ceph…) rarely resolve bucket subdomains.
            s3={"addressing_style": "path" if config.endpoint_url else "auto"},
        )
        try:
            return boto3.session.Session().client(
                "s3",
                endpoint_url=config.endpoint_url,
                region_name=config.region,
                config=botocore_config,
                verify=config.ca_bundle if config.ca_bundle else True,  # never off
            )
        except (bce.BotoCoreError, ValueError) as exc:
            raise CacheError(f"cannot set up an S3 client for {config.where}: {exc}") from None

    @property
    def conditional_writes(self) -> bool | None:
        """Whether puts rely on ``If-None-Match`` (None until the first put has detected it)."""
        return self._conditional

    def __repr__(self) -> str:
        return f"S3BlobStore({self.config.where})"

    def key(self, name: str) -> str:
        check_name(name)
        return f"{self.config.prefix}{name[:2]}/{name}"

    # -- errors ----------------------------------------------------------------------------

    def _fail(self, exc: Exception, what: str, name: str | None = None) -> NoReturn:
        """Raise the CacheError that ``exc`` (from boto3/botocore) means."""
        where = self.config.where
        if isinstance(exc, bce.ClientError):
            code, status = _code(exc), _status(exc)
            message = exc.response.get("Error", {}).get("Message", "")
            if code == "NoSuchBucket" or (status == 404 and name is None):
                raise CacheError(f"S3 bucket {self.config.bucket!r} does not exist ({where})")
            if status == 404 or code in ("NoSuchKey", "NotFound"):
                raise ObjectNotFound(name or "?") from None
            if status in (401, 403) or code in (
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "ExpiredToken",
            ):
                raise CacheError(
                    f"S3 refused {what} ({code or status}) at {where}: check the AWS "
                    f"credentials and the bucket policy"
                ) from None
            if status >= 500:
                raise S3Unavailable(
                    f"S3 failed {what} at {where}: {status} {code} {message}".rstrip()
                ) from None
            raise CacheError(f"S3 {what} failed at {where}: {code or status} {message}") from None
        if isinstance(exc, bce.SSLError):
            raise CacheError(
                f"TLS to {where} failed during {what}: {exc}; check OFFLOAD_S3_CA_BUNDLE (the "
                "CA that signed the endpoint's certificate) and the host in OFFLOAD_S3_ENDPOINT_URL"
            ) from None
        if isinstance(exc, bce.ConnectionError | bce.HTTPClientError | bce.IncompleteReadError):
            raise S3Unavailable(f"S3 unreachable during {what} ({where}): {exc}") from None
        if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
            raise CacheError(
                f"no usable AWS credentials for {where} (set AWS_ACCESS_KEY_ID / "
                f"AWS_SECRET_ACCESS_KEY, a profile or an instance role): {exc}"
            ) from None
        if isinstance(exc, bce.BotoCoreError):
            raise CacheError(f"S3 {what} failed at {where}: {exc}") from None
        raise exc

    def _call(self, what: str, fn: Callable[..., Any], name: str | None = None, **kw: Any) -> Any:
        try:
            return fn(Bucket=self.config.bucket, **kw)
        except (bce.BotoCoreError, bce.ClientError) as exc:
            self._fail(exc, what, name)

    # -- reads -----------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        try:
            self._call(f"HEAD of {name}", self.client.head_object, name, Key=self.key(name))
        except ObjectNotFound:
            return False
        return True

    def get(self, name: str, dest: Path) -> None:
        key = self.key(name)
        what = f"GET of {name}"
        resp = self._call(what, self.client.get_object, name, Key=key)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with tmp.open("wb") as out:
                self._stream(name, key, resp, out)
            os.replace(tmp, dest)  # no fsync: durability is the caller's (LocalBlobStore's)
            probe().remote_bytes("download", int(resp["ContentLength"]))
        except OSError as exc:
            resp["Body"].close()
            raise CacheError(f"cannot write {dest} from {self.config.where}: {exc}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def _stream(self, name: str, key: str, resp: dict[str, Any], out: IO[bytes]) -> None:
        """Copy the body into ``out``; resume after a broken stream, pinned to its ETag."""
        what = f"GET of {name}"
        size, etag = int(resp["ContentLength"]), resp.get("ETag")
        written, breaks = 0, 0
        while True:
            body = resp["Body"]
            try:
                for chunk in body.iter_chunks(COPY_CHUNK):
                    write_pieces(out, chunk)
                    written += len(chunk)
            except bce.BotoCoreError as exc:  # the connection broke mid-stream
                breaks += 1
                if breaks >= self.config.max_attempts:
                    self._fail(exc, what)
                log.info("S3 stream of %s broke at %d/%d bytes; resuming", key, written, size)
            finally:
                body.close()
            if written >= size:
                break
            extra = {"IfMatch": etag} if etag else {}
            resp = self._call(
                what, self.client.get_object, name, Key=key, Range=f"bytes={written}-", **extra
            )
            if not str(resp.get("ContentRange", "")).startswith(f"bytes {written}-"):
                out.seek(0)  # the server ignored Range: start again from the first byte
                out.truncate()
                written = 0
        if written != size:
            raise CacheError(f"S3 {what}: got {written} bytes, expected {size}")

    def names(self) -> Iterator[str]:
        prefix = self.config.prefix
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            pages = paginator.paginate(
                Bucket=self.config.bucket,
                Prefix=prefix,
                PaginationConfig={"PageSize": self.config.list_page_size},
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    rest = obj["Key"][len(prefix) :]
                    head, _, name = rest.partition("/")
                    if NAME_RE.match(name) and head == name[:2]:
                        yield name
        except (bce.BotoCoreError, bce.ClientError) as exc:
            self._fail(exc, "listing")

    # -- writes ----------------------------------------------------------------------------

    def delete(self, name: str) -> None:
        self._call(f"DELETE of {name}", self.client.delete_object, Key=self.key(name))

    def put(self, name: str, src: Path) -> bool:
        key = self.key(name)
        try:
            size = src.stat().st_size
        except OSError as exc:
            raise CacheError(f"cannot read {src} to upload it: {exc}") from None
        conditional = self._conditional_writes()
        if not conditional and self.has(name):
            return False
        extra = {"IfNoneMatch": "*"} if conditional else {}
        single = size < self.config.multipart_threshold
        what = f"PUT of {name}" if single else f"multipart upload of {name}"
        try:
            if single:
                with src.open("rb") as body:
                    self.client.put_object(Bucket=self.config.bucket, Key=key, Body=body, **extra)
            else:
                upload_multipart(
                    self.client,
                    self.config.bucket,
                    key,
                    src,
                    size=size,
                    part_size=self.config.part_size,
                    concurrency=self.config.upload_concurrency,
                    complete_args=extra,
                )
        except bce.ClientError as exc:
            status = _status(exc)
            # 412: already there; 409: a concurrent write of the same name (then it is there)
            if conditional and (status == 412 or (status == 409 and self.has(name))):
                return False
            self._fail(exc, what)
        except bce.BotoCoreError as exc:
            self._fail(exc, what)
        except OSError as exc:
            raise CacheError(f"cannot read {src} to upload it: {exc}") from None
        probe().remote_bytes("upload", size)
        return True

    # -- conditional-write detection -------------------------------------------------------

    def _conditional_writes(self) -> bool:
        if self._conditional is None:
            with self._probe_lock:
                if self._conditional is None:
                    self._conditional = self._probe()
                    log.info(
                        "S3 %s: conditional writes %s",
                        self.config.where,
                        "supported" if self._conditional else "NOT supported; HEAD before PUT",
                    )
        return self._conditional

    def _probe(self) -> bool:
        """Whether the server enforces ``If-None-Match: *`` on PutObject (writes a tiny probe)."""
        key = self.config.prefix + PROBE_KEY
        for _ in range(2):
            try:
                self.client.put_object(
                    Bucket=self.config.bucket, Key=key, Body=b"", IfNoneMatch="*"
                )
            except bce.ClientError as exc:
                status, code = _status(exc), _code(exc)
                if status == 412:
                    return True
                if status == 501 or code in ("NotImplemented", "InvalidArgument"):
                    return False
                self._fail(exc, "conditional-write probe")
            except bce.BotoCoreError as exc:
                self._fail(exc, "conditional-write probe")
        return False  # the second create-if-absent of the same key succeeded: header ignored
