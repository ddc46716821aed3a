"""Verification of AT Protocol inter-service JWTs, as the reference `verifyJwt` does it:
who signed a token for this service and this method. What callers may do is the API's
business (services/api/auth.py)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

from services.atproto import keys
from services.atproto.errors import XrpcError
from services.atproto.identity import DidNotFound, DidResolver, ResolutionError, signing_key_method
from services.atproto.syntax import is_did
from services.rate_limit import RateLimiter

_REJECTED_TYP = {"at+jwt", "refresh+jwt", "dpop+jwt"}
# The longest-lived token accepted (the reference PDS mints 60 s tokens, at most an hour on
# request), and how far ahead of our clock a token's `iat` may be.
MAX_TOKEN_LIFETIME_S = 3600
CLOCK_SKEW_S = 60
# Fresh DID-document lookups (after a bad signature) one client address may cause per minute.
FRESH_LOOKUPS_PER_CLIENT_PER_MINUTE = 10


def _unauthenticated(message: str) -> XrpcError:
    return XrpcError(401, "AuthenticationRequired", message)


def _is_number(value: object) -> bool:
    # JSON parsing here accepts NaN and Infinity: neither is a time.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Caller:
    did: str


class ServiceAuthVerifier:
    def __init__(self, resolver: DidResolver, service_did: str) -> None:
        self._resolver = resolver
        self._service_did = service_did
        self._fresh_lookups = RateLimiter(
            FRESH_LOOKUPS_PER_CLIENT_PER_MINUTE, burst=FRESH_LOOKUPS_PER_CLIENT_PER_MINUTE
        )

    async def verify(self, authorization: str | None, lxm: str, client: str = "unknown") -> Caller:
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
        if not _is_number(exp):
            raise _unauthenticated("Poorly formatted jwt: missing exp")
        now = time.time()
        if now > exp:
            raise _unauthenticated("jwt expired")
        if exp > now + MAX_TOKEN_LIFETIME_S + CLOCK_SKEW_S:
            raise _unauthenticated(f"jwt lifetime is over {MAX_TOKEN_LIFETIME_S} s")
        iat = payload.get("iat")
        if iat is not None and (not _is_number(iat) or iat > now + CLOCK_SKEW_S):
            raise _unauthenticated("jwt issued in the future")
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
            # The issuer may have rotated its key since we cached its document: retry once,
            # within this client's budget of fresh lookups (anyone can send a bad signature).
            if not did.startswith("did:key:") and self._fresh_lookups.take(client) is None:
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
