"""CAR reading and repository verification, pure: blocks against CIDs, the signed commit, the
tree walk and what a diff (a CAR missing unchanged subtrees) tells."""

from __future__ import annotations

import base64

import msgspec
import pytest

from services.atproto import car, repo
from testkit import repo_car

pytestmark = pytest.mark.unit

DID = "did:plc:verifyme"
KEY = repo_car.repo_key(DID)


def records(n: int, collection: str = "pub.chive.eprint.submission") -> dict[str, dict]:
    return {f"{collection}/3k{i:010d}": {"$type": collection, "n": i} for i in range(n)}


def signed_over(blocks: dict, commit: dict, node: bytes) -> car.Cid:
    """A tampering: `node` becomes the tree's root under a commit signed again with the
    account's key (so only the tree can be at fault); the new commit's CID."""
    blocks[car.cid_for(node)] = node
    unsigned = {**{k: v for k, v in commit.items() if k != "sig"}, "data": car.cid_for(node)}
    return repo_car.signed_commit(blocks, unsigned, KEY)


def test_a_repo_verifies_and_lists_every_record_in_key_order():
    recs = {**records(300), **records(5, "app.bsky.feed.post")}
    verified = repo.verify(repo_car.build_car(DID, recs, "3kaaaaaaaaaaa"), DID, KEY.public)
    assert verified.rev == "3kaaaaaaaaaaa" and verified.unchanged == []
    assert [f"{e.collection}/{e.rkey}" for e in verified.entries] == sorted(recs)
    first = verified.entries[0]
    assert first.cid == repo_car.record_block(recs[sorted(recs)[0]])[0]
    assert msgspec.json.decode(first.value) == recs[sorted(recs)[0]]
    # The tree has layers: some keys sit above others (the spec's layering is exercised).
    assert len({repo_car.layer(k) for k in recs}) > 1


def test_links_and_bytes_come_back_in_their_json_form():
    blob = car.cid_for(b"%PDF-1.4", car.RAW)
    value = {"$type": "x", "document": {"$type": "blob", "ref": {"$link": str(blob)}}}
    block = car.encode({**repo_car.to_ipld(value), "raw": b"\x00\x01"})
    assert repo.record_json(block) == {**value, "raw": {"$bytes": "AAE"}}


def test_records_read_from_a_repo_keep_their_links_and_bytes_apart():
    # Records without a link take a faster decoder that cannot tell a link from a byte
    # string: each kind must still come out in its own JSON form.
    blob = car.cid_for(b"%PDF-1.4", car.RAW)
    collection = "pub.chive.eprint.submission"
    linked = {"$type": collection, "ref": {"$link": str(blob)}}
    recs = {
        f"{collection}/3k0000000001": linked,
        f"{collection}/3k0000000002": {"$type": collection, "raw": b"\x00\x01"},
        f"{collection}/3k0000000003": {"$type": collection, "raw": blob.raw},
    }
    verified = repo.verify(repo_car.build_car(DID, recs, "3kaaaaaaaaaaa"), DID, KEY.public)
    values = [msgspec.json.decode(e.value) for e in verified.entries]
    assert values == [
        linked,
        {"$type": collection, "raw": {"$bytes": "AAE"}},
        {"$type": collection, "raw": {"$bytes": base64.b64encode(blob.raw).decode().rstrip("=")}},
    ]
    assert [e.cid_text for e in verified.entries] == [
        str(repo_car.record_block(recs[k])[0]) for k in sorted(recs)
    ]


def test_a_tree_entry_that_holds_its_record_cid_as_bytes_not_a_link_is_refused():
    def bytes_for_link(blocks, commit_cid):
        commit = car.decode(blocks.pop(commit_cid))
        record = car.encode({"$type": "pub.chive.eprint.submission"})
        # The CID's bytes as a byte string where the tree needs a link (tag 42).
        entries = [{"p": 0, "k": b"pub.chive.eprint.submission/a", "v": b"", "t": None}]
        node = car.encode({"l": None, "e": entries}).replace(
            b"av\x40", b"av\x58\x24" + car.cid_for(record).raw
        )
        blocks[car.cid_for(record)] = record
        return signed_over(blocks, commit, node)

    data = repo_car.build_car(DID, records(1), "3kaaaaaaaaaaa", tamper=bytes_for_link)
    with pytest.raises(repo.RepoInvalid, match="tree link is malformed"):
        repo.verify(data, DID, KEY.public)


