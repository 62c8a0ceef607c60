"""Keys, tenants and admin rights, through a real HTTP server."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from idcscan.core.db import AuditEvent, Client, Job, Model
from tests.conftest import SAMPLE_SVS

from .conftest import KOMBU_NOLOAD, Service, register_model

pytestmark = [pytest.mark.integration, KOMBU_NOLOAD]

JOB_ROUTES = [
    ("get", "/v1/jobs/{id}"),
    ("post", "/v1/jobs/{id}/cancel"),
    ("get", "/v1/jobs/{id}/result"),
    ("get", "/v1/jobs/{id}/tiles"),
    ("get", "/v1/jobs/{id}/heatmap.png"),
    ("get", "/v1/jobs/{id}/annotations.geojson"),
]


def _unauthorized(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["type"] == "urn:idcscan:problem:unauthorized"


def test_no_key_a_bad_key_and_a_revoked_key_are_401(service: Service) -> None:
    client_id, key = service.new_client("hospital-a")
    admin = service.add_client("ops", admin=True)
    assert service.get("/v1/jobs", key).status_code == 200

    _unauthorized(service.get("/v1/jobs"))
    _unauthorized(service.get("/v1/jobs", headers={"Authorization": "Basic abc"}))
    _unauthorized(service.get("/v1/jobs", key + "x"))
    _unauthorized(service.get("/v1/jobs", "idc_00000000_" + "a" * 43))
    _unauthorized(service.get("/v1/jobs", "nonsense"))

    revoked = service.post(f"/v1/clients/{client_id}/revoke", admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    _unauthorized(service.get("/v1/jobs", key))
    _unauthorized(service.submit(key, SAMPLE_SVS))
    assert service.job_count() == 0


def test_keys_are_stored_hashed_and_rotation_retires_the_old_key(service: Service) -> None:
    key = service.add_client("hospital-b")
    admin = service.add_client("ops", admin=True)
    with service.db() as session:
        client = session.scalar(select(Client).where(Client.name == "hospital-b"))
        assert client is not None
        assert key not in (client.key_hash, client.key_prefix)
        assert key.split("_")[1] == client.key_prefix
    rotated = service.post(f"/v1/clients/{client.id}/rotate", admin)
    assert rotated.status_code == 200
    new_key = rotated.json()["key"]
    _unauthorized(service.get("/v1/jobs", key))
    assert service.get("/v1/jobs", new_key).status_code == 200


def test_another_tenants_job_is_404_on_every_route(service: Service) -> None:
    owner = service.add_client()
    stranger = service.add_client()
    job_id = service.submit(owner, SAMPLE_SVS).json()["id"]
    for method, route in JOB_ROUTES:
        response = getattr(service, method)(route.format(id=job_id), stranger)
        assert response.status_code == 404, (route, response.text)
        assert response.json()["type"] == "urn:idcscan:problem:not-found"
    assert service.get("/v1/jobs", stranger).json()["jobs"] == []
    # The owner's job is untouched by the stranger's cancel.
    assert service.get(f"/v1/jobs/{job_id}", owner).json()["status"] == "queued"


def test_admin_routes_are_403_for_ordinary_keys(service: Service) -> None:
    key = service.add_client("hospital-c")
    other_model = register_model(service.db, "test-2", active=False)
    forbidden = [
        service.post(f"/v1/models/{other_model}/activate", key),
        service.get("/v1/clients", key),
        service.post("/v1/clients", key, json={"name": "mallory"}),
        service.post("/v1/clients/1/revoke", key),
        service.post("/v1/clients/1/rotate", key),
    ]
    for response in forbidden:
        assert response.status_code == 403, response.text
        assert response.json()["type"] == "urn:idcscan:problem:admin-required"
    with service.db() as session:
        assert session.scalar(select(Client).where(Client.name == "mallory")) is None
    # Reading the registry is for every client.
    assert service.get("/v1/models", key).status_code == 200


def test_the_admin_check_comes_before_the_body_is_judged(service: Service) -> None:
    """403 first: a key that may not call a route learns nothing about what the route accepts."""
    key = service.add_client("hospital-e")
    for response in (
        service.post("/v1/clients", key, json={"name": ""}),
        service.post("/v1/clients", key, json={"name": "x", "extra": 1}),
        service.post("/v1/clients", key, data=b"name=x", headers={"Content-Type": "text/plain"}),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["type"] == "urn:idcscan:problem:admin-required"


def test_admin_activates_a_model_and_manages_clients(service: Service) -> None:
    admin = service.add_client("ops", admin=True)
    other_model = register_model(service.db, "test-2", active=False)
    activated = service.post(f"/v1/models/{other_model}/activate", admin)
    assert activated.status_code == 200
    assert activated.json()["active"] is True
    models = {m["id"]: m["active"] for m in service.get("/v1/models", admin).json()["models"]}
    assert models == {service.model_id: False, other_model: True}
    assert service.get(f"/v1/models/{other_model}", admin).json()["confusion"]["fn"] == 1
    with service.db() as session:  # as `models register` records the variants beside the file
        session.get_one(Model, other_model).variants = {
            "int8": "m.int8.onnx",
            "fp16": "m.fp16.onnx",
        }
        session.commit()
    variants = {m["id"]: m["variants"] for m in service.get("/v1/models", admin).json()["models"]}
    assert variants == {service.model_id: [], other_model: ["fp16", "int8"]}
    assert service.get("/v1/models/999", admin).status_code == 404

    created = service.post("/v1/clients", admin, json={"name": "hospital-d"})
    assert created.status_code == 201
    new_key = created.json()["key"]
    job = service.submit(new_key, SAMPLE_SVS).json()
    assert job["model_id"] == other_model  # new jobs use the active model
    assert service.post("/v1/clients", admin, json={"name": "hospital-d"}).status_code == 409

    with service.db() as session:
        events = session.execute(
            select(AuditEvent.action, AuditEvent.target_id).order_by(AuditEvent.id)
        ).all()
        job_owner = session.scalar(select(Job.client_id))
    actions = [action for action, _ in events]
    assert actions[-3:] == ["model.activate", "client.create", "job.submit"]
    assert ("model.activate", str(other_model)) in events
    assert job_owner == created.json()["id"]
