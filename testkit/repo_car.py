"""Signed repositories as CAR files, built the way a PDS builds them (for the loopback PDS and
for tampering tests): records in DAG-CBOR, a Merkle Search Tree with the spec's layering
(leading zero bits of the key's SHA-256, two per layer), a signed v3 commit, a CAR v1."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from services.atproto import car, keys
from services.atproto.car import Cid

Blocks = dict[Cid, bytes]


def repo_key(did: str) -> keys.PrivateKey:
    """The signing key the loopback PDS uses for `did`, derived from it (so the loopback PLC
    can publish it without the two servers sharing state)."""
    secret = int.from_bytes(hashlib.sha256(b"chive-test-repo:" + did.encode()).digest(), "big")
    scalar = secret % (keys.K256.order - 1) + 1
    return keys.PrivateKey(keys.K256, ec.derive_private_key(scalar, keys.K256.curve))


def to_ipld(value: Any) -> Any:
    """JSON data model -> DAG-CBOR data model ({"$link"} -> link, {"$bytes"} -> bytes)."""
    if isinstance(value, dict):
        if set(value) == {"$link"} and isinstance(value["$link"], str):
            return car.parse_cid(value["$link"])
        return {k: to_ipld(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_ipld(v) for v in value]
    return value


def record_block(value: Any) -> tuple[Cid, bytes]:
    block = car.encode(to_ipld(value))
    return car.cid_for(block), block


def build_car(
    did: str,
    records: dict[str, Any],
    rev: str,
    *,
    key: keys.PrivateKey | None = None,
    tamper: Callable[[Blocks, Cid], Cid] | None = None,
) -> bytes:
    """The CAR of a repo holding `records` (`collection/rkey` -> JSON value) at `rev`.
    `tamper(blocks, commit)`: change blocks before they are written; returns the root."""
    blocks: Blocks = {}
    entries = []
    for k in sorted(records):
        cid, block = record_block(records[k])
        blocks[cid] = block
        entries.append((k, cid))
    root = _tree(entries, blocks)
    unsigned = {"did": did, "version": 3, "data": root, "rev": rev, "prev": None}
    commit_cid = signed_commit(blocks, unsigned, key or repo_key(did))
    if tamper is not None:
        commit_cid = tamper(blocks, commit_cid)
    return write_car([commit_cid], blocks)


def signed_commit(blocks: Blocks, unsigned: dict[str, Any], key: keys.PrivateKey) -> Cid:
    """The commit `unsigned` signed with `key`, added to `blocks`; its CID."""
    block = car.encode({**unsigned, "sig": key.sign(car.encode(unsigned))})
    cid = car.cid_for(block)
    blocks[cid] = block
    return cid


def write_car(roots: list[Cid], blocks: Blocks) -> bytes:
    header = car.encode({"version": 1, "roots": roots})
    out = bytearray(_varint(len(header)) + header)
    for cid, block in blocks.items():
        out += _varint(36 + len(block)) + bytes(cid) + block
    return bytes(out)


def layer(key: str) -> int:
    digest = hashlib.sha256(key.encode()).digest()
    zeros = 0
    for byte in digest:
        if byte == 0:
            zeros += 8
            continue
        zeros += 8 - byte.bit_length()
        break
    return zeros // 2


def _tree(entries: list[tuple[str, Cid]], blocks: Blocks) -> Cid:
    top = max((layer(k) for k, _ in entries), default=0)
    return _node(entries, top, blocks)


def _node(entries: list[tuple[str, Cid]], level: int, blocks: Blocks) -> Cid:
    """The node at `level` over `entries` (sorted): keys of this layer are its entries, the
    keys between them go to subtrees one layer down."""
    here = [i for i, (k, _) in enumerate(entries) if layer(k) >= level]
    groups, start = [], 0
    for i in here:
        groups.append(entries[start:i])
        start = i + 1
    groups.append(entries[start:])
    subtrees = [_node(g, level - 1, blocks) if g else None for g in groups]
    encoded, previous = [], b""
    for n, i in enumerate(here):
        full = entries[i][0].encode()
        prefix = 0
        while prefix < min(len(full), len(previous)) and full[prefix] == previous[prefix]:
            prefix += 1
        encoded.append({"p": prefix, "k": full[prefix:], "v": entries[i][1], "t": subtrees[n + 1]})
        previous = full
    block = car.encode({"l": subtrees[0], "e": encoded})
    cid = car.cid_for(block)
    blocks[cid] = block
    return cid


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
