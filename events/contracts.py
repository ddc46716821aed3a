"""The published contracts of the event log, generated from the msgspec definitions: a JSON
Schema per event type (schemas/events/<EventType>.json) and an AsyncAPI 3 document of both
topics (schemas/asyncapi.yaml). `python -m events.contracts` writes them; a test fails when the
checked-in files and the code disagree.
"""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path
from typing import Any

import msgspec

from events import dlq, model

ROOT = Path(__file__).resolve().parents[1] / "schemas"
HEADERS = {
    "event_type": "The event's type: the payload's `event_type` (read it without decoding).",
    "event_id": "Unique per event (ULID); consumers dedupe on it.",
    "schema_version": "The payload's schema version (see x-upcasting).",
    "backfill_type": "Operation events only: the backfill type, so a worker skips others.",
}


def event_types() -> dict[str, type]:
    kinds = [*typing.get_args(model.OperationEvent), *typing.get_args(model.RecordEvent)]
    return {kind.__name__: kind for kind in kinds}


def event_schema(kind: type) -> dict[str, Any]:
    schema = msgspec.json.schema(kind)
    version = model.CURRENT_VERSIONS.get(kind.__name__, 1)
    described = {"description": " ".join(kind.__doc__.split())} if kind.__doc__ else {}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://chive.pub/schemas/events/{kind.__name__}.json",
        "title": kind.__name__,
        **described,
        "x-schema-version": version,
        **schema,
    }


def _message(name: str, topic_key: str) -> dict[str, Any]:
    return {
        "name": name,
        "title": name,
        "contentType": "application/json",
        "headers": {
            "type": "object",
            "properties": {h: {"type": "string", "description": d} for h, d in HEADERS.items()},
            "required": ["event_type", "event_id", "schema_version"],
        },
        "payload": {"$ref": f"events/{name}.json"},
        "bindings": {"kafka": {"key": {"type": "string", "description": topic_key}}},
    }


def asyncapi() -> dict[str, Any]:
    operations = [k.__name__ for k in typing.get_args(model.OperationEvent)]
    records = [k.__name__ for k in typing.get_args(model.RecordEvent)]
    messages = {
        **{n: _message(n, "the operation id") for n in operations},
        **{n: _message(n, "the record's at-uri (at://<did> for RepoSynced)") for n in records},
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "chive-backfill event log",
            "version": "1",
            "description": (
                "The topics chive-backfill writes. Events are JSON, tagged by `event_type`; "
                "per key they are in order. A consumer decodes an older schema_version by "
                "applying the upcasters listed in x-upcasting, in order."
            ),
        },
        "channels": {
            "operations": {
                "address": model.OPERATIONS_TOPIC,
                "description": "Every backfill operation's life, keyed by its id.",
                "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in operations},
            },
            "records": {
                "address": model.RECORDS_TOPIC,
                "description": "What the workers found: records, deletes, citation sets, "
                "repository revisions, keyed by at-uri.",
                "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in records},
            },
            "deadLetters": {
                "address": dlq.DLQ_TOPIC,
                "description": "Events a consumer could not decode or fold, parked with the "
                "reason before it moved past them.",
                "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
            },
        },
        "operations": {
            "consumeOperations": {
                "action": "receive",
                "channel": {"$ref": "#/channels/operations"},
            },
            "consumeRecords": {"action": "receive", "channel": {"$ref": "#/channels/records"}},
        },
        "components": {
            "messages": {
                **messages,
                "DeadLetter": {
                    "name": "DeadLetter",
                    "contentType": "application/json",
                    "payload": msgspec.json.schema(dlq.DeadLetter),
                },
            }
        },
        "x-upcasting": [
            {"event_type": t, "from_version": v, "to_version": v + 1, "rule": f.__doc__ or ""}
            for (t, v), f in sorted(model.UPCASTERS.items())
        ],
        "x-current-versions": dict(sorted(model.CURRENT_VERSIONS.items())),
    }


def render_yaml(value: Any, indent: int = 0) -> str:
    """YAML for plain data (dicts, lists, scalars); strings are JSON-quoted, which YAML reads."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{json.dumps(key)}:\n{render_yaml(item, indent + 1)}")
            else:
                lines.append(f"{pad}{json.dumps(key)}: {render_yaml(item, 0)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for item in value:
            text = render_yaml(item, indent + 1)
            nested = isinstance(item, (dict, list)) and item
            lines.append(f"{pad}- {text.lstrip()}" if nested else f"{pad}- {text}")
        return "\n".join(lines)
    return json.dumps(value)


def generated() -> dict[Path, str]:
    """Every contract file, path -> content."""
    files = {
        ROOT / "events" / f"{name}.json": json.dumps(event_schema(kind), indent=2) + "\n"
        for name, kind in event_types().items()
    }
    header = "# Generated by `python -m events.contracts` from events/model.py: do not edit.\n"
    files[ROOT / "asyncapi.yaml"] = header + render_yaml(asyncapi()) + "\n"
    return files


def main() -> int:
    for path, text in generated().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path.relative_to(ROOT.parent), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
