"""A repository as com.atproto.sync.getRepo serves it, verified before anything is believed.

The CAR's root is the signed commit: its signature must verify with the account's current
`#atproto` key, and it must name the DID that was asked for. The commit's `data` is the root of
the Merkle Search Tree, walked in key order to enumerate `collection/rkey -> record CID`; every
block (commit, tree nodes, records) hashes to the CID that names it (services/atproto/car.py),
so a record, a node or a link that was altered does not verify.

A diff (`getRepo?since=<rev>`) holds only the blocks written after `rev`: a subtree whose block
is absent is unchanged since then, and the key range it covers is reported as such, so the
caller can tell a record that is gone from one that was not sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.atproto import car
from services.atproto.car import CarError, Cid
from services.atproto.keys import PublicKey

MAX_TREE_DEPTH = 128


class RepoInvalid(ValueError):
    """The repository does not verify: signature, tree or blocks."""


@dataclass(slots=True)
class Entry:
    collection: str
    rkey: str
    cid: Cid
    # The record's block when the CAR holds it (a diff may not: unchanged since `since`).
    block: bytes | None


@dataclass
class VerifiedRepo:
    did: str
    rev: str
    commit: Cid
    entries: list[Entry]
    # Key ranges (low, high), both exclusive, of subtrees the CAR left out: unchanged since the
    # revision a diff was asked from. Empty for a whole repository.
    unchanged: list[tuple[str, str | None]] = field(default_factory=list)

    def is_unchanged(self, key: str) -> bool:
        return any(low < key and (high is None or key < high) for low, high in self.unchanged)


def verify(data: bytes, did: str, key: PublicKey, *, partial: bool = False) -> VerifiedRepo:
    """The repository in `data` (a CAR), verified; RepoInvalid when it does not verify.
    `partial`: a diff, where absent tree nodes and records are allowed (and reported)."""
    try:
        roots, blocks = car.read_car(data)
        if len(roots) != 1 or roots[0] not in blocks:
            raise RepoInvalid("the CAR's root is not its commit")
        commit = car.decode(blocks[roots[0]])
        _check_commit(commit, did, key)
        walk = _Walk(blocks, partial)
        walk.node(commit["data"], "", None, 0)
    except CarError as exc:
        raise RepoInvalid(str(exc)) from None
    return VerifiedRepo(did, commit["rev"], roots[0], walk.entries, walk.unchanged)


def record_json(block: bytes) -> Any:
    """A record block in its JSON form; RepoInvalid if it is not a DAG-CBOR map."""
    try:
        value = car.decode(block)
    except CarError as exc:
        raise RepoInvalid(str(exc)) from None
    if not isinstance(value, dict):
        raise RepoInvalid("a record is not a map")
    return car.to_json(value)


def _check_commit(commit: Any, did: str, key: PublicKey) -> None:
    if not isinstance(commit, dict):
        raise RepoInvalid("the commit is not a map")
    if commit.get("did") != did:
        raise RepoInvalid("the commit is for another DID")
    if commit.get("version") not in (2, 3):
        raise RepoInvalid("unsupported repo version")
    if not isinstance(commit.get("rev"), str) or not isinstance(commit.get("data"), Cid):
        raise RepoInvalid("the commit has no rev or data")
    sig = commit.get("sig")
    if type(sig) is not bytes:
        raise RepoInvalid("the commit is not signed")
    unsigned = {k: v for k, v in commit.items() if k != "sig"}
    if not key.verify(sig, car.encode(unsigned)):
        raise RepoInvalid("the commit signature does not verify with the account's key")


class _Walk:
    """The tree in key order: every entry checked (keys strictly increasing, each one a
    `collection/rkey`), its record's block looked up."""

    def __init__(self, blocks: dict[Cid, bytes], partial: bool) -> None:
        self.blocks = blocks
        self.partial = partial
        self.entries: list[Entry] = []
        self.unchanged: list[tuple[str, str | None]] = []
        self.last = ""

    def node(self, cid: Any, low: str, high: str | None, depth: int) -> None:
        """The subtree at `cid`; `low`/`high`: the keys either side of it."""
        if type(cid) is not Cid:
            raise RepoInvalid("a tree link is malformed")
        if depth > MAX_TREE_DEPTH:
            raise RepoInvalid("the tree is deeper than any real repository")
        block = self.blocks.get(cid)
        if block is None:
            if not self.partial:
                raise RepoInvalid("a tree node is missing from the CAR")
            self.unchanged.append((low, high))  # a diff left it out: unchanged since
            return
        node = car.decode(block)
        if type(node) is not dict or type(node.get("e")) is not list:
            raise RepoInvalid("a tree node is malformed")
        entries = node["e"]
        keys: list[str] = []
        previous = b""
        for entry in entries:
            if type(entry) is not dict:
                raise RepoInvalid("a tree entry is malformed")
            prefix, suffix = entry.get("p"), entry.get("k")
            if type(prefix) is not int or type(suffix) is not bytes:
                raise RepoInvalid("a tree entry is malformed")
            if not 0 <= prefix <= len(previous):
                raise RepoInvalid("a tree entry's prefix is longer than the key before it")
            previous = previous[:prefix] + suffix
            try:
                keys.append(previous.decode("ascii"))
            except UnicodeDecodeError:
                raise RepoInvalid("a tree key is not ASCII") from None
        left = node.get("l")
        if left is not None:
            self.node(left, low, keys[0] if keys else high, depth + 1)
        for i, entry in enumerate(entries):
            self.record(keys[i], entry.get("v"))
            right = entry.get("t")
            if right is not None:
                following = keys[i + 1] if i + 1 < len(keys) else high
                self.node(right, keys[i], following, depth + 1)

    def record(self, key: str, cid: Any) -> None:
        if type(cid) is not Cid:
            raise RepoInvalid("a tree entry has no record link")
        if key <= self.last:
            raise RepoInvalid("tree keys are not in order")
        self.last = key
        slash = key.find("/")
        collection, rkey = key[:slash], key[slash + 1 :]
        if slash < 1 or not rkey or "/" in rkey:
            raise RepoInvalid("a tree key is not collection/rkey")
        block = self.blocks.get(cid)
        if block is None and not self.partial:
            raise RepoInvalid("a record is missing from the CAR")
        self.entries.append(Entry(collection, rkey, cid, block))
