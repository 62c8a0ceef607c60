"""The viewer and the worklist page: what a pathologist opens in a browser.

- `POST /v1/jobs/{id}/viewer-link` (a key) mints a signed link to one succeeded job
  (`idcscan.api.links`); the worklist route carries one per succeeded job.
- `/view/<token>/` is the viewer: the slide in deep zoom (OpenSeadragon, vendored under
  `static/openseadragon`, see `scripts/vendor-openseadragon.sh`), the job's probability map
  over it, the summary, the confusion matrix and every result to download. Everything it loads
  sits under the same token, which each request checks (signature, expiry, the client not
  revoked and still owning the job) before anything is read.
- `/worklist` is a page with no data in it: the key is typed once per browser session (kept in
  `sessionStorage`, gone with the tab) and its script calls `/v1/worklist` with it.

The pages run only this service's own scripts (CSP `script-src 'self'`), load nothing from
elsewhere and send no Referer, so a token in the path never reaches another site.
"""

from __future__ import annotations

import io
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    request,
    send_from_directory,
    stream_with_context,
)
from PIL import Image
from spectree import Response as Resp
from sqlalchemy import func, select

from idcscan.api import links
from idcscan.api.auth import Caller, caller
from idcscan.api.deepzoom import TILE_FORMAT, DeepZoomSlide, SlideCache
from idcscan.api.jobs import job_out
from idcscan.api.problems import Problem
from idcscan.api.results import (
    RESULT_PROBLEMS,
    result_out,
    stored_file,
    succeeded_result,
    tiles_csv,
    tiles_json,
)
from idcscan.api.schemas import ViewerLinkOut, spec
from idcscan.core.db import Client, Job, JobStatus, Model, SlideResult, TileScore
from idcscan.core.overlay import probability_rgba

links_bp = Blueprint("viewer_links", __name__, url_prefix="/v1")
bp = Blueprint("viewer", __name__)

# Scripts: our own files only. Styles may be inline: OpenSeadragon adds a <style> element of its
# own; a style cannot run code.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SUSPICIOUS_REGIONS = 5
"""Tiles over the threshold the viewer offers to jump to, highest probability first."""
DOWNLOADS = {
    "result.json": "application/json",
    "tiles.csv": "text/csv",
    "tiles.json": "application/json",
    "heatmap.png": "image/png",
    "annotations.geojson": "application/geo+json",
}


@dataclass(frozen=True)
class LinkMinter:
    """Signed viewer links for the current caller, all expiring at the same moment."""

    key: bytes
    client_id: int
    expires: int

    @classmethod
    def for_app(cls) -> LinkMinter:
        settings = current_app.extensions["idcscan.settings"]
        expires = int(time.time()) + settings.viewer_link_ttl_s
        return cls(current_app.extensions["idcscan.link_key"], caller().id, expires)

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expires, UTC)

    def url(self, job_id: uuid.UUID) -> str:
        return f"/view/{links.mint(self.key, job_id, self.client_id, self.expires)}/"


@links_bp.post("/jobs/<uuid:job_id>/viewer-link")
@spec.validate(resp=Resp(HTTP_200=ViewerLinkOut, **RESULT_PROBLEMS), tags=["results"])
def mint_link(job_id: uuid.UUID) -> Any:
    """A link that opens the job's viewer in a browser with no key, for
    `IDCSCAN_VIEWER_LINK_TTL_S` seconds; the job must have succeeded."""
    job, _result = succeeded_result(job_id)
    minter = LinkMinter.for_app()
    return ViewerLinkOut(url=minter.url(job.id), expires_at=minter.expires_at)


# The pages and what they load.


