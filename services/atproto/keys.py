"""did:key encoding and ES256K / ES256 signatures as AT Protocol uses them.

Signatures are compact r||s (64 bytes), low-S; did:key is multibase base58btc over a multicodec
prefix (0xe7 0x01 secp256k1, 0x80 0x24 P-256) and the compressed point.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import time
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import coincurve
from coincurve.ecdsa import cdata_to_der, deserialize_compact
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)


def _sha256(message: bytes) -> bytes:
    return sha256(message).digest()


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


@dataclass(frozen=True)
class Curve:
    jwt_alg: str
    prefix: bytes
    curve: ec.EllipticCurve
    order: int


K256 = Curve(
    "ES256K",
    b"\xe7\x01",
    ec.SECP256K1(),
    0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
)
P256 = Curve(
    "ES256",
    b"\x80\x24",
    ec.SECP256R1(),
    0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
)
CURVES = (K256, P256)


class KeyError_(ValueError):
    """A key that cannot be parsed."""


def b58decode(s: str) -> bytes:
    n = 0
    for c in s:
        if c not in _B58_INDEX:
            raise KeyError_(f"invalid base58 character {c!r}")
        n = n * 58 + _B58_INDEX[c]
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(s) - len(s.lstrip("1"))
    return b"\x00" * pad + body


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\x00"))
    return "1" * pad + "".join(reversed(out))


@dataclass(frozen=True)
class PublicKey:
    curve: Curve
    key: ec.EllipticCurvePublicKey

    def verify(self, signature: bytes, message: bytes) -> bool:
        rs = self._low_s(signature)
        if rs is None:
            return False
        if self.curve is K256:
            try:
                return self._secp256k1.verify(
                    cdata_to_der(deserialize_compact(signature)), message, hasher=_sha256
                )
            except ValueError:
                return False
        return self._openssl(rs, message)

    def verify_with_openssl(self, signature: bytes, message: bytes) -> bool:
        """OpenSSL for any curve: the path of every curve but k256, and the reference the
        k256 path is tested against."""
        rs = self._low_s(signature)
        return rs is not None and self._openssl(rs, message)

    def _low_s(self, signature: bytes) -> tuple[int, int] | None:
        """(r, s) of a compact r||s in range and low-S, else None: high-S signatures are
        malleable copies; the reference verifier refuses them too."""
        if len(signature) != 64:
            return None
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if 0 < r < self.curve.order and 0 < s <= self.curve.order // 2:
            return r, s
        return None

    def _openssl(self, rs: tuple[int, int], message: bytes) -> bool:
        try:
            self.key.verify(encode_dss_signature(*rs), message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    @functools.cached_property
    def _secp256k1(self) -> coincurve.PublicKey:
        # libsecp256k1: a verification in ~70 us where OpenSSL's generic code for this curve
        # takes ~860 us here, and every admin call's token and every repo commit is checked
        # against a k256 key as a rule.
        return coincurve.PublicKey(self._compressed_point())

    def _compressed_point(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        )

    def multibase(self) -> str:
        return "z" + b58encode(self.curve.prefix + self._compressed_point())

    def legacy_multibase(self) -> str:
        """The legacy document form: base58btc of the uncompressed point, no prefix."""
        point = self.key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return "z" + b58encode(point)

    def did_key(self) -> str:
        return "did:key:" + self.multibase()


def parse_multibase_key(multibase: str) -> PublicKey:
    if not multibase.startswith("z"):
        raise KeyError_("only base58btc multibase keys are supported")
    raw = b58decode(multibase[1:])
    for curve in CURVES:
        if raw.startswith(curve.prefix):
            try:
                key = ec.EllipticCurvePublicKey.from_encoded_point(
                    curve.curve, raw[len(curve.prefix) :]
                )
            except ValueError as exc:
                raise KeyError_(f"invalid {curve.jwt_alg} public key") from exc
            return PublicKey(curve, key)
    raise KeyError_("unsupported key type (multicodec prefix)")


# The legacy verification-method types name the curve themselves and carry the bare point
# (uncompressed, as the reference PLC server serves it, or compressed) with no multicodec prefix.
_LEGACY_METHOD_TYPES = {
    "EcdsaSecp256k1VerificationKey2019": K256,
    "EcdsaSecp256r1VerificationKey2019": P256,
}


def parse_verification_method(method_type: str | None, multibase: str) -> PublicKey:
    """The key of a DID document's verification method, in either form the AT Protocol DID
    spec allows: `Multikey` (multicodec-prefixed compressed point) or a legacy type."""
    if method_type == "Multikey":
        return parse_multibase_key(multibase)
    curve = _LEGACY_METHOD_TYPES.get(method_type or "")
    if curve is None:
        raise KeyError_(f"unsupported verification method type {method_type!r}")
    if not multibase.startswith("z"):
        raise KeyError_("only base58btc multibase keys are supported")
    raw = b58decode(multibase[1:])
    if len(raw) not in (33, 65):
        raise KeyError_(f"invalid {curve.jwt_alg} public key: {len(raw)} bytes")
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(curve.curve, raw)
    except ValueError as exc:
        raise KeyError_(f"invalid {curve.jwt_alg} public key") from exc
    return PublicKey(curve, key)


@functools.lru_cache(maxsize=1024)
def parse_did_key(did: str) -> PublicKey:
    """Cached: a did:key names its key, so the same string is always the same key (parsing
    decompresses a curve point, a tenth of a millisecond on every admin request)."""
    if not did.startswith("did:key:"):
        raise KeyError_("not a did:key")
    return parse_multibase_key(did[len("did:key:") :])


@dataclass(frozen=True)
class PrivateKey:
    curve: Curve
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, curve: Curve = K256) -> PrivateKey:
        return cls(curve, ec.generate_private_key(curve.curve))

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.curve, self.key.public_key())

    def sign(self, message: bytes) -> bytes:
        r, s = decode_dss_signature(self.key.sign(message, ec.ECDSA(hashes.SHA256())))
        if s > self.curve.order // 2:
            s = self.curve.order - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def to_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, pem: bytes) -> PrivateKey:
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        for curve in CURVES:
            if key.curve.name == curve.curve.name:
                return cls(curve, key)
        raise KeyError_(f"unsupported curve {key.curve.name}")


def load_or_create(path: Path) -> PrivateKey:
    if path.exists():
        return PrivateKey.from_pem(path.read_bytes())
    key = PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Created readable by the owner only from its first byte (no window at the umask's mode).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(key.to_pem())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return key


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def mint_service_jwt(
    key: PrivateKey, *, iss: str, aud: str, lxm: str | None, ttl_s: int = 60, **extra
) -> str:
    """A service-auth token like com.atproto.server.getServiceAuth mints."""
    header = {"typ": "JWT", "alg": key.curve.jwt_alg}
    now = int(time.time())
    payload = {"iat": now, "iss": iss, "aud": aud, "exp": now + ttl_s, **extra}
    if lxm is not None:
        payload["lxm"] = lxm
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    return signing_input + "." + b64url(key.sign(signing_input.encode()))
