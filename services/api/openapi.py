"""The OpenAPI 3.1 document of the XRPC methods, derived from the lexicons (the files the
server validates with): each method's parameters or input, its output, and the errors it
answers with their status codes. Served at /openapi.json."""

from __future__ import annotations

from typing import Any

from services.api.lexicon import Lexicons

# What every method may answer besides its lexicon's errors, by status (services/api/xrpc.py).
COMMON_ERRORS = {
    "400": ["InvalidRequest"],
    "401": ["AuthenticationRequired"],
    "403": ["AdminRequired"],
    "413": ["PayloadTooLarge"],
    "429": ["RateLimitExceeded"],
    "503": ["NotEnoughResources"],
}
# Lexicon string formats as JSON Schema formats (the others are named, not enforced here).
FORMATS = {"datetime": "date-time", "uri": "uri"}


def openapi(lexicons: Lexicons, *, version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    components: dict[str, Any] = {}
    for nsid in lexicons.nsids():
        doc = lexicons.document(nsid)
        for name, definition in doc["defs"].items():
            if definition.get("type") in ("object", "string", "integer", "array"):
                components[_component(nsid, name)] = _schema(definition, nsid)
        main = doc["defs"].get("main", {})
        if main.get("type") not in ("query", "procedure"):
            continue
        paths[f"/xrpc/{nsid}"] = {
            "get" if main["type"] == "query" else "post": _operation(nsid, main)
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chive-backfill XRPC",
            "version": version,
            "description": "Admin methods of the Chive backfill control plane. Every call needs "
            "a service-auth JWT of an admin (aud: the service DID, lxm: the method).",
        },
        "paths": paths,
        "components": {
            "schemas": {**components, "XrpcError": _XRPC_ERROR},
            "securitySchemes": {"serviceAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"serviceAuth": []}],
    }


_XRPC_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}


def _operation(nsid: str, main: dict[str, Any]) -> dict[str, Any]:
    errors = {status: list(names) for status, names in COMMON_ERRORS.items()}
    common = {name for names in COMMON_ERRORS.values() for name in names}
    # The lexicon's own errors are answered with 400, as the reference server does.
    errors["400"] += [e["name"] for e in main.get("errors", []) if e["name"] not in common]
    responses: dict[str, Any] = {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": _schema(main["output"]["schema"], nsid)}},
        }
    }
    for status, names in errors.items():
        responses[status] = {
            "description": ", ".join(names),
            "content": {
                "application/json": {
                    "schema": {
                        "allOf": [
                            {"$ref": "#/components/schemas/XrpcError"},
                            {"properties": {"error": {"enum": names}}},
                        ]
                    }
                }
            },
        }
    operation: dict[str, Any] = {
        "operationId": nsid,
        "summary": main.get("description", nsid),
        "responses": responses,
    }
    if main["type"] == "query":
        params = main.get("parameters", {})
        required = set(params.get("required", []))
        operation["parameters"] = [
            {"name": name, "in": "query", "required": name in required, "schema": _schema(p, nsid)}
            for name, p in params.get("properties", {}).items()
        ]
    else:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema(main["input"]["schema"], nsid)}},
        }
    return operation


def _component(nsid: str, name: str) -> str:
    return nsid if name == "main" else f"{nsid}.{name}"


def _schema(spec: dict[str, Any], context: str) -> dict[str, Any]:
    kind = spec.get("type")
    out: dict[str, Any] = {}
    if "description" in spec:
        out["description"] = spec["description"]
    if kind == "ref":
        target, _, name = spec["ref"].partition("#")
        return {"$ref": f"#/components/schemas/{_component(target or context, name or 'main')}"}
    if kind in ("object", "params"):
        out["type"] = "object"
        out["properties"] = {k: _schema(v, context) for k, v in spec.get("properties", {}).items()}
        if spec.get("required"):
            out["required"] = list(spec["required"])
    elif kind == "string":
        out["type"] = "string"
        for key in ("maxLength", "minLength"):
            if key in spec:
                out[key] = spec[key]
        if spec.get("format") in FORMATS:
            out["format"] = FORMATS[spec["format"]]
        elif "format" in spec:
            out["x-lexicon-format"] = spec["format"]
        if "enum" in spec:
            out["enum"] = list(spec["enum"])
        elif "knownValues" in spec:
            out["examples"] = list(spec["knownValues"])
    elif kind == "integer":
        out["type"] = "integer"
        for lex, key in (("minimum", "minimum"), ("maximum", "maximum"), ("default", "default")):
            if lex in spec:
                out[key] = spec[lex]
    elif kind == "boolean":
        out["type"] = "boolean"
    elif kind == "array":
        out["type"] = "array"
        out["items"] = _schema(spec["items"], context)
    # "unknown": any JSON value, so no constraint.
    return out
