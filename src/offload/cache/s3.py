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

Transfers. s3transfer's ``upload_file`` does not accept ``IfNoneMatch`` in ``ExtraArgs``
(s3transfer 0.19.3: not in ``ALLOWED_UPLOAD_ARGS`` nor ``COMPLETE_MULTIPART_ARGS``), so large
files go up through our own multipart upload: parts streamed from the file (never held in
memory), sent by a small thread pool, ``If-None-Match: *`` on the completion, the upload
aborted on any failure. Downloads are one streamed ``GetObject`` copied in 1 MiB chunks,
resumed after a broken stream with a ranged ``GetObject`` pinned by ``If-Match: <etag>``.

Chosen by measurement: moto 5.2.5 server on loopback, boto3/botocore 1.44.8, s3transfer
0.19.3, a 2-core VM shared with other jobs (hence the spread). MiB/s, median and range of
2-8 runs; RSS = the client process's peak (74 MiB after importing boto3 and offload)::

    upload                                          256 MiB          1 GiB        peak RSS
    one put_object (file streamed)                  178 (79-249)     164 (107-196)    75
    upload_file, default TransferConfig             192 (107-215)    135 (80-211)    105
      (8 MiB parts, 10 threads)
    upload_file, use_threads=False                   75 (60-90)      122 (108-135)    75
    upload_file, 64 MiB parts, 4 threads             72 (53-91)      105 (92-117)     86
    ours, 64 MiB parts x 1 thread                   104 (90-120)     108 (58-120)     87
    ours, 64 MiB x 2                                133 (73-151)     108 (57-136)     93
    ours, 128 MiB x 2                               150 (128-152)    143 (124-153)    93
    ours, 32 MiB x 4                                  -              156 (139-169)   100
    ours, 16 MiB x 2                                  -              189 (166-199)    93
    ours, 16 MiB x 4   <- chosen                    160 (92-221)     187 (89-235)    100
      (last 6 runs at 1 GiB, quieter machine:                        209 (172-235))
    ours, 16 MiB x 8                                  -              228 (216-229)   112
    ours, 8 MiB x 4                                   -              209 (141-220)   100

    download                                        256 MiB          1 GiB        peak RSS
    download_file, default TransferConfig            56 (55-59)       14 (12-15)     164
      (8 MiB ranged GETs, 10 threads)
    download_file, use_threads=False                 50 (49-52)       13 (12-14)     113
    download_file, 64 MiB ranges, 4 threads         334 (282-340)    102 (94-111)    186
    one get_object, shutil.copyfileobj 1 MiB       1262 (338-1348)   424 (306-824)    75
    ours: one get_object, iter_chunks(1 MiB)        620 (257-688)    352 (278-605)    87
      (then fsync + rename; the fsync is the gap to copyfileobj at 256 MiB: since dropped,
       the caller, LocalBlobStore, fsyncs when it commits the blob)

Ranged downloads are slow against moto because it materialises the whole object for every
range (cost grows with the object: 1 GiB default ranged download is 30x slower than one GET).
Real S3 serves ranges cheaply and parallel ranges help a single large download over a WAN;
that would be a ``download_concurrency`` knob, not needed for a local server. Uploads: moto
plus client-side hashing (SigV4 payload SHA-256 over http, CRC32 part checksums) saturate
the two cores near 200 MiB/s whatever the strategy; small parts pipelined over 4 threads are
the best multipart, and one PUT is as fast below a few hundred MiB, hence the 64 MiB
threshold (a failed PUT resends at most that much). Knobs are in :class:`S3Config`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from offload.cache.blobs import NAME_RE, BlobStore, check_name
from offload.errors import CacheError, ObjectNotFound, StoreUnavailable

if TYPE_CHECKING:
    from offload.config import Settings

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_PARTS = 10_000
MIN_PART = 5 * MiB
COPY_CHUNK = 1 * MiB
PROBE_KEY = ".probe/if-none-match"


class S3Unavailable(StoreUnavailable):
    """The S3 endpoint cannot be reached (refused, timed out, or failing with 5xx)."""


@dataclass(frozen=True)
class S3Config:
    """Where and how to reach the bucket. ``from_settings`` reads offload's ``s3_*`` settings."""

    bucket: str
    prefix: str = "offload/"
    endpoint_url: str | None = None
    region: str = "us-east-1"
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

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Config | None:
        """The S3 tier configured in ``settings``, or None when no bucket is set."""
        bucket = getattr(settings, "s3_bucket", None)
        if not bucket:
            return None
        return cls(
            bucket=bucket,
            prefix=getattr(settings, "s3_prefix", "offload/"),
            endpoint_url=getattr(settings, "s3_endpoint_url", None) or None,
            region=getattr(settings, "s3_region", "us-east-1"),
        )

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint_url or 'AWS ' + self.region}"


