"""docker compose cannot run here (no Docker engine), so the compose files are checked statically:
services, health checks, volumes, GPU reservation, that every command is a real `idcscan`
subcommand and every IDCSCAN_ variable a real setting, that only the proxy publishes a port,
and that MinIO needs its credentials and listens on this host only. (tests/deploy/test_proxy.py
runs the proxy's configuration in a real nginx.)"""

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


@pytest.fixture(scope="module")
def s3_addon() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deploy" / "compose.s3.yml").read_text())


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
        "proxy",
    } <= set(services)
    assert services["trainer"]["profiles"] == ["train"]
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
    text = "".join(
        (ROOT / name).read_text()
        for name in ("docker-compose.yml", ".env.example", "deploy/compose.s3.yml")
    )
    used = set(re.findall(r"\b(IDCSCAN_[A-Z0-9_]+)\b", text))
    # Variables only compose itself reads (image tag, published port, dataset and TLS folders).
    compose_only = {"IDCSCAN_TAG", "IDCSCAN_API_PORT", "IDCSCAN_DATASET_DIR", "IDCSCAN_TLS_DIR"}
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
    assert services["proxy"]["depends_on"]["api"]["condition"] == "service_healthy"
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


def test_only_the_proxy_publishes_a_port(compose: dict[str, Any]) -> None:
    published = {name for name, service in compose["services"].items() if "ports" in service}
    assert published == {"proxy"}
    assert compose["services"]["proxy"]["ports"] == ["${IDCSCAN_API_PORT:-8443}:8443"]
    assert compose["services"]["api"]["expose"] == ["8000"]


def test_the_proxy_is_nginx_with_the_repositorys_configuration(compose: dict[str, Any]) -> None:
    proxy = compose["services"]["proxy"]
    assert proxy["image"] == "nginx:1.27-alpine"
    mounts = {}
    for volume in proxy["volumes"]:
        source, target, mode = volume.rsplit(":", 2)
        assert mode == "ro", volume
        mounts[target] = source
    assert mounts["/etc/nginx/templates"] == "./deploy/nginx/templates"
    envsh = mounts["/docker-entrypoint.d/15-idcscan-limits.envsh"]
    assert (ROOT / envsh).stat().st_mode & 0o111, "the image sources only executable .envsh files"
    assert mounts["/etc/nginx/certs"].startswith("${IDCSCAN_TLS_DIR:?")
    # One setting governs the API's upload limit and the proxy's body limit.
    api = compose["x-idcscan-environment"]["IDCSCAN_MAX_UPLOAD_BYTES"]
    assert proxy["environment"]["IDCSCAN_MAX_UPLOAD_BYTES"] == api
    assert api == f"${{IDCSCAN_MAX_UPLOAD_BYTES:-{Settings().max_upload_bytes}}}"
    template = (ROOT / "deploy/nginx/templates/default.conf.template").read_text()
    for directive in (
        "listen 8443 ssl;",
        "ssl_certificate /etc/nginx/certs/tls.crt;",
        "client_header_timeout 10s;",
        "client_body_timeout 60s;",
        "send_timeout 60s;",
        "client_max_body_size ${NGINX_MAX_BODY_BYTES};",
        "proxy_request_buffering off;",
        "server ${NGINX_API_UPSTREAM};",
    ):
        assert directive in template, directive


@pytest.mark.parametrize("limit", [None, 1024**2])
def test_the_proxy_body_limit_follows_the_upload_limit(tmp_path, limit: int | None) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    from idcscan.api.upload import MAX_LABELS_BYTES

    env = {} if limit is None else {"IDCSCAN_MAX_UPLOAD_BYTES": str(limit)}
    script = ROOT / "deploy/nginx/15-idcscan-limits.envsh"
    shown = subprocess.run(
        ["sh", "-c", f'. "{script}" && echo "$NGINX_MAX_BODY_BYTES"'],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    upload = limit or Settings().max_upload_bytes
    assert int(shown) == upload + MAX_LABELS_BYTES + 1024**2


def test_minio_needs_its_credentials_and_listens_on_this_host_only(
    s3_addon: dict[str, Any],
) -> None:
    minio = s3_addon["services"]["minio"]
    assert minio["profiles"] == ["s3"]
    assert minio["ports"] and all(port.startswith("127.0.0.1:") for port in minio["ports"])
    for name in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        value = minio["environment"][name]
        assert re.fullmatch(r"\$\{AWS_[A-Z_]+:\?[^}]+\}", value), (name, value)
    assert "objects" in s3_addon["volumes"]


def test_no_secret_has_a_default(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text() + (ROOT / "deploy/compose.s3.yml").read_text()
    for secret in (
        "POSTGRES_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "IDCSCAN_SECRET_KEY",
    ):
        for use in re.findall(r"\$\{" + secret + r"[^}]*\}", text):
            assert use in (f"${{{secret}:-}}",) or ":?" in use, use
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert example["POSTGRES_PASSWORD"] == "" and example["IDCSCAN_TLS_DIR"] == ""
    assert example["IDCSCAN_SECRET_KEY"] == ""
