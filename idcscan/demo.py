"""`idcscan demo`: the whole service on embedded defaults, end to end, in one command.

It spans every part (it assembles slides with the worker's code and registers the model), so it
lives beside `cli.py` rather than inside one part.

In a fresh data folder (SQLite database, SQL broker, local storage; no servers): register the
model, create a client, start `idcscan api` (gunicorn) and one `idcscan worker`, submit the
bundled real slides over HTTP (the two sample patients reassembled into pyramidal TIFFs with
their labels, and the Aperio slide), show progress while polling, print each slide's summary and
confusion matrix, write the heatmaps and GeoJSON to `--out`, and stop everything.

The HTTP client is the standard library's, streaming each upload from disk.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from idcscan.core.settings import Settings, get_settings
from idcscan.processes import free_port, idcscan_process

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
PATIENTS = ("8916", "9125")
APERIO = SAMPLES / "wsi" / "CMU-1-Small-Region.svs"
CHUNK = 1 << 20
console = Console()


@dataclass
class DemoSlide:
    name: str
    slide: Path
    labels: Path | None = None
    job: dict[str, Any] = field(default_factory=dict)


class Client:
    """Just enough HTTP for the demo: JSON in and out, streamed multipart uploads."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            connection.request(
                method, path, body, {"Authorization": f"Bearer {self.key}", **(headers or {})}
            )
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
        return json.loads(body)

    def upload(self, slide: Path, labels: Path | None) -> dict[str, Any]:
        boundary = secrets.token_hex(16)
        parts = [("slide", slide)] + ([("labels", labels)] if labels else [])
        heads = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            for name, path in parts
        ]
        tail = f"--{boundary}--\r\n".encode()
        length = sum(
            len(h) + p.stat().st_size + 2 for h, (_, p) in zip(heads, parts, strict=True)
        ) + len(tail)

        def body() -> Iterator[bytes]:
            for head, (_, path) in zip(heads, parts, strict=True):
                yield head
                with path.open("rb") as handle:
                    while block := handle.read(CHUNK):
                        yield block
                yield b"\r\n"
            yield tail

        status, answer = self.request(
            "POST",
            "/v1/jobs",
            body(),
            {
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(length),
            },
        )
        if status != 202:
            raise RuntimeError(f"submitting {slide.name}: {status} {answer[:300]!r}")
        return dict(json.loads(answer))