class _Exists(Exception):
    """Internal: a conditional write found the key already there."""


class _FileSlice:
    """A seekable read-only window ``[start, start + length)`` of a file: one part's body.

    botocore reads it to sign and checksum, seeks back, then sends it; only small buffers are
    ever in memory.
    """

    def __init__(self, path: Path, start: int, length: int) -> None:
        self._f: IO[bytes] = path.open("rb")
        self._start = start
        self._len = length
        self._pos = 0
        self._f.seek(start)

    def __len__(self) -> int:
        return self._len

    def read(self, amt: int | None = -1) -> bytes:
        left = self._len - self._pos
        n = left if amt is None or amt < 0 else min(amt, left)
        if n <= 0:
            return b""
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._len}[whence]
        self._pos = max(0, min(self._len, base + offset))
        self._f.seek(self._start + self._pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._f.close()


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
            )
        except (bce.BotoCoreError, ValueError) as exc:
            raise CacheError(f"cannot set up an S3 client for {config.where}: {exc}") from None

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore | None:
        config = S3Config.from_settings(settings)
        return None if config is None else cls(config)

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
            raise CacheError(f"TLS to {where} failed during {what}: {exc}") from None
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
                    out.write(chunk)
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
        try:
            if size < self.config.multipart_threshold:
                self._put_single(name, key, src, conditional)
            else:
                self._put_multipart(name, key, src, size, conditional)
        except _Exists:
            return False
        return True

    def _put_single(self, name: str, key: str, src: Path, conditional: bool) -> None:
        extra = {"IfNoneMatch": "*"} if conditional else {}
        try:
            with src.open("rb") as body:
                self.client.put_object(Bucket=self.config.bucket, Key=key, Body=body, **extra)
        except bce.ClientError as exc:
            if conditional and _status(exc) == 412:
                raise _Exists from None
            if conditional and _status(exc) == 409 and self.has(name):  # a concurrent write
                raise _Exists from None
            self._fail(exc, f"PUT of {name}")
        except bce.BotoCoreError as exc:
            self._fail(exc, f"PUT of {name}")
        except OSError as exc:
            raise CacheError(f"cannot read {src} to upload it: {exc}") from None

    def _checksum_args(self) -> dict[str, str]:
        """Mirror s3transfer: name a CRC32 part checksum unless the client opted out."""
        when = getattr(self.client.meta.config, "request_checksum_calculation", None)
        return {} if when == "when_required" else {"ChecksumAlgorithm": "CRC32"}

    def _put_multipart(self, name: str, key: str, src: Path, size: int, conditional: bool) -> None:
        what = f"multipart upload of {name}"
        part_size = max(self.config.part_size, -(-size // MAX_PARTS))
        checksum = self._checksum_args()
        upload = self._call(what, self.client.create_multipart_upload, Key=key, **checksum)
        upload_id = upload["UploadId"]
        bucket = self.config.bucket

        def send(number: int) -> dict[str, Any]:
            start = (number - 1) * part_size
            body = _FileSlice(src, start, min(part_size, size - start))
            try:
                resp = self.client.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    **checksum,
                )
            finally:
                body.close()
            part = {"PartNumber": number, "ETag": resp["ETag"]}
            if resp.get("ChecksumCRC32"):
                part["ChecksumCRC32"] = resp["ChecksumCRC32"]
            return part

        count = max(1, -(-size // part_size))
        try:
            try:
                if self.config.upload_concurrency == 1 or count == 1:
                    parts = [send(n) for n in range(1, count + 1)]
                else:
                    workers = min(self.config.upload_concurrency, count)
                    with ThreadPoolExecutor(workers, thread_name_prefix="s3-part") as pool:
                        parts = list(pool.map(send, range(1, count + 1)))
                extra = {"IfNoneMatch": "*"} if conditional else {}
                self.client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **extra,
                )
            except bce.ClientError as exc:
                if conditional and _status(exc) == 412:
                    raise _Exists from None
                if conditional and _status(exc) == 409 and self.has(name):
                    raise _Exists from None
                self._fail(exc, what)
            except bce.BotoCoreError as exc:
                self._fail(exc, what)
            except OSError as exc:
                raise CacheError(f"cannot read {src} to upload it: {exc}") from None
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

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
