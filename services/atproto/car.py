"""CAR v1 files (what com.atproto.sync.getRepo serves) and the DAG-CBOR inside them.

Every block is checked against its CID as it is read: a CID names its content by hash, so a
block whose bytes do not hash to it is refused, and nothing read from a CAR is trusted by name
alone. Only what repositories use is accepted: CID v1, codecs dag-cbor (0x71) and raw (0x55),
sha2-256 multihash.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from hashlib import sha256
from typing import Any

import cbor2
import libipld

DAG_CBOR = 0x71
RAW = 0x55
SHA2_256 = 0x12
_CID_PREFIXES = {bytes([1, DAG_CBOR, SHA2_256, 32]), bytes([1, RAW, SHA2_256, 32])}


class CarError(ValueError):
    """Not a CAR, a truncated one, or a block that does not match its CID."""


class Cid(bytes):
    """A CID in binary form (v1: version, codec, multihash), a link in DAG-CBOR. Its text form
    is multibase base32 (`b...`), as the AT Protocol writes CIDs. (A bytes subclass: blocks are
    looked up by it thousands of times per repo, and bytes hash and compare in C.)"""

    __slots__ = ()

    @property
    def raw(self) -> bytes:
        return bytes(self)

    def __str__(self) -> str:
        return cid_text(self)

    def __repr__(self) -> str:
        return f"Cid({self})"


def cid_text(raw: bytes) -> str:
    """The base32 text form of a binary CID (in Rust: every indexed record needs one, and
    Python's base32 costs several microseconds a CID)."""
    return libipld.encode_cid(raw)


def cid_for(data: bytes, codec: int = DAG_CBOR) -> Cid:
    return Cid(bytes([1, codec, SHA2_256, 32]) + sha256(data).digest())


def parse_cid(text: str) -> Cid:
    """A CID from its base32 text form; CarError if it is not one."""
    if not text.startswith("b") or not text[1:].isalnum():
        raise CarError(f"not a base32 CID: {text[:80]!r}")
    body = text[1:].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except ValueError as exc:
        raise CarError(f"not a base32 CID: {text[:80]!r}") from exc
    _check_cid(raw)
    return Cid(raw)


class CarReader:
    """A CAR read as its bytes arrive: `feed` them in pieces of any size; each whole block is
    checked against its CID and handed to `on_block` at once (so decoding overlaps the
    download), its CID as bytes; `close` when the bytes end. The header (and so `roots`)
    comes before any block."""

    def __init__(self, on_block: Callable[[bytes, bytes], None]) -> None:
        self.roots: list[Cid] | None = None
        self._on_block = on_block
        self._buffer = bytearray()

    def feed(self, chunk: bytes | memoryview) -> None:
        self._buffer += chunk
        with memoryview(self._buffer) as view:
            used = self._frames(view)
        del self._buffer[:used]

    def close(self) -> list[Cid]:
        """The roots; CarError if the bytes ended inside the header or a block."""
        if self.roots is None:
            raise CarError("truncated CAR header")
        if self._buffer:
            raise CarError("truncated CAR block")
        return self.roots

    def _frames(self, view: memoryview) -> int:
        """Reads every whole frame in `view`; how many bytes they took."""
        pos, end = 0, len(view)
        if self.roots is None:
            framed = _frame(view, 0)
            if framed is None:
                return 0
            length, start = framed
            if length == 0:
                raise CarError("truncated CAR header")
            if start + length > end:
                return 0  # the rest of the header is still on its way
            self.roots = _roots(decode(bytes(view[start : start + length])))
            pos = start + length
        on_block = self._on_block
        while pos < end:
            first = view[pos]
            if first < 0x80:  # most blocks are small or medium: one or two length bytes
                length, start = first, pos + 1
            elif pos + 1 < end and view[pos + 1] < 0x80:
                length, start = (first & 0x7F) | (view[pos + 1] << 7), pos + 2
            else:
                framed = _frame(view, pos)
                if framed is None:
                    break
                length, start = framed
            if length < 36:
                raise CarError("truncated CAR block")
            stop = start + length
            if stop > end:
                break  # the rest of this block is still on its way
            # The CID as plain bytes: a Cid hashes and compares as its bytes, and making the
            # subclass for every block cost more than checking it.
            cid = bytes(view[start : start + 36])
            _check_cid(cid)
            block = bytes(view[start + 36 : stop])
            if sha256(block).digest() != cid[4:]:
                raise CarError("a block does not match its CID")
            on_block(cid, block)
            pos = stop
        return pos


def read_car(data: bytes | memoryview) -> tuple[list[Cid], dict[Cid, bytes]]:
    """(roots, blocks by CID) of a whole CAR. Every block's bytes hash to its CID, or
    CarError."""
    blocks: dict[Cid, bytes] = {}
    reader = CarReader(blocks.__setitem__)
    reader.feed(data)
    return reader.close(), blocks


def _roots(header: Any) -> list[Cid]:
    if not isinstance(header, dict) or header.get("version") != 1:
        raise CarError("not a CAR v1 file")
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(isinstance(r, Cid) for r in roots):
        raise CarError("CAR header without roots")
    return roots


def _frame(view: memoryview, pos: int) -> tuple[int, int] | None:
    """(length, where the frame's bytes start) of the frame at `pos`; None when its length
    has not all arrived yet."""
    value = shift = 0
    while True:
        if shift > 56:
            raise CarError("oversized varint")
        if pos >= len(view):
            return None
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def decode(block: bytes) -> Any:
    """DAG-CBOR to Python: links become Cid, byte strings stay bytes."""
    try:
        # DAG-CBOR is strict: definite lengths, unique keys.
        return cbor2.loads(
            block, tag_hook=_tag, allow_indefinite=False, allow_duplicate_keys=False, max_depth=128
        )
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise CarError("a block is not valid DAG-CBOR") from exc


def decode_plain(block: bytes) -> Any:
    """DAG-CBOR to Python, in Rust and strict (canonical key order, no indefinite lengths, no
    tag but 42), several times faster than `decode`, with one loss: a link comes back as the
    CID's bytes, like a byte string. For blocks whose links the caller can tell by position
    (tree nodes), or that turn out to hold no byte string at all (records, mostly)."""
    try:
        return libipld.decode_dag_cbor(block)
    except (ValueError, TypeError, RecursionError) as exc:
        raise CarError("a block is not valid DAG-CBOR") from exc


# A whole link as canonical DAG-CBOR writes it: tag 42, a 37-byte string, the identity
# multibase; the 36 bytes of the CID follow.
LINK_START = b"\xd8\x2a\x58\x25\x00"


def encode(value: Any) -> bytes:
    """Canonical DAG-CBOR (map keys length-first, then bytewise; links as tag 42)."""
    return cbor2.dumps(_tagged(value), canonical=True)


def _tagged(value: Any) -> Any:
    if isinstance(value, Cid):
        return cbor2.CBORTag(42, b"\x00" + bytes(value))
    if isinstance(value, dict):
        return {k: _tagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tagged(v) for v in value]
    return value


def to_json(value: Any) -> Any:
    """The JSON form of a decoded record (the AT Protocol data model): links as
    {"$link": cid}, bytes as {"$bytes": base64}. Maps and lists that hold neither come back
    as they are (most records are strings and numbers all through: one pass, no copy)."""
    kind = type(value)
    if kind is dict:
        changed = None
        for k, v in value.items():
            if type(v) not in _JSON_AS_IS:
                converted = to_json(v)
                if converted is not v:
                    if changed is None:
                        changed = dict(value)
                    changed[k] = converted
        return value if changed is None else changed
    if kind is list:
        items = [to_json(v) if type(v) not in _JSON_AS_IS else v for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if kind is Cid:
        return {"$link": str(value)}
    if kind is bytes:
        return {"$bytes": base64.b64encode(value).decode().rstrip("=")}
    return value


_JSON_AS_IS = frozenset({str, int, bool, float, type(None)})


def _tag(*args: Any) -> Any:
    # cbor2 documents (decoder, tag) and 6.x passes (tag, immutable): take the tag either way.
    tag = args[0] if type(args[0]) is cbor2.CBORTag else args[1]
    if tag.tag != 42:
        raise CarError("a CBOR tag other than 42 (link) is not DAG-CBOR")
    value = tag.value
    # b"\x00" (the identity multibase), then the CID.
    if type(value) is not bytes or value[:1] != b"\x00":
        raise CarError("malformed link")
    cid = Cid(value[1:])
    _check_cid(cid)
    return cid


def is_repo_cid(raw: Any) -> bool:
    """Only what repositories use: CID v1, dag-cbor or raw, a sha2-256 digest (binary)."""
    return isinstance(raw, bytes) and len(raw) == 36 and raw[:4] in _CID_PREFIXES


def _check_cid(raw: bytes) -> None:
    if not is_repo_cid(raw):
        raise CarError("only CID v1, dag-cbor or raw, sha2-256 are accepted")
