"""Who may call the admin methods: a caller whose service-auth token verifies
(services/atproto/service_auth.py) and whose DID is in the admin list."""

from __future__ import annotations

from services.atproto.errors import XrpcError
from services.atproto.identity import DidResolver
from services.atproto.service_auth import Caller, ServiceAuthVerifier


class ServiceAuth:
    def __init__(self, resolver: DidResolver, service_did: str, admins: frozenset[str]) -> None:
        self._verifier = ServiceAuthVerifier(resolver, service_did)
        self._admins = admins

    async def require_admin(
        self, authorization: str | None, lxm: str, client: str = "unknown"
    ) -> Caller:
        caller = await self._verifier.verify(authorization, lxm, client)
        if caller.did not in self._admins:
            raise XrpcError(403, "AdminRequired", "This method requires an admin account")
        return caller
