"""A normal `pip install` of the built wheel (not editable, no source tree on the path) gives a
working service: `chive-backfill up` serves, `token` mints, and a backfill runs to the end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from testkit.broker import free_port
from testkit.servers import wait_until

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_install_serves_a_backfill(tmp_path):
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    # Built from a copy of the project's files, so the build leaves nothing in the checkout.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".tools", "node_modules", "data", "build", "*.egg-info", "__pycache__"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(dist),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = dist.glob("chive_backfill-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [venv / "bin/pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=600,
    )
    # Run from a directory holding nothing of ours: only site-packages can serve the imports.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {
        "CHIVE_DATA_DIR": str(work / "data"),
        "CHIVE_PORT": str(free_port()),
    }
    where = subprocess.run(
        [venv / "bin/python", "-c", "import services, schemas; print(services.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(venv)), where
    log = open(work / "up.log", "wb")
    proc = subprocess.Popen(
        [venv / "bin/chive-backfill", "up"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        base = f"http://127.0.0.1:{env['CHIVE_PORT']}"

        def up() -> bool:
            assert proc.poll() is None, (work / "up.log").read_text()
            try:
                return httpx.get(f"{base}/xrpc/_health").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=60, what="the installed service to answer")
        # The admin page's files and the OpenAPI document ship in the wheel.
        page = httpx.get(f"{base}/admin/backfill")
        assert page.status_code == 200 and "Chive backfill" in page.text
        script = httpx.get(f"{base}/admin/backfill/static/admin.js")
        assert script.status_code == 200 and "EventSource" in script.text
        assert (
            "/xrpc/pub.chive.admin.triggerBackfill"
            in httpx.get(f"{base}/openapi.json").json()["paths"]
        )

        def token(lxm: str) -> str:
            return subprocess.run(
                [venv / "bin/chive-backfill", "token", "--lxm", lxm],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()

        trigger = "pub.chive.admin.triggerBackfill"
        response = httpx.post(
            f"{base}/xrpc/{trigger}",
            json={"type": "fullReindex"},
            headers={"authorization": f"Bearer {token(trigger)}"},
        )
        assert response.status_code == 200, response.text
        op_id = response.json()["operation"]["id"]
        status = "pub.chive.admin.getBackfillStatus"

        def finished():
            got = httpx.get(
                f"{base}/xrpc/{status}",
                params={"id": op_id},
                headers={"authorization": f"Bearer {token(status)}"},
            ).json()["operation"]
            return got if got["status"] != "running" else None

        op = wait_until(finished, timeout=60, what="the backfill to finish")
        assert op["status"] == "completed", json.dumps(op)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log.close()
