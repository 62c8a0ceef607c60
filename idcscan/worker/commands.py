"""Subcommands of the worker: `score`, `worker`, `scheduler`. Heavy imports stay inside."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    score = subparsers.add_parser("score", help="score one slide locally, no queue")
    score.add_argument("slide", help="slide file, patch folder/zip, or fsspec URI")
    score.add_argument(
        "--model", type=Path, help="ONNX model (default: IDCSCAN_MODEL_PATH or the reference model)"
    )
    score.add_argument("--mpp", type=float, help="pixel size in um/px, when the slide records none")
    score.add_argument("--labels", help="ground truth: GeoJSON annotations or a tile CSV")
    score.add_argument("--out", type=Path, help="output folder (default: <slide name>.idcscan/)")
    score.add_argument("--json", action="store_true", help="print the summary as JSON")
    score.set_defaults(func=_score)

    worker = subparsers.add_parser("worker", help="run a scoring worker (Celery)")
    worker.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="worker processes (default: 1 per GPU, else 1 per 8 CPUs, at least 1)",
    )
    worker.add_argument(
        "--beat",
        action="store_true",
        help="also run the reconciler (`idcscan scheduler`) beside it; always on in the "
        "embedded mode (the SQL broker)",
    )
    worker.add_argument("--pool", default="prefork", choices=["prefork", "solo"])
    worker.add_argument(
        "--heartbeat",
        type=Path,
        default=None,
        help="file the worker touches every 10 s while its loop runs, for `idcscan health "
        "worker` (default: idcscan-worker-UID.heartbeat in the temporary folder)",
    )
    worker.set_defaults(func=_worker)

    scheduler = subparsers.add_parser(
        "scheduler",
        help="run the reconciler: re-publish jobs never started or whose worker was lost",
    )
    scheduler.add_argument(
        "--heartbeat",
        type=Path,
        default=None,
        help="file the reconciler touches each round, for `idcscan health scheduler` "
        "(default: idcscan-scheduler-UID.heartbeat in the temporary folder)",
    )
    scheduler.set_defaults(func=_scheduler)


def default_model() -> Path:
    from idcscan.core.onnxmodel import reference_model
    from idcscan.core.settings import get_settings

    return get_settings().model_path or reference_model()


def _score(args: argparse.Namespace) -> int:
    from idcscan.core.labels import parse_labels
    from idcscan.core.onnxmodel import OnnxModel
    from idcscan.core.settings import get_settings
    from idcscan.core.slides import open_slide
    from idcscan.core.storage import open_uri
    from idcscan.worker import outputs
    from idcscan.worker.evaluation import evaluate, ground_truth
    from idcscan.worker.pipeline import score_slide

    settings = get_settings()
    model = OnnxModel(
        args.model or default_model(), settings.execution_provider, settings.inference_threads
    )
    truth = None
    if args.labels:
        with open_uri(args.labels) as handle:
            truth = parse_labels(handle)
    started = time.perf_counter()
    # The user's own files: formats whose file names others (VMS, MIRAX) are read here only.
    with open_slide(
        args.slide, mpp=args.mpp, max_pixels=settings.max_slide_pixels, allow_multi_file=True
    ) as slide:
        score = score_slide(
            slide, model, batch_size=settings.batch_size, readers=settings.reader_threads
        )
        truth = ground_truth(slide, truth)
        if truth is not None:
            score = evaluate(score, truth)
    files = outputs.render(score)
    elapsed = time.perf_counter() - started
    out = args.out or Path(Path(str(args.slide).rstrip("/")).name + ".idcscan")
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    summary = outputs.summary(score)
    summary["tiles_per_s"] = len(score.rows) / elapsed if elapsed > 0 else None
    summary["seconds"] = {**score.seconds, "with_outputs": elapsed}
    summary["outputs"] = str(out)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{summary['slide_call']}: {summary['idc_tiles']} of {summary['tissue_tiles']} tissue tiles IDC "
            f"({summary['idc_area_mm2']:.2f} mm2, {summary['idc_fraction']:.1%}); "
            f"level {summary['level']} at {summary['level_mpp']:.3g} um/px -> {summary['effective_mpp']:.3g}; "
            f"{elapsed:.2f} s; outputs in {out}/"
        )
        if not summary["in_distribution"]:
            print(f"out of distribution: {summary['ood_reason']}")
        elif summary["stain_distance"] is not None:
            print(
                f"in distribution: stain distance {summary['stain_distance']:.2f}, "
                f"{summary['far_tile_fraction']:.0%} of tiles far from the training stain"
            )
        if summary["confusion"]:
            c = summary["confusion"]
            print(
                f"ground truth: missed IDC {c['missed_idc']}, tp {c['tp']} fp {c['fp']} tn {c['tn']} fn {c['fn']}"
            )
    return 0


def _default_concurrency() -> int:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return 1
    return max(1, (os.cpu_count() or 1) // 8)


def embedded(settings: Any) -> bool:
    """The embedded mode: Celery's SQL transport, no broker server and no scheduler service."""
    return bool(settings.broker.startswith("sqla+"))


def _worker(args: argparse.Namespace) -> int:
    from idcscan.broker import QUEUE, create_app
    from idcscan.core.heartbeat import default_path
    from idcscan.core.logs import configure as configure_logs
    from idcscan.core.settings import get_settings
    from idcscan.worker import tasks  # noqa: F401 - registers the tasks
    from idcscan.worker.heartbeat import heartbeat_step

    settings = get_settings()
    configure_logs(settings.log_level)  # before Celery starts: it keeps the root logger as set
    app = create_app(settings)
    app.steps["worker"].add(heartbeat_step(args.heartbeat or default_path("worker")))
    app.set_current()
    concurrency = args.concurrency or _default_concurrency()
    argv = [
        "worker",
        f"--concurrency={concurrency}",
        f"--pool={args.pool}",
        f"--queues={QUEUE}",
        f"--loglevel={settings.log_level}",
        f"--hostname=idcscan-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    scheduler = None
    if args.beat or embedded(settings):
        # The reconciler runs as its own process (the same as `idcscan scheduler`), not as a
        # thread of a parent that forks pool processes. The embedded mode has no scheduler
        # service: without it, a job whose publish failed (the broker's SQLite file locked past
        # the publish's retries, under load) stayed queued for good.
        scheduler = subprocess.Popen([sys.executable, "-m", "idcscan.cli", "scheduler"])
    try:
        app.worker_main(argv)
    finally:
        if scheduler is not None:
            scheduler.terminate()
            scheduler.wait(10)
    return 0


def _scheduler(args: argparse.Namespace) -> int:
    import signal
    import threading

    from idcscan.core.heartbeat import default_path
    from idcscan.core.logs import configure as configure_logs
    from idcscan.core.settings import get_settings
    from idcscan.worker.reconciler import run_forever

    settings = get_settings()
    configure_logs(settings.log_level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run_forever(settings, stop, heartbeat=args.heartbeat or default_path("scheduler"))
    return 0
