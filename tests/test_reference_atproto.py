"""The service against the reference AT Protocol servers (testkit/atproto_reference.py): accounts
created through the real PDS, registered in the real PLC directory (whose documents carry the
legacy `EcdsaSecp256k1VerificationKey2019` key form), records and a PDF blob written with
com.atproto.repo.*, and admin tokens minted by the PDS's getServiceAuth. Every backfill type
that reads AT Protocol servers runs against them; the loopback fakes stay for fault injection."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from projections.index_reader import FollowingIndex
from services.atproto import keys, repo
from services.atproto.identity import signing_key_method
from testkit.documents import paper_pdf
from testkit.harness import SERVICE_DID, running_service, settings_for
from testkit.waiting import eventually

TRIGGER = "pub.chive.admin.triggerBackfill"
STATUS = "pub.chive.admin.getBackfillStatus"
SUBMISSION = "pub.chive.eprint.submission"
DOI = "10.5555/reference.2026.001"
CITED_TITLE = "Signed repositories as the substrate of scholarly publishing"


class PdsAdmin:
    """An admin whose tokens come from its PDS (what a real admin's client sends)."""

    def __init__(self, account) -> None:
        self.account = account
        self.did = account.did

    def token(self, lxm: str | None, **_: object) -> str:
        return self.account.service_token(SERVICE_DID, lxm)


@pytest.fixture(scope="module")
def world(atproto):
    """Accounts and records on the reference PDS, written once for this module's tests."""
    alice = atproto.create_account("alice")
    bob = atproto.create_account("bob")
    gov = atproto.create_account("governance")

    def submission(title: str, document: dict, **extra) -> dict:
        return {
            "$type": SUBMISSION,
            "title": title,
            "abstract": [{"text": f"Abstract of {title}."}],
            "document": document,
            "licenseSlug": "CC-BY-4.0",
            "authors": [{"name": "Ada Lovelace", "order": 1}],
            "submittedBy": alice.did,
            "createdAt": "2026-11-01T00:00:00.000Z",
            **extra,
        }

    cited_pdf = alice.upload_blob(paper_pdf(CITED_TITLE, []), "application/pdf")
    cited, _ = alice.create_record(
        SUBMISSION, submission(CITED_TITLE, cited_pdf, publishedVersion={"doi": DOI})
    )
    citing_pdf = alice.upload_blob(
        paper_pdf(
            "A paper that cites",
            [
                f"A. Lovelace. Signed repositories. Journal of Things, 2026. doi:{DOI}",
                "G. Nobody. A work nobody indexed. Obscure Venue, 1999.",
            ],
        ),
        "application/pdf",
    )
    citing, _ = alice.create_record(SUBMISSION, submission("A paper that cites", citing_pdf))
    comment = {
        "$type": "pub.chive.review.comment",
        "eprintUri": cited,
        "body": "Convincing.",
        "createdAt": "2026-11-02T00:00:00.000Z",
    }
    alice.create_record("pub.chive.review.comment", comment, rkey="c1")
    alice.create_record("pub.chive.review.comment", {**comment, "body": "Second look."}, "c2")
    bob.create_record("pub.chive.review.comment", {**comment, "body": "Agreed."})
    # Not ours: a non-Chive record is never indexed.
    alice.create_record("app.bsky.feed.post", {"text": "hi", "createdAt": comment["createdAt"]})

    def node(i: int, **extra) -> dict:
        return {
            "$type": "pub.chive.graph.node",
            "id": f"n{i}",
            "kind": "field",
            "label": f"Field {i}",
            "status": "established",
            "createdAt": "2026-11-01T00:00:00.000Z",
            **extra,
        }

    gov.create_record("pub.chive.graph.node", node(1), "n1")
    gov.create_record("pub.chive.graph.node", node(2), "n2")
    broken = node(3)
    del broken["label"]
    gov.create_record("pub.chive.graph.node", broken, "n3")
    gov.create_record(
        "pub.chive.graph.edge",
        {
            "$type": "pub.chive.graph.edge",
            "id": "e1",
            "sourceUri": f"at://{gov.did}/pub.chive.graph.node/n1",
            "targetUri": f"at://{gov.did}/pub.chive.graph.node/n2",
            "relationSlug": "broader",
            "status": "established",
            "createdAt": "2026-11-01T00:00:00.000Z",
        },
        "e1",
    )
    return {"alice": alice, "bob": bob, "gov": gov, "cited": cited, "citing": citing}


@pytest.fixture
def settings(tmp_path, atproto, world):
    admin = PdsAdmin(world["alice"])
    base = settings_for(tmp_path / "data", admin, atproto.plc_url)
    return admin, msgspec.structs.replace(
        base, governance_pds_url=atproto.pds_url, governance_did=world["gov"].did
    )


def test_the_reference_plc_serves_the_legacy_key_form(atproto, world):
    (method,) = atproto.did_document(world["alice"].did)["verificationMethod"]
    assert method["type"] == "EcdsaSecp256k1VerificationKey2019"
    assert method["id"] == "#atproto"


async def test_auth_outcomes_with_tokens_from_the_reference_pds(settings, world):
    admin, config = settings
    async with running_service(config, admin) as client:
        ok = await client.post(TRIGGER, {"type": "didSync", "did": world["bob"].did})
        assert ok.status_code == 200, ok.text
        assert ok.json()["operation"]["startedBy"] == world["alice"].did

        anonymous = await client.http.post(f"/xrpc/{TRIGGER}", json={"type": "governanceSync"})
        assert anonymous.status_code == 401
        assert anonymous.json()["error"] == "AuthenticationRequired"

        not_admin = await client.post(TRIGGER, {"type": "governanceSync"}, PdsAdmin(world["bob"]))
        assert not_admin.status_code == 403
        assert not_admin.json()["error"] == "AdminRequired"

        other_method = await client.http.post(
            f"/xrpc/{TRIGGER}",
            json={"type": "governanceSync"},
            headers={"authorization": f"Bearer {admin.token(STATUS)}"},
        )
        assert other_method.status_code == 401
        assert "lxm" in other_method.json()["message"]
        assert (await client.wait_finished(ok.json()["operation"]["id"]))["status"] == "completed"


async def test_every_type_against_the_reference_servers(settings, atproto, world):
    admin, config = settings
    alice, gov = world["alice"], world["gov"]
    async with running_service(config, admin) as client:
        index = FollowingIndex(config.data_dir)

        async def run(**params) -> dict:
            op = await client.trigger(**params)
            done = await client.wait_finished(op["id"], timeout=120)
            assert done["status"] == "completed", done
            return done

        # didSync: alice's five pub.chive records (two submissions, two comments... and not
        # her app.bsky post).
        done = await run(type="didSync", did=alice.did)
        # Read whole with getRepo and verified against her key from the PLC directory:
        # nothing skipped, nothing read unverified.
        assert done["recordsProcessed"] == 4 and "skipReasons" not in done, done
        await index.open()
        try:
            # pdsScan: every repo the PDS lists; bob's comment and the governance graph too.
            done = await run(type="pdsScan", pdsUrl=atproto.pds_url)
            assert done["recordsProcessed"] == 4 + 1 + 4 and "skipReasons" not in done, done

            async def indexed() -> bool:
                return (await index.stats())["live"] == 9

            await eventually(indexed, what="nine live records in the index")
            cited = await index.get(world["cited"])
            assert cited.did == alice.did and cited.value["title"] == CITED_TITLE

            # freshnessScan: an update and a delete at the source.
            _, new_cid = alice.put_record(
                "pub.chive.review.comment",
                "c1",
                {
                    "$type": "pub.chive.review.comment",
                    "eprintUri": world["cited"],
                    "body": "Convincing, on second reading too.",
                    "createdAt": "2026-11-03T00:00:00.000Z",
                },
            )
            alice.delete_record("pub.chive.review.comment", "c2")
            done = await run(type="freshnessScan")
            assert done["recordsDeleted"] == 1
            c1 = f"at://{alice.did}/pub.chive.review.comment/c1"
            c2 = f"at://{alice.did}/pub.chive.review.comment/c2"

            async def fresh() -> bool:
                one, two = await index.get(c1), await index.get(c2)
                return one.cid == new_cid and two.deleted

            await eventually(fresh, what="the update and the delete in the index")

            # governanceSync: three valid graph records, the node without a label skipped.
            done = await run(type="governanceSync")
            assert done["recordsProcessed"] == 3
            assert done["recordsSkipped"] == 1 and done["skipReasons"], done
            assert (await index.get(f"at://{gov.did}/pub.chive.graph.node/n1")) is not None

            # citationExtraction: the PDF blob from the PDS, its DOI reference matched.
            done = await run(type="citationExtraction", uri=world["citing"])
            assert done["recordsProcessed"] == 1 and done.get("recordsSkipped", 0) == 0, done

            async def citations() -> list:
                return await index.citations(world["citing"])

            await eventually(citations, what="the extracted citations in the index")
            shown = await citations()
            assert shown[0]["chiveUri"] == world["cited"] and shown[0]["matchedBy"] == "doi"
            assert len(shown) == 2
        finally:
            await index.close()


def test_the_loopback_pds_answers_as_the_reference_does(atproto, pds, plc, unique):
    """The fake PDS (kept for fault injection) follows the reference on every call the workers
    make: status codes, error names, field shapes and the paging rule (a cursor on every
    non-empty page, the page after the last full one empty without one)."""
    real = atproto.create_account("parity")
    collection = "pub.chive.review.comment"
    for i in range(3):
        real.create_record(collection, {"$type": collection, "n": i}, rkey=f"3k{i:010d}")
    fake_did = f"did:plc:parity{unique}"
    pds.add_repo(fake_did, {collection: 3})

    def call(base: str, nsid: str, **params):
        response = httpx.get(f"{base}/xrpc/{nsid}", params=params, timeout=10)
        body = response.json() if response.content else None
        return response.status_code, body

    plc_of = {atproto.pds_url: atproto.plc_url, pds.url: plc.url}
    for did, base in ((real.did, atproto.pds_url), (fake_did, pds.url)):
        status, described = call(base, "com.atproto.repo.describeRepo", repo=did)
        assert status == 200 and collection in described["collections"], (base, described)
        pages, cursor = [], None
        while True:
            params = {"repo": did, "collection": collection, "limit": 2}
            if cursor:
                params["cursor"] = cursor
            status, page = call(base, "com.atproto.repo.listRecords", **params)
            assert status == 200
            pages.append((len(page["records"]), "cursor" in page))
            cursor = page.get("cursor")
            if not page["records"]:
                break
        assert pages == [(2, True), (1, True), (0, False)], (base, pages)
        record = call(
            base, "com.atproto.repo.getRecord", repo=did, collection=collection, rkey="3k0000000001"
        )[1]
        assert set(record) >= {"uri", "cid", "value"}
        assert record["uri"] == f"at://{did}/{collection}/3k0000000001"
        missing = call(
            base, "com.atproto.repo.getRecord", repo=did, collection=collection, rkey="3knothere"
        )
        assert (missing[0], missing[1]["error"]) == (400, "RecordNotFound"), (base, missing)
        blob = call(base, "com.atproto.sync.getBlob", did=did, cid=CID_NOT_THERE)
        assert blob == (400, {"error": "InvalidRequest", "message": "Blob not found"}), base
        status, repos = call(base, "com.atproto.sync.listRepos", limit=1000)
        mine = [r for r in repos["repos"] if r["did"] == did]
        assert status == 200 and len(mine) == 1 and mine[0]["active"] is True
        assert set(mine[0]) >= {"did", "head", "rev", "active"}
        # getRepo: a CAR whose root is the commit listRepos names, signed with the key the
        # PLC directory publishes for the DID, holding the three records.
        response = httpx.get(f"{base}/xrpc/com.atproto.sync.getRepo", params={"did": did})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/vnd.ipld.car")
        document = httpx.get(f"{plc_of[base]}/{did}", timeout=10).json()
        key = keys.parse_verification_method(*signing_key_method(document))
        verified = repo.verify(response.content, did, key)
        assert (str(verified.commit), verified.rev) == (mine[0]["head"], mine[0]["rev"])
        assert [e.rkey for e in verified.entries if e.collection == collection] == [
            f"3k{i:010d}" for i in range(3)
        ]
        unknown = call(base, "com.atproto.sync.getRepo", did="did:plc:nobodyhere000000000000")
        assert (unknown[0], unknown[1]["error"]) == (400, "RepoNotFound"), (base, unknown)


CID_NOT_THERE = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
