"""Inputs given as ``s3://bucket/key`` URIs: imported into the content store once, then
addressed by id. The import is remembered by the object's URI and ETag, so an unchanged
object is not downloaded twice while the memo lives (``offload:import:<hash>`` in Redis,
expiring after ``ttl`` seconds: ``Settings.memo_ttl``; see :mod:`offload.broker.keys`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
import redis
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from offload.broker import keys
from offload.cache.store import Store
from offload.errors import CacheError, SpecError, StoreUnavailable

_UNREACHABLE = (BotoConnectionError, HTTPClientError)  # refused, timed out, dropped


def parse_s3_uri(uri: str, field: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not bucket or not key:
        raise SpecError(field, f"expected s3://bucket/key, got {uri!r}")
    return bucket, key


def import_s3(
    uri: str,
    store: Store,
    r: redis.Redis,
    *,
    field: str,
    ttl: int,
    endpoint_url: str | None = None,
    client: Any = None,
) -> str:
    """The content id of the object at ``uri``, importing it into ``store`` when needed.

    The import is remembered for ``ttl`` seconds. :class:`SpecError` (naming ``field``) when
    the object cannot be read, :class:`StoreUnavailable` when S3 cannot be reached.
    """
    bucket, key = parse_s3_uri(uri, field)
    s3 = client or boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        config=Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5),
    )
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        raise SpecError(field, f"cannot read {uri}: {exc}") from None
    except _UNREACHABLE as exc:
        raise StoreUnavailable(f"cannot reach S3 for {uri}: {exc}") from exc
    except BotoCoreError as exc:
        raise CacheError(f"cannot read {uri} from S3: {exc}") from exc
    memo = keys.s3_import(hashlib.sha256(f"{uri}@{head.get('ETag', '')}".encode()).hexdigest())
    known: Any = r.get(memo)
    if known and store.has(str(known)):
        return str(known)
    fd, tmp = tempfile.mkstemp(prefix="offload-import-")
    try:
        with os.fdopen(fd, "wb") as out:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"]
            for chunk in body.iter_chunks(1024 * 1024):
                out.write(chunk)
        oid = store.put_file(Path(tmp))
    except _UNREACHABLE as exc:
        raise StoreUnavailable(f"importing {uri} failed, S3 unreachable: {exc}") from exc
    except (ClientError, BotoCoreError) as exc:
        raise CacheError(f"importing {uri} failed: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    r.set(memo, oid, ex=ttl)
    return oid
