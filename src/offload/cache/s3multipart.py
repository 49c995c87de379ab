"""Multipart uploads for :class:`~offload.cache.s3.S3BlobStore`, create-if-absent.

s3transfer's ``upload_file`` does not accept ``IfNoneMatch`` (s3transfer 0.19.3: not in
``ALLOWED_UPLOAD_ARGS`` nor ``COMPLETE_MULTIPART_ARGS``), so large files go up through this
module: parts streamed from the file (never held in memory), sent by a small thread pool,
the caller's ``If-None-Match: *`` on the completion, the upload aborted on any failure.
Part size and concurrency were chosen by measurement (``docs/benchmarks.md``).

Errors are botocore's (and ``OSError`` reading the file), raised as they come: the store
decides what they mean.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

MAX_PARTS = 10_000


class FileSlice:
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


def _checksum_args(client: Any) -> dict[str, str]:
    """Mirror s3transfer: name a CRC32 part checksum unless the client opted out."""
    when = getattr(client.meta.config, "request_checksum_calculation", None)
    return {} if when == "when_required" else {"ChecksumAlgorithm": "CRC32"}


def upload_multipart(
    client: Any,
    bucket: str,
    key: str,
    src: Path,
    *,
    size: int,
    part_size: int,
    concurrency: int,
    complete_args: dict[str, str],
) -> None:
    """Upload ``src`` (``size`` bytes) to ``key`` in parts; ``complete_args`` go on the
    completion (``IfNoneMatch``). A failed upload is aborted before the error is raised."""
    part_size = max(part_size, -(-size // MAX_PARTS))
    checksum = _checksum_args(client)
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, **checksum)["UploadId"]

    def send(number: int) -> dict[str, Any]:
        start = (number - 1) * part_size
        body = FileSlice(src, start, min(part_size, size - start))
        try:
            resp = client.upload_part(
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
        if concurrency == 1 or count == 1:
            parts = [send(n) for n in range(1, count + 1)]
        else:
            with ThreadPoolExecutor(min(concurrency, count), thread_name_prefix="s3-part") as pool:
                parts = list(pool.map(send, range(1, count + 1)))
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            **complete_args,
        )
    except BaseException:
        with contextlib.suppress(Exception):
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