@bp.before_request
def _check_link() -> None:
    """Routes under /view/<token>/ act as the client that minted the link, for that job only:
    one query checks the client (not revoked) and its ownership of the job, and reads what a
    tile needs, so a tile costs no other query."""
    token = (request.view_args or {}).get("token")
    if token is None:
        return
    grant = links.verify(current_app.extensions["idcscan.link_key"], token)
    if grant is None:
        raise _bad_link()
    with current_app.extensions["idcscan.db"]() as session:
        found = session.execute(
            select(Client, Job.status, Job.slide_uri, Job.mpp)
            .join(Job, Job.client_id == Client.id)
            .where(Job.id == grant.job_id, Client.id == grant.client_id)
        ).first()
    if found is None or found[0].revoked:
        raise _bad_link()
    client, status, slide_uri, mpp = found
    g.caller = Caller(id=client.id, name=client.name, role=client.role)
    g.client_id = client.id  # for the access log; the limits counted this request before
    g.job_id = str(grant.job_id)
    g.link_expires = grant.expires_at
    g.linked = LinkedJob(grant.job_id, status, slide_uri, mpp)


@dataclass(frozen=True)
class LinkedJob:
    """The job a link opens, as read when the link was checked."""

    id: uuid.UUID
    status: str
    slide_uri: str
    mpp: float | None


def _bad_link() -> Problem:
    return Problem(
        403,
        "viewer-link-invalid",
        "The viewer link is invalid or has expired; ask the service for a new one.",
    )


@bp.after_request
def _page_headers(response: Response) -> Response:
    """No Referer (the token is in the path), only our own scripts, and caching no longer than
    the link lives: the job's results and slide never change once it has succeeded."""
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    if "link_expires" in g and response.status_code == 200:
        left = max(0, int(g.link_expires - time.time()))
        response.headers["Cache-Control"] = f"private, max-age={left}"
    else:
        response.headers["Cache-Control"] = "no-store"
    return response


def _page(name: str) -> Response:
    return send_from_directory(current_app.static_folder or "", name, max_age=0)


@bp.get("/worklist")
def worklist_page() -> Response:
    """The worklist: a key typed once per browser session, the jobs by suspicion."""
    return _page("worklist.html")


@bp.get("/view/<token>/")
def viewer_page(token: str) -> Response:
    """The viewer of one job."""
    return _page("viewer.html")


def _job_id() -> uuid.UUID:
    return uuid.UUID(g.job_id)


def _deepzoom(job: Job) -> DeepZoomSlide:
    cache: SlideCache = current_app.extensions["idcscan.slides"]
    return cache.get(job.slide_uri, job.mpp)


def _stride0(session: Any, result: SlideResult, slide_mpp: float) -> float:
    """Level-0 pixels between tiles: the model's stride at its scale, as the worker tiled it."""
    spec = session.get_one(Model, result.model_id).tile_spec  # a TileSpec as the registry wrote it
    return float(spec["stride"]) * float(spec["mpp"]) / slide_mpp


@bp.get("/view/<token>/job.json")
def job_view(token: str) -> Any:
    """All the page shows: the job, its summary and confusion, the slide's size, where the
    probability overlay lies, the most suspicious tiles, and the downloads."""
    job, result = succeeded_result(_job_id())
    slide = _deepzoom(job)
    with current_app.extensions["idcscan.db"]() as session:
        stride0 = _stride0(session, result, slide.mpp)
        last_row, last_col = session.execute(
            select(func.max(TileScore.row), func.max(TileScore.col)).where(
                TileScore.job_id == job.id
            )
        ).one()
        top = session.execute(
            select(TileScore.x, TileScore.y, TileScore.probability)
            .where(TileScore.job_id == job.id, TileScore.probability >= result.threshold)
            .order_by(TileScore.probability.desc())
            .limit(SUSPICIOUS_REGIONS)
        ).all()
    rows, cols = (0, 0) if last_row is None else (last_row + 1, last_col + 1)
    width, height = slide.dimensions
    return {
        "job": job_out(job).model_dump(mode="json"),
        "result": result_out(job, result).model_dump(mode="json"),
        "slide": {"width": width, "height": height, "mpp": slide.mpp, "dzi": "slide.dzi"},
        "overlay": {
            "url": "overlay.png",
            "x": 0,
            "y": 0,
            "width": cols * stride0,
            "height": rows * stride0,
        },
        "suspicious": [{"x": x, "y": y, "size": stride0, "probability": p} for x, y, p in top],
        "downloads": [{"name": name, "url": f"download/{name}"} for name in DOWNLOADS],
    }


