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

import msgspec

from services.atproto import car
from services.atproto.car import CarError, Cid
from services.atproto.keys import PublicKey

MAX_TREE_DEPTH = 128


class RepoInvalid(ValueError):
    """The repository does not verify: signature, tree or blocks."""


# An Entry's value when its block is not a DAG-CBOR map: no record (invalid_value refuses it).
NOT_A_MAP = b""


# A Struct, untracked by the collector (strings and bytes only): one is made per record.
class Entry(msgspec.Struct, gc=False):
    collection: str
    rkey: str
    cid: bytes  # binary (car.Cid is its bytes)
    cid_text: str
    # The record in its JSON form; None when the CAR does not hold it (a diff: unchanged since
    # `since`), NOT_A_MAP when its block is not a record.
    value: bytes | None


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


class RepoReader:
    """A repository read from its CAR as the bytes arrive (`feed`), verified once they have
    all arrived (`verify`). Records are turned into their JSON form as their blocks come, so
    that work overlaps the download; the commit and tree nodes are kept as blocks (bytes, which
    the garbage collector does not scan) until the walk. Nothing is believed before `verify`
    has checked the signature and walked the tree.

    `collections`: the prefix of the collections whose records are wanted. The others are
    verified all the same (the tree, their blocks' presence and hashes) but not decoded, and
    not listed: in a real repository most records are someone else's (posts, likes)."""

    def __init__(self, collections: str = "") -> None:
        self._car = car.CarReader(self._block)
        self._wanted = collections
        # A block whose bytes do not name a wanted collection is left undecoded (a guess,
        # cheap and safe: the walk decodes a wanted record it finds left so).
        self._wanted_mark = collections.encode()
        # The commit, what looks like a tree node, and records left undecoded, as read.
        self._blocks: dict[Cid, bytes] = {}
        # Every other block: (its CID as text, its JSON form or NOT_A_MAP).
        self._values: dict[Cid, tuple[str, bytes]] = {}

    def feed(self, chunk: bytes | memoryview) -> None:
        """RepoInvalid as soon as the bytes are not a CAR or a block does not match its CID."""
        try:
            self._car.feed(chunk)
        except CarError as exc:
            raise RepoInvalid(str(exc)) from None

    def verify(self, did: str, key: PublicKey, *, partial: bool = False) -> VerifiedRepo:
        """The repository, verified: RepoInvalid when it does not verify. `partial`: a diff,
        where absent tree nodes and records are allowed (and reported)."""
        try:
            roots = self._car.close()
            if len(roots) != 1 or roots[0] not in self._blocks:
                raise RepoInvalid("the CAR's root is not its commit")
            commit = car.decode(self._blocks[roots[0]])
            _check_commit(commit, did, key)
            walk = _Walk(self._blocks, self._values, partial, self._wanted)
            walk.node(commit["data"], "", None, 0)
        except CarError as exc:
            raise RepoInvalid(str(exc)) from None
        return VerifiedRepo(did, commit["rev"], roots[0], walk.entries, walk.unchanged)

    def _block(self, cid: Cid, block: bytes) -> None:
        roots = self._car.roots
        # A tree node is a map of "e" and "l"; canonical DAG-CBOR puts "e" first.
        if (
            block.startswith(_NODE_START)
            or (roots and cid == roots[0])
            or self._wanted_mark not in block
        ):
            self._blocks[cid] = block
        else:
            self._values[cid] = (car.cid_text(cid), _json_of(block))


_NODE_START = b"\xa2ae"  # a map of two entries, the first keyed "e"


def verify(
    data: bytes, did: str, key: PublicKey, *, partial: bool = False, collections: str = ""
) -> VerifiedRepo:
    """The repository in `data` (a whole CAR), verified; RepoInvalid when it does not verify.
    Only records of collections starting with `collections` are listed."""
    reader = RepoReader(collections)
    reader.feed(data)
    return reader.verify(did, key, partial=partial)


def record_json(block: bytes) -> Any:
    """A record block in its JSON form; RepoInvalid if it is not a DAG-CBOR map."""
    try:
        value = car.decode(block)
    except CarError as exc:
        raise RepoInvalid(str(exc)) from None
    if not isinstance(value, dict):
        raise RepoInvalid("a record is not a map")
    return car.to_json(value)


