"""The published event contracts (schemas/events/*.json, schemas/asyncapi.yaml) are what the
code writes: regenerated from the msgspec definitions they match byte for byte, and an event of
every type, as the service encodes it, validates against its schema."""

from __future__ import annotations

import json

import jsonschema
import msgspec
import pytest
import yaml

from events import contracts, model

pytestmark = pytest.mark.unit

SAMPLES = {
    "BackfillRequested": dict(
        backfill_type="didSync",
        params={"did": "did:plc:a"},
        requested_by="did:key:z",
        dedupe_key="didSync:did:plc:a",
    ),
    "BackfillStarted": dict(backfill_type="didSync", worker="didSync@host:1"),
    "BackfillProgressed": dict(
        backfill_type="pdsScan", records_processed=5, total_records=9, checkpoint={"n": 1}
    ),
    "BackfillCompleted": dict(
        backfill_type="pdsScan", records_processed=9, skip_reasons={"x": 1}, sources=["https://p"]
    ),
    "BackfillFailed": dict(backfill_type="didSync", error="DID not found"),
    "BackfillCancelRequested": dict(backfill_type="pdsScan", requested_by="did:key:z"),
    "BackfillCancelled": dict(backfill_type="pdsScan", records_processed=3),
    "RecordUpserted": dict(
        uri="at://did:plc:a/pub.chive.review.comment/3k",
        did="did:plc:a",
        collection="pub.chive.review.comment",
        rkey="3k",
        cid="bafyrei",
        value=msgspec.Raw(b'{"body": "x"}'),
    ),
    "RecordDeleted": dict(
        uri="at://did:plc:a/pub.chive.review.comment/3k",
        did="did:plc:a",
        collection="pub.chive.review.comment",
        rkey="3k",
    ),
    "CitationsExtracted": dict(
        uri="at://did:plc:a/pub.chive.eprint.submission/3k",
        did="did:plc:a",
        document_cid="bafkrei",
        method="pdf-text",
        citations=[model.Citation(title="T", year=2020, authors=["Ada"])],
    ),
    "RepoSynced": dict(
        uri="at://did:plc:a", did="did:plc:a", pds="https://p", rev="3k", commit="bafyrei"
    ),
}


def test_the_checked_in_contracts_are_what_the_code_generates():
    for path, text in contracts.generated().items():
        assert path.exists(), f"{path} is missing: run python -m events.contracts"
        assert path.read_text() == text, f"{path} is stale: run python -m events.contracts"
    on_disk = {p.name for p in (contracts.ROOT / "events").glob("*.json")}
    assert on_disk == {f"{name}.json" for name in contracts.event_types()}


def test_every_event_as_written_validates_against_its_schema():
    assert set(SAMPLES) == set(contracts.event_types())
    for name, kind in contracts.event_types().items():
        event = model.new_event(kind, "01op", **SAMPLES[name])
        written = json.loads(model.encode(event))
        schema = json.loads((contracts.ROOT / "events" / f"{name}.json").read_text())
        jsonschema.validate(written, schema)
        assert model.headers_for(event)["schema_version"] == str(schema["x-schema-version"])
        # And the schema is not a blank check: a payload without its id fails it.
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({k: v for k, v in written.items() if k != "event_id"}, schema)


def test_the_asyncapi_document_reads_back_as_generated():
    text = (contracts.ROOT / "asyncapi.yaml").read_text()
    document = yaml.safe_load(text)
    assert document == json.loads(json.dumps(contracts.asyncapi()))
    assert document["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in document["channels"].values()}
    assert {model.OPERATIONS_TOPIC, model.RECORDS_TOPIC} <= addresses
    for channel in document["channels"].values():
        for message in channel["messages"].values():
            name = message["$ref"].rsplit("/", 1)[1]
            payload = document["components"]["messages"][name]["payload"]
            ref = payload.get("$ref", "#")
            assert ref.startswith("#") or (contracts.ROOT / ref).exists(), ref
    assert document["x-upcasting"] == [
        {
            "event_type": "BackfillCompleted",
            "from_version": 1,
            "to_version": 2,
            "rule": model.UPCASTERS["BackfillCompleted", 1].__doc__,
        }
    ]
