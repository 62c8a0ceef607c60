"""A full-size scanner-like slide scored end to end by a real worker, against the physical limits.

    python -m benchmarks.full_slide [--scale 0.25] [--repeats 3] [--workers 1] [--model M.onnx]
                                    [--cache var/bench] [--database URL] [--broker URL]

The slide: 100,000 x 80,000 px at 0.25 um/px (`--scale` shrinks both sides for quick runs),
three levels at downsample 1, 4 and 16 in 256 px JPEG tiles (quality 80, YCbCr 4:2:0) like an
Aperio SVS, written by tifffile as a tiled pyramidal TIFF that OpenSlide opens. Its tissue is real:
the bundled sample patients' patches, at their native 4 um/px on level 2 (the level the reference
model reads), laid edge to edge over smooth blobs covering half of the slide; levels 1 and 0 are
level 2 enlarged (smoother than a real scan, so their JPEG tiles are a little cheaper to decode).
Building it takes minutes: it is cached under `--cache` (default var/bench/, ignored by git).

Measured in the same run, so that the figures are ratios, not absolute numbers on a busy machine:
1. physical limits, in this process: decoding the regions of the level read that hold tissue
   (OpenSlide, 1024 px regions) and bare onnxruntime on the very same tiles, preprocessed and in
   memory; measured again after every job, each ratio taken per job (a burst of load from
   elsewhere hits both sides of it), wall and CPU seconds;
2. real `idcscan worker` processes (one, or --workers sharing the machine and its GPU; embedded
   SQLite + SQL transport unless --database and --broker are given): submit-to-result seconds (job
   committed and published until the poll sees it finished), slides/hour, the worker's own
   breakdown (its `succeeded` log line: open, tissue mask, reader's work, inference, outputs,
   database, CPU seconds) and its peak memory;
3. one pass against two, in this process: `score_slide` reading each block once (the mask built
   by the reader pool, what the worker does on this slide) and with `single_pass=False` (the
   whole mask first, then the tissue blocks), alternating, wall and CPU seconds, each ratio
   taken per pair.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks._common import ROOT, benchmark_model

FULL_WIDTH, FULL_HEIGHT, MPP = 100_000, 80_000, 0.25
DOWNSAMPLES = (1, 4, 16)
TILE = 256
JPEG_QUALITY = 80
PATCH = 50  # the dataset's patches: 50 px at 4 um/px, i.e. level 2 of this slide
TISSUE_SHARE = 0.5


# -- the slide ----------------------------------------------------------------------------------


def real_patches() -> np.ndarray:
    """Every full-size patch of the bundled sample patients, (n, 50, 50, 3) uint8."""
    patches = []
    for path in sorted((ROOT / "samples" / "idc").glob("*/[01]/*.png")):
        with Image.open(path) as image:
            if image.size == (PATCH, PATCH):
                patches.append(np.asarray(image.convert("RGB")))
    if not patches:
        raise SystemExit("no sample patches under samples/idc")
    return np.stack(patches)


def tissue_cells(rows: int, cols: int, seed: int) -> np.ndarray:
    """Smooth blobs over `TISSUE_SHARE` of a rows x cols grid (thresholded blurred noise)."""
    from PIL import ImageFilter

    rng = np.random.default_rng(seed)
    noise = Image.fromarray(
        (rng.random((max(2, rows // 10), max(2, cols // 10))) * 255).astype(np.uint8)
    )
    smooth = np.asarray(
        noise.resize((cols, rows), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    )
    return smooth >= np.quantile(smooth, 1 - TISSUE_SHARE)


def level2_canvas(width2: int, height2: int, seed: int = 0) -> np.ndarray:
    """Level 2 (4 um/px): a random real patch in every tissue cell, white elsewhere; padded with
    white by one tile, so that every level's last (partial) tiles are cut from it whole."""
    patches = real_patches()
    rows, cols = -(-height2 // PATCH), -(-width2 // PATCH)
    cells = tissue_cells(rows, cols, seed)
    choice = np.random.default_rng(seed).integers(0, len(patches), size=(rows, cols))
    mosaic = patches[choice]  # (rows, cols, 50, 50, 3)
    mosaic[~cells] = 255
    canvas = mosaic.transpose(0, 2, 1, 3, 4).reshape(rows * PATCH, cols * PATCH, 3)
    pad = TILE  # enough for one more tile at every level
    padded = np.full((canvas.shape[0] + pad, canvas.shape[1] + pad, 3), 255, np.uint8)
    padded[: canvas.shape[0], : canvas.shape[1]] = canvas
    padded[height2:, :] = 255
    padded[:, width2:] = 255
    return padded


def level_tiles(
    canvas: np.ndarray, downsample: int, width: int, height: int
) -> Iterator[np.ndarray]:
    """The level's 256 px tiles in row-major order, enlarged from the level-2 canvas."""
    factor = 16 // downsample
    side = TILE // factor
    for top in range(0, height, TILE):
        for left in range(0, width, TILE):
            y, x = top // factor, left // factor
            region = canvas[y : y + side, x : x + side]
            if factor == 1:
                yield np.ascontiguousarray(region)
            elif region.min() == 255:  # background: no resampling
                yield np.full((TILE, TILE, 3), 255, np.uint8)
            else:
                image = Image.fromarray(region).resize((TILE, TILE), Image.Resampling.BILINEAR)
                yield np.asarray(image)


_WHITE_JPEG: dict[int, bytes] = {}


def pillow_jpeg(
    data: np.ndarray, level: int | None = None, subsampling: tuple[int, int] = (2, 2), **_: object
) -> bytes:
    """A JPEG tile encoded by Pillow (libjpeg-turbo), for tifffile's JPEG compression where the
    imagecodecs package is absent; blank tiles are encoded once."""
    quality = level or JPEG_QUALITY
    blank = data.min() == 255
    if blank and quality in _WHITE_JPEG:
        return _WHITE_JPEG[quality]
    out = io.BytesIO()
    modes = {(1, 1): 0, (2, 1): 1, (2, 2): 2}
    Image.fromarray(np.ascontiguousarray(data)).save(
        out, format="JPEG", quality=quality, subsampling=modes[tuple(subsampling)]
    )
    if blank:
        _WHITE_JPEG[quality] = out.getvalue()
    return out.getvalue()


def build_slide(path: Path, scale: float) -> None:
    """The pyramid, written to a temporary name first: an interrupted build is never reused."""
    import tifffile

    try:
        import imagecodecs  # noqa: F401  - tifffile's own JPEG encoder
    except ImportError:
        # tifffile looks its encoders up in this table; without imagecodecs JPEG has none.
        tifffile.TIFF.COMPRESSORS._codecs[7] = pillow_jpeg

    width, height = round(FULL_WIDTH * scale), round(FULL_HEIGHT * scale)
    canvas = level2_canvas(width // 16, height // 16)
    partial = path.with_suffix(".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(partial, bigtiff=True) as tiff:
        for downsample in DOWNSAMPLES:
            w, h = width // downsample, height // downsample
            per_cm = 10_000.0 / (MPP * downsample)
            tiff.write(
                level_tiles(canvas, downsample, w, h),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="jpeg",
                compressionargs={"level": JPEG_QUALITY},
                photometric="rgb",  # stored as YCbCr 4:2:0, as scanners do
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=0 if downsample == 1 else 1,
                metadata=None,
            )
    partial.rename(path)


def cached_slide(cache: Path, scale: float) -> Path:
    width, height = round(FULL_WIDTH * scale), round(FULL_HEIGHT * scale)
    path = cache / f"full-slide-{width}x{height}-q{JPEG_QUALITY}.tiff"
    if not path.exists():
        start = time.perf_counter()
        build_slide(path, scale)
        print(
            f"built {path.name} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s"
        )
    return path


# -- the physical limits ------------------------------------------------------------------------


class Limits:
    """The physical limits on this slide: decoding the regions of the level read that hold a
    tissue tile (OpenSlide, `REGION_PX` regions, each once) and bare onnxruntime on the very same
    tiles, preprocessed and in memory. `measure()` runs both again: the benchmark calls it after
    every job, so that a burst of load from elsewhere on the machine hits both sides of a ratio."""

    def __init__(self, slide_path: Path, model_path: Path, threads: int | None) -> None:
        import openslide

        from idcscan.core.onnxmodel import OnnxModel
        from idcscan.core.settings import get_settings
        from idcscan.core.slides import open_slide
        from idcscan.core.tiles import to_model_input
        from idcscan.worker.tiling import REGION_PX, find_tissue, iter_tile_blocks, plan_tiling

        settings = get_settings()
        batch = settings.batch_size
        self.model = OnnxModel(
            model_path, settings.execution_provider, threads or settings.inference_threads
        )
        with open_slide(slide_path) as slide:
            plan = plan_tiling(slide, self.model.spec)
            tissue = find_tissue(slide, plan).tissue
            tiles = np.concatenate([b.tiles for b in iter_tile_blocks(slide, plan, tissue)])
        self.reader = openslide.OpenSlide(slide_path)
        level_w, level_h = self.reader.level_dimensions[plan.level]
        rows, cols = np.nonzero(tissue)
        stride = plan.grid.stride0 / plan.level_downsample
        corners = (
            np.unique(
                np.stack([(cols * stride) // REGION_PX, (rows * stride) // REGION_PX], axis=1),
                axis=0,
            ).astype(int)
            * REGION_PX
        )
        self.regions = [
            (
                (round(x * plan.level_downsample), round(y * plan.level_downsample)),
                plan.level,
                (min(REGION_PX, level_w - x), min(REGION_PX, level_h - y)),
            )
            for x, y in corners.tolist()
        ]
        self.batches = [
            to_model_input(tiles[i : i + batch], self.model.spec)
            for i in range(0, len(tiles), batch)
        ]
        self.model.run(self.batches[0])  # warm-up
        self.facts = {
            "tiles": len(tiles),
            "grid": [plan.grid.rows, plan.grid.cols],
            "level": plan.level,
            "level_px": [level_w, level_h],
            "regions_decoded": len(self.regions),
            "provider": self.model.provider,
        }

    def measure(self) -> dict[str, float]:
        """Wall and CPU seconds (this process, all threads) of each limit."""
        figures = {}
        for name, work in (("decode", self._decode), ("bare_inference", self._infer)):
            wall, cpu = time.perf_counter(), time.process_time()
            work()
            figures[f"{name}_s"] = time.perf_counter() - wall
            figures[f"{name}_cpu_s"] = time.process_time() - cpu
        return figures

    def _decode(self) -> None:
        for location, level, size in self.regions:
            self.reader.read_region(location, level, size)

    def _infer(self) -> None:
        for batch in self.batches:
            self.model.run(batch)


# -- one pass against two -----------------------------------------------------------------------


def one_vs_two_passes(slide_path: Path, limits: Limits, repeats: int) -> dict[str, object]:
    """`score_slide` with each block read once and with two passes (`single_pass=False`),
    alternating which goes first, and the limits after each pair; the medians, and each ratio
    (two passes' seconds over one pass's; bare onnxruntime's over one pass's) taken per round,
    then the median."""
    from idcscan.core.settings import get_settings
    from idcscan.core.slides import open_slide
    from idcscan.worker.pipeline import score_slide

    settings = get_settings()
    model = limits.model
    runs: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    bare: list[float] = []
    for repeat in range(repeats):
        for single_pass in (True, False) if repeat % 2 == 0 else (False, True):
            with open_slide(slide_path) as slide:
                wall, cpu = time.perf_counter(), time.process_time()
                score = score_slide(
                    slide,
                    model,
                    batch_size=settings.batch_size,
                    readers=settings.reader_threads,
                    single_pass=single_pass,
                )
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if score.single_pass != single_pass:
                raise SystemExit("this slide's mask and tiles do not read the same blocks")
            runs[single_pass].append((wall, cpu, score.seconds["tissue_mask"]))
        bare.append(limits.measure()["bare_inference_s"])

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    one, two = runs[True], runs[False]
    return {
        "one_pass_s": median([r[0] for r in one]),
        "two_passes_s": median([r[0] for r in two]),
        "one_pass_cpu_s": median([r[1] for r in one]),
        "two_passes_cpu_s": median([r[1] for r in two]),
        "two_passes_tissue_mask_s": median([r[2] for r in two]),
        "wall_ratio": median([b[0] / a[0] for a, b in zip(one, two, strict=True)]),
        "wall_ratio_per_pair": [round(b[0] / a[0], 2) for a, b in zip(one, two, strict=True)],
        "cpu_ratio": median([b[1] / a[1] for a, b in zip(one, two, strict=True)]),
        "cpu_ratio_per_pair": [round(b[1] / a[1], 2) for a, b in zip(one, two, strict=True)],
        # The issue's figure for `score_slide` itself, in this process (no queue, no worker).
        "one_pass_vs_bare_inference": median([b / a[0] for a, b in zip(one, bare, strict=True)]),
        "pairs": repeats,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


# -- a real worker ------------------------------------------------------------------------------


def through_worker(
    args: argparse.Namespace, work: Path, slide: Path, model_path: Path, limits: Limits
) -> tuple[list[dict], float]:
    """Each job's submit-to-result seconds, the worker's own breakdown and peak memory, and the
    limits measured right after it; the seconds the measured jobs took in all."""
    from idcscan.broker import publish_job
    from idcscan.core.db import (
        Client,
        Job,
        JobStatus,
        Model,
        make_engine,
        make_sessionmaker,
        transaction,
    )
    from idcscan.core.migrate import upgrade
    from idcscan.core.settings import get_settings
    from idcscan.core.storage import Storage

    env = {"IDCSCAN_DATA_DIR": str(work / "data"), "IDCSCAN_LOG_LEVEL": "INFO"}
    if args.database:
        env["IDCSCAN_DATABASE_URL"] = args.database
    if args.broker:
        env["IDCSCAN_BROKER_URL"] = args.broker
    if args.threads:
        env["IDCSCAN_INFERENCE_THREADS"] = str(args.threads)
    settings = get_settings(
        data_dir=work / "data", database_url=args.database, broker_url=args.broker
    )
    upgrade(settings.database)
    sessions = make_sessionmaker(make_engine(settings.database))
    with transaction(sessions) as session:
        client = Client(
            name=f"bench-{uuid.uuid4().hex[:6]}", key_prefix=uuid.uuid4().hex[:12], key_hash="-"
        )
        model = Model(
            version=f"bench-{uuid.uuid4().hex[:6]}",
            architecture="bench",
            onnx_sha256=uuid.uuid4().hex * 2,
            location=str(model_path),
            tile_spec={},
            threshold=0.5,
        )
        session.add_all([client, model])
        session.flush()
        ids = (client.id, model.id)
    slide_uri = Storage(settings.storage).put_file(slide, f"slides/bench/{slide.name}")
    log_path = work / "worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "idcscan.cli", "worker", f"--concurrency={args.workers}"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def submit_and_wait(count: int) -> list[dict]:
        """`count` jobs submitted at once; each one's submit-to-result seconds, from the job's own
        timestamps (created, finished): the poll that notices them runs only 4 times a second, so
        that it takes no CPU worth mentioning from the worker it measures."""
        submitted = set()
        for _ in range(count):
            with transaction(sessions) as session:
                job = Job(client_id=ids[0], model_id=ids[1], slide_uri=slide_uri)
                session.add(job)
                session.flush()
                submitted.add(job.id)
            publish_job(job.id, settings)
        runs: list[dict] = []
        deadline = time.monotonic() + 1800
        while submitted and time.monotonic() < deadline:
            time.sleep(0.25)
            with sessions() as session:
                for job_id in list(submitted):
                    done = session.get(Job, job_id)
                    assert done is not None
                    if not JobStatus(done.status).finished:
                        continue
                    assert done.status == JobStatus.SUCCEEDED, done.error_message
                    assert done.finished_at is not None and done.started_at is not None
                    submitted.remove(job_id)
                    runs.append(
                        {
                            "job_id": str(job_id),
                            "submit_to_result_s": (
                                done.finished_at - done.created_at
                            ).total_seconds(),
                            "queued_s": (done.started_at - done.created_at).total_seconds(),
                        }
                    )
        assert not submitted, "jobs still unfinished after 30 minutes"
        return runs

    try:
        # The first wave pays the model load in each worker process; one job at a time after
        # that (or a wave per process with --workers), so that submit-to-result is one slide's.
        submit_and_wait(args.workers)
        runs = []
        jobs_s = 0.0
        for _ in range(args.repeats):
            wave_start = time.perf_counter()
            wave = submit_and_wait(args.workers)
            jobs_s += time.perf_counter() - wave_start
            measured = limits.measure()  # while the worker is idle: the limits of this moment
            runs += [{**run, "limits": measured} for run in wave]
        wall_s = jobs_s
    finally:
        worker.terminate()
        worker.wait(30)
    logged = {}
    for line in log_path.read_text().splitlines():
        if '"seconds"' in line:
            entry = json.loads(line)
            logged[entry["job_id"]] = entry
    for run in runs:
        entry = logged[run["job_id"]]
        run["seconds"] = entry["seconds"]
        run["peak_rss_mb"] = entry["peak_rss_mb"]
    return runs, wall_s


def report(facts: dict, runs: list[dict], wall_s: float, workers: int) -> dict[str, object]:
    """Medians over the jobs; each ratio is taken per job, against the limits measured right
    after it, then the median of those."""

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    def per_job(fn: Callable[[dict, dict, dict], float]) -> float:
        return median([fn(run, run["seconds"], run["limits"]) for run in runs])

    def job_s(t: dict) -> float:
        return t["open"] + t["total"] + t["outputs"] + t["database"]

    def overhead_s(t: dict) -> float:
        return t["open"] + t["tissue_mask"] + t["outputs"] + t["database"]

    return {
        **facts,
        "submit_to_result_s": median([r["submit_to_result_s"] for r in runs]),
        # From submit to a worker's claim (the job's own timestamps): the publish, the wait in
        # the queue (for the embedded broker, its poll) and the task's start. Seconds move less
        # with the machine's load than a share of a job whose inference that load slows down.
        "queued_s": median([r["queued_s"] for r in runs]),
        "worker_processes": workers,
        "slides_per_hour_per_worker": round(3600 * len(runs) / wall_s / workers, 1),
        "slides_per_hour": round(3600 * len(runs) / wall_s, 1),
        "worker_seconds": {
            key: median([r["seconds"][key] for r in runs]) for key in runs[0]["seconds"]
        },
        "limits": {key: median([r["limits"][key] for r in runs]) for key in runs[0]["limits"]},
        "worker_peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
        "ratios": {
            # The issue's figure: bare onnxruntime's seconds over the whole job's (1.0 = free I/O).
            "end_to_end_vs_bare_inference": per_job(
                lambda r, t, m: m["bare_inference_s"] / r["submit_to_result_s"]
            ),
            # Reading and inference overlap: the slower of the two is the job's floor.
            "end_to_end_vs_limits": per_job(
                lambda r, t, m: max(m["decode_s"], m["bare_inference_s"]) / r["submit_to_result_s"]
            ),
            # CPU seconds barely move when other work shares the machine; wall seconds do.
            "cpu_vs_limits": per_job(
                lambda r, t, m: (m["decode_cpu_s"] + m["bare_inference_cpu_s"]) / t["cpu"]
            ),
            "reader_vs_decode": per_job(lambda r, t, m: m["decode_s"] / t["read"]),
            "inference_vs_bare": per_job(lambda r, t, m: m["bare_inference_s"] / t["inference"]),
            "overhead_share": per_job(lambda r, t, m: overhead_s(t) / job_s(t)),
            "queued_share": per_job(lambda r, t, m: r["queued_s"] / r["submit_to_result_s"]),
        },
        "per_job_s": [round(run["submit_to_result_s"], 3) for run in runs],
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="slide side relative to 100,000 x 80,000 px"
    )
    parser.add_argument(
        "--cache", type=Path, default=ROOT / "var" / "bench", help="where the slide is kept"
    )
    parser.add_argument("--model", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the machine (and GPU)"
    )
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: the setting)")
    parser.add_argument("--database", help="database URL for the worker (default: embedded SQLite)")
    parser.add_argument(
        "--broker", help="broker URL for the worker (default: embedded SQL transport)"
    )
    parser.add_argument(
        "--build-only", action="store_true", help="build (or find) the slide and stop"
    )
    parser.add_argument(
        "--passes-only",
        action="store_true",
        help="only compare one pass with two, in this process (no worker)",
    )
    args = parser.parse_args()
    if not 0 < args.scale <= 1:
        raise SystemExit("--scale must be in (0, 1]")
    slide = cached_slide(args.cache, args.scale)
    if args.build_only:
        print(slide)
        return
    work = Path(tempfile.mkdtemp(prefix="idcscan-full-slide-"))
    model_path = benchmark_model(work, args.model)
    limits = Limits(slide, model_path, args.threads)
    passes = one_vs_two_passes(slide, limits, args.repeats)
    if args.passes_only:
        result: dict[str, object] = {**limits.facts}
    else:
        runs, wall_s = through_worker(args, work, slide, model_path, limits)
        result = report(limits.facts, runs, wall_s, args.workers)
    result["one_vs_two_passes"] = passes
    result["slide"] = slide.name
    result["model"] = model_path.name
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
