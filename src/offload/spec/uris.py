"""Inputs given by location: ``https://``, ``http://`` and ``s3://`` URIs (no I/O here).

A URI stands in a spec's inputs wherever a content id may; the node that runs the job
fetches it (:mod:`offload.cache.fetch`) and the job sees it at ``/offload/in/<name>`` like
any input. ``…#sha256=<64 hex>`` pins the content: the job fails ``input_missing`` when the
bytes differ. Credentials a URI may carry (``user:password@``, a query string such as a
presigned URL's signature) are never shown: :func:`redact` gives the form every view uses,
and the producer seals the full URI in the job's secret box (:mod:`offload.cache.jobseal`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

SCHEMES = ("https", "http", "s3")
PIN_RE = re.compile(r"^sha256=([0-9a-f]{64})\Z")
HIDDEN = "***"
MAX_URI = 8192


def is_uri(value: str) -> bool:
    """Whether ``value`` is written as a URI (``scheme://…``), fetchable or not."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value) is not None


@dataclass(frozen=True)
class InputURI:
    """A parsed input URI: where to fetch (no fragment) and the pinned content id, if any."""

    scheme: str
    url: str  # the URI without its fragment: what is fetched
    pin: str | None  # "sha256:<hex>" when the URI was pinned

    @property
    def has_credentials(self) -> bool:
        return has_credentials(self.url)


def parse_uri(value: str) -> InputURI:
    """Parse an input URI; ``ValueError`` saying what is wrong with it."""
    if len(value) > MAX_URI:
        raise ValueError(f"a URI of at most {MAX_URI} characters, got {len(value)}")
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError(f"a URI must not contain spaces or control characters: {redact(value)!r}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"malformed URI {redact(value)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"cannot fetch {scheme}:// URIs; expected https://, http:// or s3:// "
            f"(got {redact(value)!r})"
        )
    if not parts.hostname:
        raise ValueError(f"a URI needs a host (or bucket), got {redact(value)!r}")
    if scheme == "s3" and not parts.path.lstrip("/"):
        raise ValueError(f"expected s3://bucket/key, got {redact(value)!r}")
    pin = None
    if parts.fragment:
        match = PIN_RE.match(parts.fragment)
        if match is None:
            raise ValueError(
                "the only fragment a URI may carry is a pin '#sha256=<64 lower-case hex "
                f"digits>', got '#{parts.fragment[:80]}'"
            )
        pin = f"sha256:{match.group(1)}"
    url = urlunsplit(parts._replace(fragment=""))
    return InputURI(scheme, url, pin)


def has_credentials(uri: str) -> bool:
    """Whether the URI carries what may be a credential: userinfo or a query string."""
    parts = urlsplit(uri)
    return bool(parts.username or parts.password or parts.query or "@" in parts.netloc)


def redact(uri: str) -> str:
    """``uri`` with its userinfo and query string replaced by ``***``: safe to show."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return f"{uri.split('://', 1)[0]}://{HIDDEN}"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{HIDDEN}@{netloc.rsplit('@', 1)[1]}"
    query = HIDDEN if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_text(text: str) -> str:
    """Every URI in ``text`` (a message, a log line) redacted."""
    return re.sub(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+", lambda m: redact(m.group(0)), text)


def is_redacted(uri: str) -> bool:
    """Whether ``uri`` is a redacted form (its credentials are in the job's secret box)."""
    parts = urlsplit(uri)
    return parts.query == HIDDEN or parts.netloc.startswith(f"{HIDDEN}@")


def uri_digest(url: str) -> str:
    """The name of a URI's fetch memo (``offload:fetched:<digest>``): sha256 of the URI."""
    import hashlib

    return hashlib.sha256(url.encode()).hexdigest()
