"""Verification of AT Protocol inter-service JWTs (DESIGN.md section 4), as the reference
`verifyJwt` does it, plus the admin check."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from services import keys
from services.api.formats import is_did
from services.api.xrpc import XrpcError
from services.identity import DidNotFound, DidResolver, ResolutionError, signing_key_method

_REJECTED_TYP = {"at+jwt", "refresh+jwt", "dpop+jwt"}


def _unauthenticated(message: str) -> XrpcError:
    return XrpcError(401, "AuthenticationRequired", message)


@dataclass(frozen=True)
class Caller:
    did: str


class ServiceAuth:
    def __init__(self, resolver: DidResolver, service_did: str, admins: frozenset[str]) -> None:
        self._resolver = resolver
        self._service_did = service_did
        self._admins = admins

    async def require_admin(self, authorization: str | None, lxm: str) -> Caller:
        caller = await self.verify(authorization, lxm)
        if caller.did not in self._admins:
            raise XrpcError(403, "AdminRequired", "This method requires an admin account")
        return caller

    async def verify(self, authorization: str | None, lxm: str) -> Caller:
        if not authorization:
            raise _unauthenticated("Authentication Required")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated("Unexpected authorization type")
        token = token.strip()
        parts = token.split(".")
        if len(parts) != 3:
            raise _unauthenticated("Poorly formatted jwt")
        try:
            header = json.loads(keys.b64url_decode(parts[0]))
            payload = json.loads(keys.b64url_decode(parts[1]))
            signature = keys.b64url_decode(parts[2])
        except (ValueError, UnicodeDecodeError):
            raise _unauthenticated("Poorly formatted jwt") from None
        if not isinstance(header, dict) or not isinstance(payload, dict):
            raise _unauthenticated("Poorly formatted jwt")
        if header.get("typ") in _REJECTED_TYP:
            raise _unauthenticated("Invalid jwt type")
        iss, aud, exp = payload.get("iss"), payload.get("aud"), payload.get("exp")
        if not isinstance(iss, str) or not isinstance(aud, str):
            raise _unauthenticated("Poorly formatted jwt")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise _unauthenticated("Poorly formatted jwt: missing exp")
        if time.time() > exp:
            raise _unauthenticated("jwt expired")
        if aud != self._service_did:
            raise _unauthenticated("jwt audience does not match service did")
        if "lxm" not in payload:
            raise _unauthenticated('missing jwt lexicon method ("lxm")')
        if payload["lxm"] != lxm:
            raise _unauthenticated(f'bad jwt lexicon method ("lxm"). must match: {lxm}')
        did = iss.split("#", 1)[0]
        if not is_did(did):
            raise _unauthenticated("jwt issuer is not a DID")
        signing_input = f"{parts[0]}.{parts[1]}".encode()
        alg = header.get("alg")
        key = await self._key(did, fresh=False)
        if key.curve.jwt_alg != alg or not key.verify(signature, signing_input):
            # The issuer may have rotated its key since we cached its document: retry once.
            if not did.startswith("did:key:"):
                key = await self._key(did, fresh=True)
            if key.curve.jwt_alg != alg:
                raise _unauthenticated("jwt alg does not match the issuer's key type")
            if not key.verify(signature, signing_input):
                raise _unauthenticated("jwt signature does not match jwt issuer")
        return Caller(did)

    async def _key(self, did: str, *, fresh: bool) -> keys.PublicKey:
        try:
            if did.startswith("did:key:"):
                key = keys.parse_did_key(did)
            else:
                document = await self._resolver.resolve(did, fresh=fresh)
                method = signing_key_method(document)
                if method is None:
                    raise _unauthenticated("missing or bad key in did doc")
                key = keys.parse_verification_method(*method)
        except keys.KeyError_ as exc:
            raise _unauthenticated(f"bad key for jwt issuer: {exc}") from None
        except DidNotFound:
            raise _unauthenticated("could not resolve jwt issuer") from None
        except ResolutionError:
            raise XrpcError(
                502, "UpstreamFailure", "could not reach the jwt issuer's DID directory"
            ) from None
        return key