def _json_of(block: bytes) -> bytes:
    """A record's JSON form; NOT_A_MAP when the block is not a DAG-CBOR map."""
    try:
        value = car.decode_plain(block)
        if type(value) is not dict:
            return NOT_A_MAP
        if car.to_json(value) is not value:
            # A byte string somewhere (to_json changed something): a link or bytes, which
            # the fast decoder returns alike. Decoded again, exactly. Most records hold
            # neither, and come back as they are, at no extra cost.
            value = record_json(block)
        return msgspec.json.encode(value)
    except (RepoInvalid, CarError):
        return NOT_A_MAP


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
    `collection/rkey`), its record looked up. (One pass per node: this runs once per record of
    every repository read.)"""

    def __init__(
        self,
        blocks: dict[Cid, bytes],
        values: dict[Cid, tuple[str, bytes]],
        partial: bool,
        wanted: str,
    ) -> None:
        self.wanted = wanted
        self.blocks = blocks
        self.values = values
        self.partial = partial
        self.entries: list[Entry] = []
        self.unchanged: list[tuple[str, str | None]] = []
        self.last = ""

    def node(self, cid: Any, low: str, high: str | None, depth: int) -> None:
        """The subtree at `cid`; `low`/`high`: the keys either side of it."""
        if not car.is_repo_cid(cid):
            raise RepoInvalid("a tree link is malformed")
        if depth > MAX_TREE_DEPTH:
            raise RepoInvalid("the tree is deeper than any real repository")
        block = self.blocks.get(cid)
        if block is None:
            if cid in self.values:
                raise RepoInvalid("a tree node is malformed")
            if not self.partial:
                raise RepoInvalid("a tree node is missing from the CAR")
            self.unchanged.append((low, high))  # a diff left it out: unchanged since
            return
        # Links come back as bytes (car.decode_plain): they are told by their place ("l",
        # "t", "v"), and the block must hold one link for each, so none was a byte string.
        node = car.decode_plain(block)
        if type(node) is not dict or type(node.get("e")) is not list:
            raise RepoInvalid("a tree node is malformed")
        links = 0
        # The subtree left of the next key: the node's "l" first, then each entry's "t".
        subtree, before = node.get("l"), low
        if subtree is not None:
            links += 1
        previous = b""
        for entry in node["e"]:
            if type(entry) is not dict:
                raise RepoInvalid("a tree entry is malformed")
            prefix, suffix, value, right = (
                entry.get("p"),
                entry.get("k"),
                entry.get("v"),
                entry.get("t"),
            )
            if type(prefix) is not int or type(suffix) is not bytes:
                raise RepoInvalid("a tree entry is malformed")
            if not 0 <= prefix <= len(previous):
                raise RepoInvalid("a tree entry's prefix is longer than the key before it")
            previous = previous[:prefix] + suffix
            try:
                key = previous.decode("ascii")
            except UnicodeDecodeError:
                raise RepoInvalid("a tree key is not ASCII") from None
            if subtree is not None:
                self.node(subtree, before, key, depth + 1)
            # The entry's record (inline: this runs once per record of every repository).
            if not car.is_repo_cid(value):
                raise RepoInvalid("a tree entry has no record link")
            links += 1 if right is None else 2
            if key <= self.last:
                raise RepoInvalid("tree keys are not in order")
            self.last = key
            collection, _, rkey = key.partition("/")
            if not collection or not rkey or "/" in rkey:
                raise RepoInvalid("a tree key is not collection/rkey")
            if collection.startswith(self.wanted):
                read = self.values.get(value)
                if read is None:
                    read = self._unread(value)
                self.entries.append(Entry(collection, rkey, value, read[0], read[1]))
            elif not self.partial and value not in self.values and value not in self.blocks:
                raise RepoInvalid("a record is missing from the CAR")
            subtree, before = right, key
        if subtree is not None:
            self.node(subtree, before, high, depth + 1)
        if block.count(car.LINK_START) != links:
            raise RepoInvalid("a tree link is malformed")

    def _unread(self, cid: bytes) -> tuple[str, bytes | None]:
        """A wanted record whose block was not decoded as it came (see RepoReader)."""
        block = self.blocks.get(cid)
        if block is not None:
            return car.cid_text(cid), _json_of(block)
        if not self.partial:
            raise RepoInvalid("a record is missing from the CAR")
        return car.cid_text(cid), None
