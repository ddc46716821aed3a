"""The operations fold: pure, deterministic, safe under redelivery and late events."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from events import model
from projections.operations import fold

pytestmark = pytest.mark.unit

_ids = itertools.count()


def ev(cls, t: int, **fields):
    base = {"event_id": f"e{next(_ids)}", "operation_id": "op1", "occurred_at": t}
    if cls is not model.BackfillRequested:
        base["backfill_type"] = "didSync"
    return cls(**base, **fields)


def requested(t: int = 1000):
    return ev(
        model.BackfillRequested,
        t,
        backfill_type="didSync",
        params={"did": "did:plc:a"},
        requested_by="did:key:zA",
        dedupe_key="k",
    )


def run(events):
    state = None
    for e in events:
        state = fold(state, e)
    return state


def test_request_creates_a_running_operation_with_time_from_the_event():
    op = run([requested(1234)])
    assert (op.status, op.started_at, op.updated_at, op.records_processed) == (
        "running",
        1234,
        1234,
        0,
    )


def test_events_before_a_request_are_ignored():
    assert fold(None, ev(model.BackfillProgressed, 5, records_processed=3)) is None


def test_progress_is_monotonic_and_keeps_the_latest_checkpoint():
    op = run(
        [
            requested(),
            ev(model.BackfillProgressed, 2000, records_processed=500, checkpoint={"c": 1}),
            ev(model.BackfillProgressed, 3000, records_processed=200, checkpoint={"c": 2}),
        ]
    )
    assert op.records_processed == 500
    assert op.checkpoint == {"c": 2}
    assert op.updated_at == 3000


def test_completion_sets_the_exact_count_and_nothing_changes_it_after():
    done = run(
        [
            requested(),
            ev(model.BackfillProgressed, 2000, records_processed=900),
            ev(model.BackfillCompleted, 3000, records_processed=850, sources=["https://pds"]),
        ]
    )
    assert (done.status, done.records_processed, done.completed_at) == ("completed", 850, 3000)
    late = [
        ev(model.BackfillProgressed, 4000, records_processed=10_000),
        ev(model.BackfillFailed, 4001, error="late"),
        ev(model.BackfillCancelled, 4002),
        ev(model.BackfillCancelRequested, 4003, requested_by="did:key:zA"),
        requested(5000),
    ]
    state = done
    for e in late:
        state = fold(state, e)
    assert state == done


def test_cancel_request_then_cancelled():
    op = run([requested(), ev(model.BackfillCancelRequested, 1500, requested_by="did:key:zB")])
    assert op.cancel_requested and op.status == "running"
    op = fold(op, ev(model.BackfillCancelled, 1600, records_processed=40))
    assert (op.status, op.records_processed, op.completed_at) == ("cancelled", 40, 1600)


def test_redelivered_events_change_nothing():
    events = [
        requested(),
        ev(model.BackfillStarted, 1100, worker="w", attempt=1),
        ev(model.BackfillProgressed, 1200, records_processed=10, checkpoint={"c": 1}),
    ]
    once = run(events)
    twice = run(events + events)
    assert once == twice


def test_same_events_same_state_every_time():
    events = [
        requested(),
        ev(model.BackfillStarted, 1100, worker="w", attempt=1),
        ev(model.BackfillStarted, 1200, worker="w2", attempt=2),
        ev(model.BackfillFailed, 1300, error="boom", records_processed=7),
    ]
    states = {model.encode(e) for e in events}
    assert len(states) == 4
    results = [run(events) for _ in range(3)]
    assert results[0] == results[1] == results[2]
    assert results[0].attempts == 2 and results[0].error == "boom"


def test_folding_leaves_the_state_it_was_given_as_it_was():
    # Readers keep earlier states (a view's snapshot, the state before a redelivery): the
    # fold returns a new state and never changes one it was handed.
    events = [
        ev(model.BackfillStarted, 1100, worker="w", attempt=1),
        ev(model.BackfillProgressed, 1200, records_processed=10, checkpoint={"c": 1}),
        ev(model.BackfillCancelRequested, 1250, requested_by="did:key:zA"),
        ev(model.BackfillCompleted, 1300, records_processed=12, sources=["https://pds"]),
    ]
    state = run([requested()])
    for event in events:
        before = msgspec.json.encode(state)
        new = fold(state, event)
        assert new is not state
        assert msgspec.json.encode(state) == before
        state = new
    assert (state.status, state.records_processed, state.cancel_requested, state.updated_at) == (
        "completed",
        12,
        True,
        1300,
    )


def test_event_encoding_round_trips_with_headers():
    e = ev(model.BackfillProgressed, 7, records_processed=1, checkpoint={"x": [1, 2]})
    assert model.decode(model.encode(e)) == e
    assert model.headers_for(e) == {
        "event_type": "BackfillProgressed",
        "event_id": e.event_id,
        "schema_version": "1",
        "backfill_type": "didSync",
    }


def test_undecodable_events_raise_decode_error():
    import pytest

    for raw in (b"not json", b"[]", b'{"event_type":"Nope"}', b'{"event_type":"BackfillFailed"}'):
        with pytest.raises(model.DecodeError):
            model.decode(raw)


V1_COMPLETED = (
    b'{"event_type":"BackfillCompleted","event_id":"old1","operation_id":"op1",'
    b'"occurred_at":3000,"schema_version":1,"backfill_type":"didSync",'
    b'"records_processed":12,"total_records":null,"sources":["https://pds.example"]}'
)


def test_v1_completed_is_upcast_to_v2():
    event = model.decode(V1_COMPLETED)
    assert isinstance(event, model.BackfillCompleted)
    assert (event.schema_version, event.records_skipped, event.records_processed) == (2, 0, 12)
    fresh = ev(model.BackfillCompleted, 3000, records_processed=12, records_skipped=4)
    assert model.decode(model.encode(fresh)).records_skipped == 4
    assert model.headers_for(fresh)["schema_version"] == "2"


def test_a_log_of_v1_and_v2_events_folds_to_the_right_state():
    second = msgspec.structs.replace(requested(4000), operation_id="op2", event_id="r2")
    v2_done = msgspec.structs.replace(
        ev(model.BackfillCompleted, 5000, records_processed=7, records_skipped=2),
        operation_id="op2",
    )
    log = [model.encode(requested(1000)), V1_COMPLETED, model.encode(second), model.encode(v2_done)]
    states: dict[str, object] = {}
    for raw in log:
        event = model.decode(raw)
        states[event.operation_id] = fold(states.get(event.operation_id), event)
    assert [(o.status, o.records_processed, o.records_skipped) for o in states.values()] == [
        ("completed", 12, 0),
        ("completed", 7, 2),
    ]


def test_unknown_future_versions_are_refused():
    import pytest

    future = V1_COMPLETED.replace(b'"schema_version":1', b'"schema_version":9')
    with pytest.raises(model.DecodeError, match="schema_version"):
        model.decode(future)


def test_datetime_format_is_utc_z_with_milliseconds():
    assert model.format_datetime(0) == "1970-01-01T00:00:00.000Z"
    assert model.format_datetime(1_795_886_738_452) == "2026-11-28T17:25:38.452Z"
