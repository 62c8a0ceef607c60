"""Completion webhooks over HTTP and on the command line: an admin sets a client's allow-list
and gets its secret once; a job names a callback inside it or is refused with nothing stored;
the job shows its delivery; the OpenAPI document says all of it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from idcscan.cli import main
from idcscan.core.db import Client, WebhookDelivery
from tests.conftest import SAMPLE_SVS

from .conftest import KOMBU_NOLOAD, Service, assert_rejected

pytestmark = [pytest.mark.integration, KOMBU_NOLOAD]

HOOKS = "https://ris.example/idcscan/"


def client_id(service: Service, key: str) -> int:
    with service.db() as session:
        found = session.scalar(select(Client.id).where(Client.key_prefix == key.split("_")[1]))
    assert found is not None
    return found


def put(service: Service, path: str, key: str, body: object) -> requests.Response:
    return requests.put(
        service.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def allow(service: Service, key: str, prefixes: list[str]) -> dict[str, object]:
    admin = service.add_client(admin=True)
    response = put(
        service, f"/v1/clients/{client_id(service, key)}/webhooks", admin, {"allow": prefixes}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_an_admin_sets_the_allow_list_and_the_secret_is_shown_once(service: Service) -> None:
    key = service.add_client()
    first = allow(service, key, [HOOKS, HOOKS])
    assert first["allow"] == [HOOKS]  # once each
    assert str(first["secret"]).startswith("whsec_")
    again = allow(service, key, [HOOKS, "http://10.1.2.3:8080/hooks"])
    assert again["secret"] is None  # never shown twice
    admin = service.add_client(admin=True)
    rotated = service.post(f"/v1/clients/{client_id(service, key)}/webhooks/rotate-secret", admin)
    assert rotated.status_code == 200
    assert rotated.json()["secret"] not in (None, first["secret"])
    with service.db() as session:
        client = session.get(Client, client_id(service, key))
        assert client is not None and client.webhook_secret == rotated.json()["secret"]

    # Not an admin: 403; a prefix that is not a plain http(s) URL: 422, nothing changed.
    mine = put(service, f"/v1/clients/{client_id(service, key)}/webhooks", key, {"allow": []})
    assert mine.status_code == 403
    for bad in ("ftp://ris.example/", "https://user@ris.example/", "ris.example"):
        refused = put(
            service, f"/v1/clients/{client_id(service, key)}/webhooks", admin, {"allow": [bad]}
        )
        assert refused.status_code == 422, bad
        assert refused.json()["type"] == "urn:idcscan:problem:invalid-webhook-prefix"
        assert bad not in refused.text
    listed = service.get("/v1/clients", admin).json()["clients"]
    (mine_listed,) = [c for c in listed if c["id"] == client_id(service, key)]
    assert mine_listed["webhook_allow"] == [HOOKS, "http://10.1.2.3:8080/hooks"]


@pytest.mark.parametrize(
    "callback",
    [
        "https://evil.example/idcscan/",
        "https://ris.example/idcscanner",  # the prefix, but not at a boundary
        "https://ris.example.evil.example/idcscan/",
        "https://me@ris.example/idcscan/x",
        "https://ris.example/idcscan/../admin",
        "file:///etc/passwd",
    ],
)
def test_a_callback_outside_the_allow_list_is_refused_and_nothing_stored(
    service: Service, callback: str
) -> None:
    key = service.add_client()
    allow(service, key, [HOOKS])
    response = service.submit(key, SAMPLE_SVS, data={"mpp": "0.5", "callback_url": callback})
    assert_rejected(service, response, 422, "callback-not-allowed")
    assert callback not in response.text


def test_a_client_without_an_allow_list_names_no_callback(service: Service) -> None:
    key = service.add_client()
    response = service.submit(key, SAMPLE_SVS, data={"mpp": "0.5", "callback_url": HOOKS + "x"})
    assert_rejected(service, response, 422, "callback-not-allowed")


def test_the_job_shows_its_webhook_from_waiting_to_pending(service: Service) -> None:
    key = service.add_client()
    allow(service, key, [HOOKS])
    callback = HOOKS + "case-42?ward=3"
    response = service.submit(key, SAMPLE_SVS, data={"mpp": "0.5", "callback_url": callback})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["webhook"] == {
        "url": callback,
        "status": "waiting",
        "attempts": 0,
        "last_status_code": None,
        "last_error": None,
        "next_attempt_at": None,
        "delivered_at": None,
    }
    cancelled = service.post(f"/v1/jobs/{job['id']}/cancel", key).json()
    assert cancelled["webhook"]["status"] == "pending"
    assert cancelled["webhook"]["next_attempt_at"] is not None
    polled = service.get(f"/v1/jobs/{job['id']}", key).json()
    assert polled["webhook"] == cancelled["webhook"]
    (listed,) = service.get("/v1/jobs", key).json()["jobs"]
    assert listed["webhook"] == cancelled["webhook"]
    with service.db() as session:
        row = session.get(WebhookDelivery, uuid.UUID(job["id"]))
        assert row is not None and row.event == "job.cancelled"
    plain = service.submit(key, SAMPLE_SVS, data={"mpp": "0.5"}).json()
    assert plain["webhook"] is None

    # By JSON too, and the callback is part of what an Idempotency-Key stands for.
    shared = Path(str(service.settings.slide_uri_root)) / f"client-{client_id(service, key)}"
    shared.mkdir()
    (shared / "s.svs").write_bytes(SAMPLE_SVS.read_bytes())
    body = {"slide_uri": "s.svs", "mpp": 0.5, "callback_url": callback}
    headers = {"Idempotency-Key": "k1"}
    by_uri = service.post("/v1/jobs", key, json=body, headers=headers)
    assert by_uri.status_code == 202 and by_uri.json()["webhook"]["url"] == callback
    other = service.post("/v1/jobs", key, json={**body, "callback_url": HOOKS}, headers=headers)
    assert other.status_code == 422
    assert other.json()["type"] == "urn:idcscan:problem:idempotency-key-reused"


def test_the_openapi_document_describes_callbacks_and_deliveries(service: Service) -> None:
    schemas = service.get("/openapi.json").json()["components"]["schemas"]
    # spectree names a model `Name.<hash>`, and one nested in it `Outer.<hash>.Name`.
    by_name = {name.split(".")[::2][-1]: schema for name, schema in schemas.items()}
    assert "callback_url" in by_name["JobByUri"]["properties"]
    assert "callback_url" in by_name["SlideUpload"]["properties"]
    assert "webhook" in by_name["JobOut"]["properties"]
    assert set(by_name["WebhookOut"]["properties"]) >= {
        "url",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
    }
    paths = service.get("/openapi.json").json()["paths"]
    assert "put" in paths["/v1/clients/{client_id}/webhooks"]


def test_the_command_line_sets_the_allow_list_and_rotates_the_secret(
    migrated_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("IDCSCAN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IDCSCAN_DATABASE_URL", migrated_url)
    assert main(["clients", "add", "pacs"]) == 0
    assert main(["clients", "webhooks", "pacs", HOOKS]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("whsec_")
    assert main(["clients", "webhooks", "pacs", HOOKS, "https://b.example/"]) == 0
    assert "whsec_" not in capsys.readouterr().out  # shown once
    assert main(["clients", "webhook-secret", "pacs"]) == 0
    rotated = capsys.readouterr().out.strip().splitlines()[-1]
    assert rotated.startswith("whsec_") and rotated != secret
    assert main(["clients", "list"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"{HOOKS} https://b.example/")
    assert main(["clients", "webhooks", "pacs", "gopher://x/"]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line
    from idcscan.core.db import make_engine, make_sessionmaker

    engine = make_engine(migrated_url)
    try:
        with make_sessionmaker(engine)() as session:
            client = session.scalar(select(Client).where(Client.name == "pacs"))
            assert client is not None
            assert client.webhook_prefixes == [HOOKS, "https://b.example/"]
            assert client.webhook_secret == rotated
    finally:
        engine.dispose()
