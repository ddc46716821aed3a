"""Pure pieces: formats, parameter rules, keys, lexicon validation, settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args, get_origin

import msgspec
import pytest

from services.api.lexicon import LexiconError, Lexicons
from services.api.params import backfill_params, dedupe_key
from services.atproto import keys
from services.atproto import syntax as formats
from services.atproto.errors import XrpcError
from services.settings import Settings, SettingsError, env_name, load

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "did,ok",
    [
        ("did:plc:z72i7hdynmk6r22z27h6tvur", True),
        ("did:web:localhost%3A8080", True),
        ("did:key:zQ3shabc", True),
        ("did:PLC:abc", False),
        ("did:plc:", False),
        ("did:plc:abc:", False),
        ("plc:abc", False),
        ("did:plc:" + "a" * 2048, False),
    ],
)
def test_did_format(did, ok):
    assert formats.is_did(did) is ok


@pytest.mark.parametrize(
    "uri,parsed",
    [
        (
            "at://did:plc:abc/pub.chive.eprint.submission/3k2a",
            ("did:plc:abc", "pub.chive.eprint.submission", "3k2a"),
        ),
        (
            "at://alice.example.com/pub.chive.eprint.submission",
            ("alice.example.com", "pub.chive.eprint.submission", None),
        ),
        ("at://did:plc:abc", ("did:plc:abc", None, None)),
        ("at://did:plc:abc/notannsid/x", None),
        ("at://did:plc:abc/pub.chive.a.b/..", None),
        ("at://did:plc:abc/pub.chive.a.b/x/y", None),
        ("https://x/y", None),
        ("at://", None),
    ],
)
def test_at_uri_format(uri, parsed):
    assert formats.parse_at_uri(uri) == parsed


@pytest.mark.parametrize(
    "value,ok",
    [
        ("2026-11-28T17:25:38.452Z", True),
        ("2026-11-28T17:25:38+01:00", True),
        ("2026-11-28T17:25:38", False),
        ("2026-02-30T00:00:00Z", False),
        ("2026-11-28", False),
    ],
)
def test_datetime_format(value, ok):
    assert formats.is_datetime(value) is ok


def test_params_normalise_and_dedupe():
    kind, params = backfill_params({"type": "pdsScan", "pdsUrl": "HTTPS://PDS.Example/"})
    assert (kind, params) == ("pdsScan", {"pdsUrl": "https://pds.example"})
    assert backfill_params({"type": "fullReindex"})[1] == {"batchSize": 100}
    a = dedupe_key("fullReindex", {"batchSize": 100})
    assert a == dedupe_key(*backfill_params({"type": "fullReindex", "batchSize": 100}))
    assert a != dedupe_key("fullReindex", {"batchSize": 101})
    with pytest.raises(XrpcError) as err:
        backfill_params({"type": "didSync", "did": "did:plc:a", "uri": "at://x/y.z/k"})
    assert err.value.status == 400 and "uri" in err.value.message


def test_did_key_round_trip_and_signatures():
    for curve, prefix in ((keys.K256, "did:key:zQ3s"), (keys.P256, "did:key:zDn")):
        key = keys.PrivateKey.generate(curve)
        did = key.public.did_key()
        assert did.startswith(prefix)
        public = keys.parse_did_key(did)
        sig = key.sign(b"message")
        assert len(sig) == 64 and public.verify(sig, b"message")
        assert not public.verify(sig, b"other message")
        assert not public.verify(sig[:-1], b"message")
    with pytest.raises(keys.KeyError_):
        keys.parse_did_key("did:key:zNotAKey0")


def test_k256_signatures_verify_as_openssl_verifies_them():
    """k256 signatures are checked by libsecp256k1 (fast); OpenSSL's answer is the reference:
    they agree on valid, altered, foreign, zero, high-S and truncated signatures."""
    import random

    rng = random.Random(7)
    key, other = keys.PrivateKey.generate(keys.K256), keys.PrivateKey.generate(keys.K256)
    public = key.public
    verdicts = []
    for i in range(40):
        message = rng.randbytes(rng.randint(0, 300))
        sig = key.sign(message)
        r, s = sig[:32], int.from_bytes(sig[32:], "big")
        flipped = bytearray(sig)
        flipped[rng.randrange(64)] ^= 1 << rng.randrange(8)
        for candidate, text in (
            (sig, message),
            (sig, message + b"x"),
            (bytes(flipped), message),
            (other.sign(message), message),
            (bytes(64), message),
            (r + (keys.K256.order - s).to_bytes(32, "big"), message),
            (sig[:63], message),
        ):
            verdict = public.verify(candidate, text)
            assert verdict == public.verify_with_openssl(candidate, text), (i, candidate.hex())
            verdicts.append(verdict)
    assert verdicts.count(True) == 40  # the genuine ones, and nothing else


def test_base58_round_trip():
    for data in (b"", b"\x00\x00abc", bytes(range(40))):
        assert keys.b58decode(keys.b58encode(data)) == data


def test_key_file_is_created_once(tmp_path):
    path = tmp_path / "k.pem"
    first = keys.load_or_create(path)
    assert keys.load_or_create(path).public.did_key() == first.public.did_key()
    assert oct(path.stat().st_mode)[-3:] == "600"


def test_lexicon_validation_from_files():
    lx = Lexicons.load()
    body = lx.validate_input("pub.chive.admin.triggerBackfill", {"type": "didSync"})
    assert body["batchSize"] == 100
    with pytest.raises(LexiconError, match="did"):
        lx.validate_input("pub.chive.admin.triggerBackfill", {"type": "x", "did": "nope"})
    out = {
        "operation": {
            "id": "a",
            "type": "didSync",
            "status": "running",
            "startedAt": "2026-01-01T00:00:00.000Z",
            "recordsProcessed": 0,
        }
    }
    assert lx.validate_output("pub.chive.admin.triggerBackfill", out) == out
    with pytest.raises(LexiconError, match="startedAt"):
        lx.validate_output(
            "pub.chive.admin.triggerBackfill",
            {"operation": {**out["operation"], "startedAt": "yesterday"}},
        )
    with pytest.raises(LexiconError, match="recordsProcessed"):
        bad = dict(out["operation"])
        del bad["recordsProcessed"]
        lx.validate_output("pub.chive.admin.triggerBackfill", {"operation": bad})
    assert lx.validate_params("pub.chive.admin.getBackfillStatus", {}) == {"limit": 50}
    with pytest.raises(LexiconError):
        lx.validate_params("pub.chive.admin.getBackfillStatus", {"limit": ["1", "2"]})


def test_seed_contract_is_kept():
    """Our triggerBackfill lexicon only adds optional fields to the published one."""
    import json
    from pathlib import Path

    # The published contract's lexicon, kept in the repository as it was handed to us.
    seed_path = Path(__file__).parent / "contract" / "pub.chive.admin.triggerBackfill.seed.json"
    seed = json.loads(seed_path.read_text())
    ours = json.loads(
        (
            Path(__file__).resolve().parents[1] / "schemas/pub.chive.admin.triggerBackfill.json"
        ).read_text()
    )
    for name, definition in seed["defs"].items():
        mine = ours["defs"][name]
        assert mine["type"] == definition["type"]
        if name == "main":
            assert mine["input"]["schema"]["required"] == definition["input"]["schema"]["required"]
            assert set(definition["input"]["schema"]["properties"]) <= set(
                mine["input"]["schema"]["properties"]
            )
            assert [e["name"] for e in mine["errors"]] == [e["name"] for e in definition["errors"]]
        else:
            assert mine["required"] == definition["required"]
            for prop, spec in definition["properties"].items():
                assert mine["properties"][prop]["type"] == spec["type"]


def test_settings_from_environment(tmp_path):
    s = load(
        {
            "CHIVE_DATA_DIR": str(tmp_path),
            "CHIVE_PORT": "9000",
            "CHIVE_ADMIN_DIDS": "did:plc:a, did:web:b.example",
        }
    )
    assert s.port == 9000 and s.admin_dids == ("did:plc:a", "did:web:b.example")
    assert s.event_log == "sqlite"
    for env, message in [
        ({"CHIVE_EVENT_LOG": "redis"}, "sqlite or kafka"),
        ({"CHIVE_EVENT_LOG": "kafka"}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"CHIVE_PORT": "http"}, "integer"),
        ({"CHIVE_ADMIN_DIDS": "alice"}, "not a DID"),
        ({"CHIVE_PLC_URL": "plc"}, "URL"),
        ({"CHIVE_PORT": "70000"}, "between 0 and 65535"),
        ({"CHIVE_SOURCE_TIMEOUT_S": "nan"}, "between"),
        ({"CHIVE_SOURCE_TIMEOUT_S": "soon"}, "a number"),
        ({"CHIVE_KAFKA_IDEMPOTENCE": "maybe"}, "true or false"),
        ({"CHIVE_LOG_LEVEL": "loud"}, "DEBUG or INFO"),
        ({"CHIVE_GOVERNANCE_DID": "gov"}, "must be a DID"),
    ]:
        with pytest.raises(SettingsError, match=message):
            load(env)


def test_settings_parse_every_kind():
    s = load(
        {
            "CHIVE_SOURCE_TIMEOUT_S": "0.5",
            "CHIVE_KAFKA_IDEMPOTENCE": "no",
            "CHIVE_LOG_LEVEL": "debug",
            "CHIVE_PLC_URL": "https://plc.example/",
            "CHIVE_GROBID_URL": "",
            "CHIVE_SOURCE_CONCURRENCY_PER_PDS": "2",
            "KAFKA_BOOTSTRAP_SERVERS": "b:9092",
        }
    )
    assert s.source_timeout_s == 0.5 and s.kafka_idempotence is False
    assert s.log_level == "DEBUG" and s.plc_url == "https://plc.example"
    assert s.grobid_url is None and s.source_concurrency_per_pds == 2
    assert s.kafka_bootstrap_servers == "b:9092"
    assert load({}) == Settings()  # the declared defaults are what an empty environment gives


def test_every_setting_is_bounded_and_documented():
    """One declaration per setting: each number has bounds, and the README's table names each
    variable."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for field in msgspec.structs.fields(Settings):
        assert f"`{env_name(field.name)}`" in readme, env_name(field.name)
        kind = field.type
        if get_origin(kind) is Annotated and get_args(kind)[0] in (int, float):
            assert any(m.ge is not None and m.le is not None for m in get_args(kind)[1:])
        else:
            assert kind not in (int, float), f"{field.name} has no bounds"


def test_did_cache_is_bounded_least_recently_used_first(monkeypatch):
    from collections import OrderedDict

    from services.atproto import identity

    monkeypatch.setattr(identity, "MAX_ENTRIES", 2)
    cache: OrderedDict = OrderedDict()
    identity._remember(cache, "did:plc:a", 1)
    identity._remember(cache, "did:plc:b", 2)
    cache.move_to_end("did:plc:a")  # a read
    identity._remember(cache, "did:plc:c", 3)
    assert list(cache) == ["did:plc:a", "did:plc:c"]


def test_event_ids_are_time_ordered_unique_and_in_their_alphabet():
    import time

    from events import model

    ids = [model.new_event_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 26 and set(i) <= set("0123456789abcdefghjkmnpqrstvwxyz") for i in ids)
    # The first ten characters are the millisecond, so ids sort by the time they were made.
    now = int(time.time() * 1000)
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    assert model._ulid(now)[:10] == "".join(alphabet[(now >> s) & 31] for s in range(45, -5, -5))
    assert model._ulid(now + 1)[:10] > model._ulid(now)[:10]
    # Every character of the random part is used (they come from bytes' low five bits).
    assert {c for i in ids for c in i[10:]} == set(alphabet)
