"""Inputs given by location, fetched by the node that runs the job into its sealed store.

:class:`Fetcher` turns an input URI (:mod:`offload.spec.uris`) into a content id:

* a pinned URI (``#sha256=<hex>``) whose content the store holds is not fetched at all;
* a URI fetched before is remembered in Redis (``offload:fetched:<hash>``, see
  :mod:`offload.broker.keys`; expires after ``Settings.memo_ttl``) with the validators it
  was fetched at (``ETag``, ``Last-Modified``). While its object is in the store (the local
  tier or S3: shared by every node), an ``http(s)://`` URI is asked for with
  ``If-None-Match`` / ``If-Modified-Since`` (a ``304`` means "unchanged": nothing moves) and
  an ``s3://`` one with ``HEAD`` (same ``ETag``: nothing moves);
* otherwise the body is streamed straight into :meth:`SealedStore.put_stream` (sealed as it
  is read, constant memory; a body cut short is never stored: the temp file is dropped) —
  or, for a job about to run (:meth:`Fetcher.fetch_to`), into the plaintext file the job
  will read, hashed as it is written: the job starts once its bytes are on disk, and their
  sealed copy is made from that file by a thread of the fetcher's (:class:`Sealing`) while
  the job runs. The URI is remembered once the copy is in the store.

HTTP through urllib3 (boto3's own): redirects followed up to ``redirects`` (credentials are
not sent to another host), connection errors, timeouts and ``408/429/5xx`` retried with
exponential backoff (``Retry-After`` honoured); a body broken mid-way is fetched again, up
to ``attempts`` in all. Then :class:`FetchFailed` says why with the status code and the URI
redacted of credentials. ``s3://`` through boto3, with the user-data S3 settings
(``OFFLOAD_DELIVER_*``, shared with :mod:`offload.worker.deliver`).
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit, urlunsplit

import boto3
import botocore.exceptions as bce
import redis
import urllib3
from botocore.config import Config

from offload.broker import keys
from offload.cache import jobseal
from offload.cache.envelope import Hasher, write_pieces
from offload.cache.keys import ClusterKey
from offload.cache.store import Store
from offload.errors import CacheError, StoreUnavailable
from offload.spec.uris import InputURI, redact, redact_text, uri_digest

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class FetchFailed(CacheError):
    """An input URI could not be fetched (or its content is not the pinned one)."""


@dataclass(frozen=True)
class UserS3:
    """How to reach the user's own S3 (``s3://`` inputs and deliveries)."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    ca_bundle: str | None = None
    profile: str | None = None
    max_attempts: int = 5
    timeout: float = 30.0

    def client(self, pool: int = 10) -> Any:
        config = Config(
            connect_timeout=min(self.timeout, 10.0),
            read_timeout=self.timeout,
            retries={"mode": "standard", "max_attempts": self.max_attempts},
            max_pool_connections=pool,
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
        )
        try:
            session = boto3.session.Session(profile_name=self.profile)
            return session.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                config=config,
                verify=self.ca_bundle or True,
            )
        except (bce.BotoCoreError, ValueError) as exc:
            raise CacheError(f"cannot set up an S3 client for user data: {exc}") from None


@dataclass(frozen=True)
class FetchConfig:
    ttl: int  # how long a fetch is remembered (Settings.memo_ttl)
    attempts: int = 4
    timeout: float = 30.0
    backoff: float = 0.5
    redirects: int = 5
    s3: UserS3 = UserS3()
    ca_bundle: str | None = None  # for https:// (None: the system's CAs)


@dataclass(frozen=True)
class Remembered:
    oid: str
    etag: str = ""
    modified: str = ""