@bp.get("/view/<token>/slide.dzi")
def dzi(token: str) -> Response:
    job, _result = succeeded_result(_job_id())
    return Response(_deepzoom(job).dzi(), mimetype="application/xml")


@bp.get(f"/view/<token>/slide_files/<int:level>/<int:col>_<int:row>.{TILE_FORMAT}")
def tile(token: str, level: int, col: int, row: int) -> Response:
    """One deep zoom tile of the stored slide (the slide the worker scored)."""
    job: LinkedJob = g.linked
    if job.status != JobStatus.SUCCEEDED.value:
        raise Problem(409, "job-not-succeeded", f"The job is {job.status}.", job_status=job.status)
    cache: SlideCache = current_app.extensions["idcscan.slides"]
    data = cache.tile(job.slide_uri, job.mpp, level, col, row)
    if data is None:
        raise Problem(404, "not-found", "No such tile.")
    return Response(data, mimetype="image/jpeg")


@bp.get("/view/<token>/overlay.png")
def overlay(token: str) -> Response:
    """The probability of each tile as one pixel (transparent where nothing was scored), missed
    IDC in cyan; `?over_threshold=1` shows only tiles at or over the threshold (and misses)."""
    job, result = succeeded_result(_job_id())
    with current_app.extensions["idcscan.db"]() as session:
        scores = session.execute(
            select(TileScore.row, TileScore.col, TileScore.probability, TileScore.label).where(
                TileScore.job_id == job.id
            )
        ).all()
    if scores:
        table = np.array(
            [(r, c, p, -1 if label is None else label) for r, c, p, label in scores],
            dtype=np.float64,
        )
        rows, cols = int(table[:, 0].max()) + 1, int(table[:, 1].max()) + 1
    else:
        table, rows, cols = np.zeros((0, 4)), 1, 1
    grid = np.full((rows, cols), np.nan, dtype=np.float32)
    labels = np.full((rows, cols), -1, dtype=np.int8)
    r, c = table[:, 0].astype(int), table[:, 1].astype(int)
    grid[r, c] = table[:, 2]
    labels[r, c] = table[:, 3]
    labelled = job.labels_uri is not None or bool((labels >= 0).any())
    rgba = probability_rgba(
        grid,
        labels if labelled else None,
        result.threshold,
        over_threshold_only=request.args.get("over_threshold") == "1",
    )
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG")
    return Response(out.getvalue(), mimetype="image/png")


@bp.get("/view/<token>/download/<name>")
def download(token: str, name: str) -> Any:
    """Every result format, as the `/v1` routes serve it."""
    if name not in DOWNLOADS:
        raise Problem(404, "not-found", "No such download.")
    job, result = succeeded_result(_job_id())
    if name == "result.json":
        body: Any = result_out(job, result).model_dump_json()
    elif name == "tiles.json":
        body = tiles_json(job.id)
    elif name == "tiles.csv":
        body = stored_file(result.tiles_csv_uri) if result.tiles_csv_uri else tiles_csv(job.id)
    else:
        body = stored_file(result.heatmap_uri if name == "heatmap.png" else result.geojson_uri)
    if not isinstance(body, str):
        body = stream_with_context(body)
    response = Response(body, mimetype=DOWNLOADS[name])
    response.headers["Content-Disposition"] = f'attachment; filename="{job.id}-{name}"'
    return response


def init_app(app: Flask) -> None:
    """The signing key and the slide cache, one of each per process."""
    app.extensions["idcscan.link_key"] = links.signing_key(app.extensions["idcscan.settings"])
    app.extensions["idcscan.slides"] = SlideCache()
