"""Lexicon documents loaded from `schemas/`, and validation of values against them.

Requests and responses are checked against these files, so the schema the clients read is the
one the server enforces. Covers the lexicon subset our methods use: params, object, string
(formats, lengths, enum), integer, boolean, array, ref (local and cross-document), unknown.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from services.atproto.syntax import FORMATS


def schema_dir() -> Path:
    """Package data of the `schemas` package, so a wheel install finds them as a checkout does."""
    return Path(str(resources.files("schemas")))


class LexiconError(ValueError):
    pass


class Lexicons:
    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self._docs = docs

    @classmethod
    def load(cls, directory: Path | None = None) -> Lexicons:
        directory = directory or schema_dir()
        docs = {}
        for path in sorted(directory.glob("*.json")):
            doc = json.loads(path.read_text())
            docs[doc["id"]] = doc
        if not docs:
            raise FileNotFoundError(f"no lexicon documents in {directory}")
        return cls(docs)

    def nsids(self) -> list[str]:
        return sorted(self._docs)

    def document(self, nsid: str) -> dict[str, Any]:
        return self._docs[nsid]

    def main(self, nsid: str) -> dict[str, Any] | None:
        doc = self._docs.get(nsid)
        return doc["defs"]["main"] if doc else None

    def _resolve(self, ref: str, context: str) -> tuple[dict[str, Any], str]:
        nsid, _, name = ref.partition("#")
        nsid = nsid or context
        doc = self._docs.get(nsid)
        if doc is None or (name or "main") not in doc["defs"]:
            raise KeyError(f"unresolvable lexicon ref {ref!r} in {context}")
        return doc["defs"][name or "main"], nsid

    def validate_params(self, nsid: str, query: dict[str, list[str]]) -> dict[str, Any]:
        """Coerce query strings to the declared types; apply defaults."""
        spec = (self.main(nsid) or {}).get("parameters") or {"properties": {}}
        out: dict[str, Any] = {}
        for name, prop in spec.get("properties", {}).items():
            values = query.get(name)
            if not values:
                if "default" in prop:
                    out[name] = prop["default"]
                continue
            if prop["type"] != "array" and len(values) > 1:
                raise LexiconError(f"Parameter {name} must be given once")
            raw = values if prop["type"] == "array" else values[0]
            out[name] = self._check(_coerce(name, raw, prop), prop, name, nsid)
        for name in spec.get("required", []):
            if name not in out:
                raise LexiconError(f'Params must have the property "{name}"')
        return out

    def validate_input(self, nsid: str, value: Any) -> dict[str, Any]:
        schema = self.main(nsid)["input"]["schema"]
        return self._check(value, schema, "Input", nsid)

    def validate_output(self, nsid: str, value: Any) -> dict[str, Any]:
        schema = self.main(nsid)["output"]["schema"]
        return self._check(value, schema, "Output", nsid)

    def _check(self, value: Any, spec: dict[str, Any], path: str, context: str) -> Any:
        kind = spec["type"]
        if kind == "ref":
            target, target_context = self._resolve(spec["ref"], context)
            return self._check(value, target, path, target_context)
        if kind == "unknown":
            if not isinstance(value, dict):
                raise LexiconError(f"{path} must be an object")
            return value
        if kind == "object":
            if not isinstance(value, dict):
                raise LexiconError(f"{path} must be an object")
            out = dict(value)
            for name in spec.get("required", []):
                if value.get(name) is None:
                    raise LexiconError(f'{path} must have the property "{name}"')
            for name, prop in spec.get("properties", {}).items():
                if value.get(name) is None:
                    if "default" in prop:
                        out[name] = prop["default"]
                    else:
                        out.pop(name, None)
                    continue
                out[name] = self._check(value[name], prop, f"{path}/{name}", context)
            return out
        if kind == "array":
            if not isinstance(value, list):
                raise LexiconError(f"{path} must be an array")
            if "maxLength" in spec and len(value) > spec["maxLength"]:
                raise LexiconError(f"{path} must not have more than {spec['maxLength']} elements")
            return [
                self._check(v, spec["items"], f"{path}/{i}", context) for i, v in enumerate(value)
            ]
        if kind == "string":
            if not isinstance(value, str):
                raise LexiconError(f"{path} must be a string")
            size = len(value.encode())
            if "maxLength" in spec and size > spec["maxLength"]:
                raise LexiconError(f"{path} must not be longer than {spec['maxLength']} characters")
            if "enum" in spec and value not in spec["enum"]:
                raise LexiconError(f"{path} must be one of ({'|'.join(spec['enum'])})")
            fmt = spec.get("format")
            if fmt is not None and not FORMATS[fmt](value):
                raise LexiconError(f"{path} must be a valid {fmt}")
            return value
        if kind == "integer":
            if not isinstance(value, int) or isinstance(value, bool):
                raise LexiconError(f"{path} must be an integer")
            if "minimum" in spec and value < spec["minimum"]:
                raise LexiconError(f"{path} can not be less than {spec['minimum']}")
            if "maximum" in spec and value > spec["maximum"]:
                raise LexiconError(f"{path} can not be greater than {spec['maximum']}")
            return value
        if kind == "boolean":
            if not isinstance(value, bool):
                raise LexiconError(f"{path} must be a boolean")
            return value
        raise KeyError(f"lexicon type {kind!r} is not supported here")


def _coerce(name: str, raw: Any, prop: dict[str, Any]) -> Any:
    kind = prop["type"]
    if kind == "integer":
        try:
            return int(raw, 10)
        except ValueError:
            raise LexiconError(f"{name} must be an integer") from None
    if kind == "boolean":
        if raw not in ("true", "false"):
            raise LexiconError(f"{name} must be a boolean")
        return raw == "true"
    if kind == "array":
        return [_coerce(name, v, prop["items"]) for v in raw]
    return raw