class Fetcher:
    """Fetches input URIs into ``store``, remembering them in Redis through ``r``."""

    def __init__(self, store: Store, r: redis.Redis, key: ClusterKey, config: FetchConfig):
        self.store, self.r, self.key, self.config = store, r, key, config
        self.http = urllib3.PoolManager(
            num_pools=8, maxsize=4, ca_certs=config.ca_bundle, retries=False
        )
        self._s3: Any = None

    # -- the memo --------------------------------------------------------------------------

    def memo_name(self, uri: InputURI) -> str:
        digest = uri_digest(uri.url)
        if uri.has_credentials:  # a URI's password must not be guessable from its hash
            digest = jobseal.memo_key(self.key, f"fetch:{digest}")
        return keys.fetched(digest)

    def remembered(self, uri: InputURI) -> Remembered | None:
        try:
            raw: Any = self.r.get(self.memo_name(uri))
        except redis.RedisError as exc:  # Redis away: fetch it, as if never fetched
            log.warning("fetch memo of %s unreadable (%s)", redact(uri.url), exc)
            return None
        if not raw:
            return None
        try:
            data = json.loads(raw)
            memo = Remembered(
                str(data["oid"]), str(data.get("etag", "")), str(data.get("modified", ""))
            )
        except (ValueError, KeyError, TypeError):
            return None
        return memo if self._stored(memo.oid) else None

    def remember(self, uri: InputURI, memo: Remembered) -> None:
        if not (memo.etag or memo.modified):
            return  # nothing to tell a changed object by: fetched again next time
        value = json.dumps({"oid": memo.oid, "etag": memo.etag, "modified": memo.modified})
        try:
            self.r.set(self.memo_name(uri), value, ex=self.config.ttl)
        except redis.RedisError as exc:  # the next job fetches it again; nothing else lost
            log.warning("fetch memo of %s not written (%s)", redact(uri.url), exc)

    def _stored(self, oid: str) -> bool:
        try:
            return self.store.has(oid)
        except StoreUnavailable:
            return False  # fetch it again: the put holds it locally until S3 is back

    # -- fetching --------------------------------------------------------------------------

    def fetch(self, uri: InputURI) -> str:
        """The content id of ``uri``'s content, fetched into the store unless known."""
        oid, _ = self._resolve(uri, None)
        return oid

    def fetch_to(self, uri: InputURI, dest: Path) -> tuple[str, Future[None] | None]:
        """The content id of ``uri``'s content and, when it had to be fetched, the sealing of
        its copy into the store: then ``dest`` (a new file) holds the bytes in plaintext,
        for a job to read at once; the copy is sealed from it in the background (the file
        may be renamed, or removed, meanwhile). With no future the store holds the content
        and ``dest`` was not written."""
        return self._resolve(uri, dest)

    def _resolve(self, uri: InputURI, dest: Path | None) -> tuple[str, Future[None] | None]:
        if uri.pin and self._stored(uri.pin):
            return uri.pin, None
        memo = self.remembered(uri)
        fetch = self._s3_fetch if uri.scheme == "s3" else self._http_fetch
        last = ""
        for attempt in range(self.config.attempts):
            if attempt:
                time.sleep(min(self.config.backoff * 2 ** (attempt - 1), 30.0))
            try:
                got = fetch(uri, memo, dest)
                break
            except _Broken as exc:  # cut short mid-body: fetch the whole again
                last = str(exc)
                log.warning("fetching %s broke off (%s); trying again", redact(uri.url), last)
        else:
            _drop(dest)
            raise FetchFailed(f"{redact(uri.url)}: {last} (after {self.config.attempts} attempts)")
        if uri.pin and got.oid != uri.pin:
            _drop(dest)
            raise FetchFailed(
                f"{redact(uri.url)}: the content fetched is {got.oid}, not the pinned {uri.pin}"
            )
        if dest is not None and got is not memo:  # fetched now, into dest
            return got.oid, self.sealing.keep(dest, got.oid, lambda: self.remember(uri, got))
        if memo is None or memo != got:
            self.remember(uri, got)
        return got.oid, None

    @functools.cached_property
    def sealing(self) -> Sealing:
        return Sealing(self.store)

    def _take(self, body: Any, dest: Path | None) -> str:
        """The content id of ``body``, sealed into the store, or written to ``dest``."""
        if dest is None:
            return self.store.put_stream(body)
        with dest.open("wb") as out, Hasher() as hasher:  # from the start on every try
            chunks = (
                body.chunks() if isinstance(body, _Body) else iter(lambda: body.read(1 << 20), b"")
            )
            for chunk in chunks:
                hasher.update(chunk)  # in its thread, while the next chunk is written
                write_pieces(out, chunk)
            return hasher.oid()

    def _http_fetch(
        self, uri: InputURI, memo: Remembered | None, dest: Path | None = None
    ) -> Remembered:
        url, headers = _auth(uri.url)
        headers["Accept-Encoding"] = "identity"  # the bytes of the file, as stored
        if memo is not None:
            if memo.etag:
                headers["If-None-Match"] = memo.etag
            if memo.modified:
                headers["If-Modified-Since"] = memo.modified
        retry = urllib3.Retry(
            total=self.config.attempts + self.config.redirects,
            connect=self.config.attempts - 1,
            read=self.config.attempts - 1,
            status=self.config.attempts - 1,
            redirect=self.config.redirects,
            status_forcelist=RETRY_STATUS,
            backoff_factor=self.config.backoff,
            backoff_max=30.0,
            raise_on_status=False,
            respect_retry_after_header=True,
        )
        timeout = urllib3.Timeout(connect=min(self.config.timeout, 10.0), read=self.config.timeout)
        shown = redact(uri.url)
        try:
            resp = self.http.request(
                "GET", url, headers=headers, retries=retry, timeout=timeout, preload_content=False
            )
        except urllib3.exceptions.MaxRetryError as exc:
            why = "too many redirects" if "redirect" in str(exc.reason).lower() else exc.reason
            raise FetchFailed(f"{shown}: {redact_text(str(why))}") from None
        except urllib3.exceptions.HTTPError as exc:
            raise FetchFailed(f"{shown}: {redact_text(str(exc))}") from None
        try:
            if resp.status == 304 and memo is not None:
                return memo
            if resp.status != 200:
                raise FetchFailed(f"HTTP {resp.status} {resp.reason or ''} from {shown}".strip())
            etag = resp.headers.get("ETag", "")
            modified = resp.headers.get("Last-Modified", "")
            body = _Body(resp)
            try:
                oid = self._take(body, dest)
            except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
                if isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError):
                    raise
                raise _Broken(redact_text(str(exc)) or type(exc).__name__) from None
            finally:
                body.close()
            return Remembered(oid, etag, modified)
        finally:
            resp.release_conn()

    def _s3_fetch(
        self, uri: InputURI, memo: Remembered | None, dest: Path | None = None
    ) -> Remembered:
        parts = urlsplit(uri.url)
        bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
        if self._s3 is None:
            self._s3 = self.config.s3.client()
        shown = redact(uri.url)
        try:
            head = self._s3.head_object(Bucket=bucket, Key=key)
            etag = str(head.get("ETag", ""))
            if memo is not None and memo.etag and memo.etag == etag:
                return memo
            body = self._s3.get_object(Bucket=bucket, Key=key, IfMatch=etag)["Body"]
        except bce.ClientError as exc:
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            raise FetchFailed(f"S3 {status} {err.get('Code', '')} for {shown}") from None
        except bce.BotoCoreError as exc:
            raise FetchFailed(f"cannot reach S3 for {shown}: {exc}") from None
        try:
            oid = self._take(body, dest)
        except (bce.BotoCoreError, urllib3.exceptions.HTTPError, ConnectionError) as exc:
            raise _Broken(str(exc)) from None
        finally:
            body.close()
        return Remembered(oid, etag)


