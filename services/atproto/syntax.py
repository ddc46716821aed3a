"""Lexicon string formats, as @atproto/syntax defines them."""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import urlsplit

_DID = re.compile(r"^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$")
_HANDLE = re.compile(
    r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$"
)
_NSID = re.compile(
    r"^[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
    r"\.[a-zA-Z]([a-zA-Z0-9]{0,62})?$"
)
_RKEY = re.compile(r"^[a-zA-Z0-9_~.:-]{1,512}$")
_DATETIME = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
)


def is_did(s: str) -> bool:
    return len(s) <= 2048 and bool(_DID.match(s))


def is_handle(s: str) -> bool:
    return len(s) <= 253 and bool(_HANDLE.match(s))


def is_nsid(s: str) -> bool:
    return len(s) <= 317 and bool(_NSID.match(s))


def is_rkey(s: str) -> bool:
    return s not in (".", "..") and bool(_RKEY.match(s))


def parse_at_uri(s: str) -> tuple[str, str | None, str | None] | None:
    """(authority, collection, rkey) of a valid at-uri, else None."""
    if len(s) > 8192 or not s.startswith("at://") or "?" in s or "#" in s:
        return None
    parts = s[len("at://") :].split("/")
    if len(parts) > 3 or not parts[0]:
        return None
    authority = parts[0]
    if not (is_did(authority) or is_handle(authority)):
        return None
    collection = parts[1] if len(parts) > 1 else None
    rkey = parts[2] if len(parts) > 2 else None
    if collection is not None and not is_nsid(collection):
        return None
    if rkey is not None and not is_rkey(rkey):
        return None
    return authority, collection, rkey


def is_at_uri(s: str) -> bool:
    return parse_at_uri(s) is not None


def is_datetime(s: str) -> bool:
    if len(s) > 64 or not _DATETIME.match(s):
        return False
    try:
        datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def is_uri(s: str) -> bool:
    if len(s) > 8192 or " " in s:
        return False
    parts = urlsplit(s)
    return bool(parts.scheme) and bool(parts.netloc or parts.path)


def is_http_url(s: str) -> bool:
    """Absolute http(s) URL with a host: what a PDS base URL must be."""
    try:
        parts = urlsplit(s)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and " " not in s


FORMATS = {
    "did": is_did,
    "handle": is_handle,
    "nsid": is_nsid,
    "at-uri": is_at_uri,
    "datetime": is_datetime,
    "uri": is_uri,
    "record-key": is_rkey,
}
