"""The XRPC error: `{"error": Name, "message": text}` with the HTTP status of its class, as the
reference server answers. Raised wherever a request is refused (service auth here, the API's
methods above) and turned into a response in one place (services/api/xrpc.py)."""

from __future__ import annotations


class XrpcError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