class Sealing:
    """Sealed copies of fetched files made into ``store`` by one thread, in order: a job
    reads its input while the node seals it. :meth:`keep` opens the file at once, so the
    file may be renamed into a workspace or removed before its turn comes. A copy that
    cannot be made (the disk full) is logged and skipped: the URI is not remembered, so it
    is fetched again next time; nothing else depends on it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="offload-seal")

    def keep(self, path: Path, oid: str, then: Callable[[], None]) -> Future[None]:
        src = path.open("rb")
        return self.pool.submit(self._seal, src, oid, then)

    def _seal(self, src: BinaryIO, oid: str, then: Callable[[], None]) -> None:
        with src:
            try:
                if not self.store.has(oid):
                    sealed = self.store.put_stream(src)
                    if sealed != oid:  # the file changed under us: not the fetched bytes
                        log.error("fetched %s sealed as %s: not kept", oid, sealed)
                        self.store.delete(sealed)
                        return
            except (CacheError, OSError) as exc:
                log.warning("sealed copy of fetched %s not made: %s", oid, exc)
                return
        then()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _drop(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


class _Broken(Exception):
    """A body broken off mid-way: worth fetching again."""


class _Body:
    """A response body read ahead by a thread of its own into a ring of ``ahead`` buffers of
    ``chunk`` bytes: the socket is read while the last chunk is hashed, sealed or written
    (all of which release the GIL), in constant memory. :meth:`chunks` hands out the
    buffers themselves (no allocation per chunk: fresh memory costs a page fault per 4 KiB,
    more than the copy); :meth:`read` is the stream :meth:`Store.put_stream` reads.

    An undecoded body is read straight into the buffers (``readinto`` of the response's
    ``http.client`` body, which follows chunked framing itself; a body that ends before its
    ``Content-Length`` is raised as cut short here); a compressed one (``Content-Encoding``)
    through urllib3's decoder."""

    def __init__(self, resp: Any, chunk: int = 1 << 20, ahead: int = 8) -> None:
        self.resp = resp
        self.decode = bool(resp.headers.get("Content-Encoding"))  # else bytes as sent
        self.raw = getattr(resp, "_fp", None)
        self.readinto = None if self.decode else getattr(self.raw, "readinto", None)
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(ahead):
            self.free.put(bytearray(chunk))
        self.filled: queue.Queue[tuple[bytearray, int] | BaseException] = queue.Queue()
        self.buffer = b""
        self.done = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read_ahead, name="fetch-read", daemon=True)
        self.thread.start()

    def _read_ahead(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    buf = self.free.get(timeout=0.5)
                except queue.Empty:
                    continue
                n = self._fill(buf)
                self.filled.put((buf, n))
                if not n:
                    return
        except BaseException as exc:  # handed to the reader, raised there
            self.filled.put(exc)

    def _fill(self, buf: bytearray) -> int:
        if self.readinto is not None:
            n = int(self.readinto(buf))
            left = getattr(self.raw, "length", None)  # http.client's count of bytes to come
            if not n and left:  # closed before Content-Length: readinto says only "0"
                raise http.client.IncompleteRead(b"", left)
            return n
        data = self.resp.read(len(buf), decode_content=self.decode)
        buf[: len(data)] = data
        return len(data)

    def _next(self) -> tuple[bytearray, int]:
        item = self.filled.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def chunks(self) -> Iterator[memoryview]:
        """The body in chunks, each a view of a buffer of the ring, valid until the second
        next chunk is asked for (time for a hash of it to end in another thread)."""
        held: list[bytearray] = []
        while True:
            buf, n = self._next()
            if len(held) == 2:
                self.free.put(held.pop(0))
            if not n:
                self.done = True
                return
            held.append(buf)
            yield memoryview(buf)[:n]

    def read(self, n: int = -1) -> bytes:
        while not self.done and (n < 0 or len(self.buffer) < n):
            buf, got = self._next()
            if not got:
                self.done = True
                break
            self.buffer += bytes(buf[:got])
            self.free.put(buf)
        if n < 0:
            out, self.buffer = self.buffer, b""
        else:
            out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def close(self) -> None:
        """Stop reading ahead (the body was abandoned, or broke)."""
        self.stop.set()
        self.thread.join(timeout=5)


def _auth(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its userinfo, and the Basic auth header it stood for."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, {}
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    netloc = parts.netloc.rsplit("@", 1)[1]
    headers = dict(urllib3.make_headers(basic_auth=f"{user}:{password}"))
    return urlunsplit(parts._replace(netloc=netloc)), headers
