"""docker compose cannot run here (no Docker engine), so the compose file is checked statically:
services, health checks, volumes, GPU reservation, and that every command is a real `idcscan`
subcommand and every IDCSCAN_ variable a real setting."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from idcscan.cli import build_parser
from idcscan.core.settings import Settings
from tests.conftest import ROOT

SETTINGS = {f"IDCSCAN_{name.upper()}" for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _idcscan_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("command", [None])[0] == "idcscan"
    }


def test_every_part_is_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {
        "redis",
        "postgres",
        "migrate",
        "api",
        "worker",
        "worker-cpu",
        "scheduler",
        "trainer",
        "minio",
    } <= set(services)
    assert services["trainer"]["profiles"] == ["train"]
    assert services["minio"]["profiles"] == ["s3"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]


def test_every_command_is_a_real_subcommand(compose: dict[str, Any]) -> None:
    parser = build_parser()
    services = _idcscan_services(compose)
    assert len(services) >= 6
    for name, service in services.items():
        try:
            parser.parse_args(service["command"][1:])
        except SystemExit:
            pytest.fail(
                f"service {name!r} runs {service['command']}, which idcscan does not accept"
            )


def test_every_idcscan_variable_is_a_real_setting() -> None:
    text = (ROOT / "docker-compose.yml").read_text() + (ROOT / ".env.example").read_text()
    used = set(re.findall(r"\b(IDCSCAN_[A-Z0-9_]+)\b", text))
    # Variables only compose itself reads (image tag, published port, dataset folder).
    compose_only = {"IDCSCAN_TAG", "IDCSCAN_API_PORT", "IDCSCAN_DATASET_DIR"}
    assert used - compose_only <= SETTINGS, (
        f"not settings: {sorted(used - compose_only - SETTINGS)}"
    )
    assert {"IDCSCAN_DATABASE_URL", "IDCSCAN_BROKER_URL", "IDCSCAN_STORAGE_URL"} <= used


def test_services_share_settings_and_start_after_migration(compose: dict[str, Any]) -> None:
    for name in ("api", "worker", "worker-cpu", "scheduler"):
        service = compose["services"][name]
        assert service["environment"]["IDCSCAN_BROKER_URL"] == "redis://redis:6379/0", name
        depends = service["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
    assert compose["services"]["migrate"]["command"] == ["idcscan", "db", "upgrade"]


def test_health_checks_and_durable_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("redis", "postgres", "api"):
        assert services[name]["healthcheck"]["test"], name
    assert "--appendonly" in services["redis"]["command"]
    assert (
        services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1]
        == "yes"
    )
    assert "noeviction" in services["redis"]["command"]
    assert any(v.startswith("postgres:") for v in services["postgres"]["volumes"])
    assert {"redis", "postgres", "storage"} <= set(compose["volumes"])


def test_gpu_worker_reserves_a_gpu_and_can_scale(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # --scale needs no fixed name or host port
    assert "container_name" not in worker and "ports" not in worker


def _seconds(text: str) -> int:
    value, unit = int(text[:-1]), text[-1]
    return value * {"s": 1, "m": 60, "h": 3600}[unit]


def test_stop_grace_period_outlasts_a_batch(compose: dict[str, Any]) -> None:
    for name in ("worker", "worker-cpu"):
        assert _seconds(compose["services"][name]["stop_grace_period"]) >= 60, name


def test_dockerfile_stages_run_as_non_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)", dockerfile, flags=re.M)
    assert {"api", "worker-cpu", "worker-gpu", "trainer"} <= set(stages)
    for stage in ("api", "worker-cpu", "worker-gpu", "trainer"):
        body = dockerfile.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        assert "USER idcscan" in body, f"stage {stage} runs as root"


def test_dockerfile_data_folder_is_private() -> None:
    # A named volume takes the mode of the image's folder: slides and databases stay the
    # service user's alone (the processes' umask does the same for what they create inside).
    dockerfile = (ROOT / "Dockerfile").read_text()
    creations = re.findall(r"install -d [^\n]*/var/lib/idcscan", dockerfile)
    assert len(creations) == 2 and all("-m 0700" in line for line in creations), creations
