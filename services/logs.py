"""Process logging: JSON lines when stderr is not a terminal (or CHIVE_LOG_FORMAT=json), readable
text on a terminal. An operation's lines carry its id and type as fields
(`extra=operation_fields(...)`), so a log search finds an operation's whole life."""

from __future__ import annotations

import logging
import sys
import time

import msgspec

# The fields a record may carry besides the message (set through `extra=`).
FIELDS = ("operation_id", "backfill_type", "worker", "requested_by", "status", "error")


def operation_fields(operation_id: str, backfill_type: str, **more: object) -> dict[str, object]:
    return {"operation_id": operation_id, "backfill_type": backfill_type, **more}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(line).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [f"{n}={getattr(record, n)}" for n in FIELDS if getattr(record, n, None)]
        return f"{text} [{' '.join(fields)}]" if fields else text


def configure(level: str, fmt: str) -> None:
    """`fmt`: json, text, or auto (text on a terminal, JSON lines otherwise)."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pypdf logs every oddity of a damaged PDF at WARNING; citationExtraction reports the
    # outcome per eprint instead.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