def _wait_ready(client: Client, processes: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            break
        try:
            if client.request("GET", "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(
        "the service did not start:\n" + "\n".join(log.read_text()[-2000:] for log in logs)
    )


def _prepare(settings: Settings, model: Path, work: Path) -> tuple[str, list[DemoSlide]]:
    from idcscan.api.auth import add_client
    from idcscan.core.assemble import assemble
    from idcscan.core.db import make_engine, make_sessionmaker, transaction
    from idcscan.core.registry import register_model

    registered = register_model(model, activate=True, database=settings.database)
    console.print(
        f"model {registered['version']} ({registered['architecture']}) registered and active"
    )
    engine = make_engine(settings.database)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            _client, key = add_client(session, "demo-hospital", admin=False)
    finally:
        engine.dispose()
    slides = []
    for patient in PATIENTS:
        done = assemble(SAMPLES / "idc" / patient, work / f"patient-{patient}.tiff")
        slides.append(
            DemoSlide(f"patient {patient} (assembled, labelled)", done.tiff, done.geojson)
        )
    slides.append(DemoSlide("CMU-1-Small-Region (Aperio SVS)", APERIO))
    return key, slides


def _poll(client: Client, slides: list[DemoSlide]) -> None:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        tasks = {
            s.job["id"]: progress.add_task(s.name, total=None, status="queued") for s in slides
        }
        pending = {s.job["id"]: s for s in slides}
        while pending:
            for job_id in list(pending):
                job = client.json(f"/v1/jobs/{job_id}")
                done, total = job["progress"]["tiles_done"], job["progress"]["tiles_total"]
                progress.update(tasks[job_id], completed=done, total=total, status=job["status"])
                if job["status"] not in ("queued", "running"):
                    pending.pop(job_id).job = job
            time.sleep(0.3)


def _report(client: Client, slides: list[DemoSlide], out: Path) -> bool:
    ok = True
    for slide in slides:
        job = slide.job
        if job["status"] != "succeeded":
            ok = False
            console.print(f"[red]{slide.name}: {job['status']}[/red] {job.get('error')}")
            continue
        result = client.json(f"/v1/jobs/{job['id']}/result")
        folder = out / slide.slide.stem
        folder.mkdir(parents=True, exist_ok=True)
        for route, name in (("heatmap.png", "heatmap.png"), ("annotations.geojson", "idc.geojson")):
            status, body = client.request("GET", f"/v1/jobs/{job['id']}/{route}")
            if status == 200:
                (folder / name).write_bytes(body)
        (folder / "result.json").write_text(json.dumps(result, indent=2))
        table = Table(
            title=f"{slide.name}: {result['slide_call']}", show_header=False, title_justify="left"
        )
        table.add_row(
            "IDC tiles / tissue tiles", f"{result['idc_tiles']} / {result['tissue_tiles']}"
        )
        table.add_row(
            "IDC area", f"{result['idc_area_mm2']:.2f} mm² ({result['idc_fraction']:.1%} of tissue)"
        )
        table.add_row(
            "max / mean probability",
            f"{result['max_probability'] or 0:.3f} / {result['mean_probability'] or 0:.3f}",
        )
        table.add_row(
            "scale",
            f"level {result['level']} at {result['level_mpp']:.3g} µm/px → {result['effective_mpp']:.3g} µm/px",
        )
        table.add_row(
            "model",
            f"{result['model_version']} {result['model_variant']} "
            f"(threshold {result['threshold']:.2f})",
        )
        if result["in_distribution"] is False:
            table.add_row(
                "stain", f"[yellow]unlike the training data[/yellow]: {result['ood_reason']}"
            )
        elif result["stain_distance"] is not None:
            table.add_row(
                "stain", f"like the training data (distance {result['stain_distance']:.2f})"
            )
        confusion = result["confusion"]
        if confusion:
            table.add_row("missed IDC tiles (fn)", str(confusion["missed_idc"]))
            table.add_row(
                "confusion",
                f"tp {confusion['tp']}  fp {confusion['fp']}  tn {confusion['tn']}  fn {confusion['fn']}",
            )
            table.add_row(
                "sensitivity / specificity",
                f"{confusion['recall']:.3f} / {confusion['specificity']:.3f}",
            )
            table.add_row("balanced accuracy", f"{confusion['balanced_accuracy']:.3f}")
        else:
            table.add_row("confusion", "no labels given")
        table.add_row("files", str(folder))
        console.print(table)
    return ok


def run_demo(out: Path, model: Path | None = None, keep: bool = False) -> int:
    from idcscan.core.migrate import upgrade
    from idcscan.worker.commands import default_model

    logging.getLogger("alembic").setLevel(logging.WARNING)  # the migration's chatter
    model = model or default_model()
    if not model.exists():
        raise ValueError(
            f"no model at {model}: train and export one (`idcscan compare`), or point "
            "IDCSCAN_MODEL_PATH (or --model) at an idcscan ONNX file"
        )
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="idcscan-demo-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDCSCAN_")}
    env.update({"IDCSCAN_DATA_DIR": str(work / "data"), "IDCSCAN_LOG_LEVEL": "WARNING"})
    settings = get_settings(
        data_dir=work / "data", database_url=None, broker_url=None, storage_url=None
    )
    console.print(
        f"[bold]idcscan demo[/bold]: embedded service in {work} (SQLite, SQL broker, local storage)"
    )
    try:
        upgrade(settings.database)
        key, slides = _prepare(settings, model, work)
        port = free_port()
        client = Client(port, key)
        logs = [work / "api.log", work / "worker.log"]
        with ExitStack() as stack:
            api = stack.enter_context(
                idcscan_process(["api", "--port", str(port), "--workers", "1"], env, logs[0])
            )
            worker = stack.enter_context(
                idcscan_process(["worker", "--concurrency=1"], env, logs[1])
            )
            _wait_ready(client, [api, worker], logs)
            console.print(
                f"API on http://127.0.0.1:{port} (docs at /docs), one worker; submitting {len(slides)} slides"
            )
            for slide in slides:
                slide.job = client.upload(slide.slide, slide.labels)
            _poll(client, slides)
            out.mkdir(parents=True, exist_ok=True)
            ok = _report(client, slides, out)
            console.print("stopping the API and the worker")
        console.print(
            f"heatmaps and GeoJSON (QuPath) in {out.resolve()}/; done in {time.monotonic() - started:.0f} s"
        )
        return 0 if ok else 1
    finally:
        if keep:
            console.print(f"service files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