def test_the_commit_must_be_for_this_did_and_signed_by_its_key():
    data = repo_car.build_car(DID, records(3), "3kaaaaaaaaaaa")
    with pytest.raises(repo.RepoInvalid, match="signature does not verify"):
        repo.verify(data, DID, repo_car.repo_key("did:plc:someoneelse").public)
    with pytest.raises(repo.RepoInvalid, match="another DID"):
        repo.verify(data, "did:plc:someoneelse", KEY.public)


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda d: d[:10], "truncated"),
        (lambda d: b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff" + d, "varint"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 0x40]), "does not match its CID"),
        (lambda d: b"", "truncated"),
    ],
    ids=["truncated", "garbage-header", "altered-block", "empty"],
)
def test_a_damaged_car_is_refused(mangle, message):
    data = repo_car.build_car(DID, records(20), "3kaaaaaaaaaaa")
    with pytest.raises(repo.RepoInvalid, match=message):
        repo.verify(mangle(data), DID, KEY.public)


def test_a_tree_with_keys_out_of_order_is_refused():
    def swap_first_two(blocks, commit_cid):
        commit = car.decode(blocks.pop(commit_cid))
        entries = [
            {"p": 0, "k": b"pub.chive.eprint.submission/b", "v": car.cid_for(b"x"), "t": None},
            {"p": 0, "k": b"pub.chive.eprint.submission/a", "v": car.cid_for(b"y"), "t": None},
        ]
        node = car.encode({"l": None, "e": entries})
        blocks[car.cid_for(b"x")], blocks[car.cid_for(b"y")] = b"x", b"y"
        return signed_over(blocks, commit, node)

    data = repo_car.build_car(DID, records(2), "3kaaaaaaaaaaa", tamper=swap_first_two)
    with pytest.raises(repo.RepoInvalid, match="not in order"):
        repo.verify(data, DID, KEY.public)


def test_a_diff_reports_the_ranges_it_left_out_as_unchanged():
    recs = records(400)
    full = repo_car.build_car(DID, recs, "3kaaaaaaaaaaa")
    roots, blocks = car.read_car(full)
    commit = car.decode(blocks[roots[0]])
    root_node = car.decode(blocks[commit["data"]])
    # A diff: the commit, the root node and the records; every subtree below left out.
    subtrees = {e["t"] for e in root_node["e"] if e["t"] is not None} | {root_node["l"]} - {None}
    assert subtrees, "the tree must have a second layer for this test"
    partial = repo_car.write_car(roots, {c: b for c, b in blocks.items() if c not in subtrees})
    with pytest.raises(repo.RepoInvalid, match="tree node is missing"):
        repo.verify(partial, DID, KEY.public)
    diff = repo.verify(partial, DID, KEY.public, partial=True)
    listed = {f"{e.collection}/{e.rkey}" for e in diff.entries}
    assert listed and listed < set(recs)
    # Every key of the repo is either listed or inside a range reported unchanged, and no
    # listed key is inside one.
    assert all((k in listed) != diff.is_unchanged(k) for k in recs)


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_a_car_read_in_pieces_as_it_arrives_reads_as_the_whole_does(piece):
    recs = {**records(200), **records(3, "app.bsky.feed.post")}
    data = repo_car.build_car(DID, recs, "3kaaaaaaaaaaa")
    reader = repo.RepoReader()
    for start in range(0, len(data), piece):
        reader.feed(data[start : start + piece])
    pieces = reader.verify(DID, KEY.public)
    whole = repo.verify(data, DID, KEY.public)
    assert [(e.collection, e.rkey, e.cid, e.value) for e in pieces.entries] == [
        (e.collection, e.rkey, e.cid, e.value) for e in whole.entries
    ]
    assert len(pieces.entries) == len(recs) and pieces.rev == whole.rev


def test_a_car_that_ends_inside_a_block_is_refused_when_it_ends():
    data = repo_car.build_car(DID, records(20), "3kaaaaaaaaaaa")
    reader = repo.RepoReader()
    reader.feed(data[:-5])  # nothing wrong yet: the rest may be on its way
    with pytest.raises(repo.RepoInvalid, match="truncated CAR block"):
        reader.verify(DID, KEY.public)


def test_records_of_other_collections_are_verified_but_not_listed():
    chive = records(30)
    others = records(200, "app.bsky.feed.post")
    data = repo_car.build_car(DID, {**chive, **others}, "3kaaaaaaaaaaa")
    verified = repo.verify(data, DID, KEY.public, collections="pub.chive.")
    assert [f"{e.collection}/{e.rkey}" for e in verified.entries] == sorted(chive)
    assert all(
        msgspec.json.decode(e.value) == chive[f"{e.collection}/{e.rkey}"] for e in verified.entries
    )
    # A post's block missing is still a repository that does not verify.
    roots, blocks = car.read_car(data)
    post = repo_car.record_block(others[sorted(others)[0]])[0]
    without = repo_car.write_car(roots, {c: b for c, b in blocks.items() if c != post})
    with pytest.raises(repo.RepoInvalid, match="record is missing"):
        repo.verify(without, DID, KEY.public, collections="pub.chive.")
