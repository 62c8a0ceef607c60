"""Queue and database overhead: submit to done for a small slide through Redis and PostgreSQL,
minus the time scoring itself takes.

Scoring time is measured two ways: the worker's own claim-to-done (recorded in the job row; it
includes writing tiles, result rows and output files) and the same slide scored in-process. The
overhead per job is submit-to-done minus the worker's claim-to-done.

    python -m benchmarks.score_overhead [--jobs 10] [--postgres URL] [--redis URL]

Submit = insert the job row, commit, publish (what the API does). Done = the row says succeeded,
seen by polling every 5 ms. Scoring time = the same slide scored in-process with outputs rendered
(median). The worker runs as `idcscan worker --concurrency=1` in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks._common import ROOT, benchmark_model, median_time

SMALL_SLIDE = ROOT / "samples" / "wsi" / "CMU-1-Small-Region.svs"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--model", type=Path)
    args = parser.parse_args()

    import redis
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from idcscan.broker import publish_job
    from idcscan.core.db import (
        Job,
        JobStatus,
        make_engine,
        make_sessionmaker,
        transaction,
    )
    from idcscan.core.migrate import upgrade
    from idcscan.core.onnxmodel import OnnxModel
    from idcscan.core.settings import get_settings
    from idcscan.core.slides import open_slide
    from idcscan.core.storage import Storage
    from idcscan.worker import outputs
    from idcscan.worker.pipeline import score_slide
    from tests import factories

    work = Path(tempfile.mkdtemp(prefix="idcscan-overhead-"))
    model_path = benchmark_model(work, args.model)

    # A database and a Redis index of our own (the same lock keys as the test suite uses).
    admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    name = f"idcscan_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    database = make_url(args.postgres).set(database=name).render_as_string(hide_password=False)
    lock = redis.Redis.from_url(f"{args.redis}/0")
    index = next(
        n for n in range(15, 0, -1) if lock.set(f"idcscan-test-lock:{n}", "bench", nx=True, ex=900)
    )
    broker = f"{args.redis}/{index}"
    redis.Redis.from_url(broker).flushdb()

    env = {
        "IDCSCAN_DATA_DIR": str(work / "data"),
        "IDCSCAN_DATABASE_URL": database,
        "IDCSCAN_BROKER_URL": broker,
    }
    settings = get_settings(data_dir=work / "data", database_url=database, broker_url=broker)
    worker = None
    engine = None
    try:
        upgrade(database)
        engine = make_engine(database)
        sessions = make_sessionmaker(engine)
        with transaction(sessions) as session:
            client, _key = factories.client(session, "bench")
            model = factories.model(
                session, "bench", architecture="bench", location=str(model_path), active=True
            )

        onnx_model = OnnxModel(model_path, "cpu")

        def score_in_process() -> None:
            with open_slide(SMALL_SLIDE) as slide:
                outputs.render(score_slide(slide, onnx_model))

        score_in_process()
        scoring_s, _ = median_time(score_in_process, 7)

        # Workers read only what the service stored (the API copies every slide in).
        slide_uri = Storage(settings.storage).put_file(
            SMALL_SLIDE, f"slides/bench/{Path(SMALL_SLIDE).name}"
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "idcscan.cli", "worker", "--concurrency=1"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        totals, worker_side = [], []
        for i in range(args.jobs + 1):
            start = time.perf_counter()
            with transaction(sessions) as session:
                job_id = factories.job(session, client, model, slide_uri=slide_uri).id
            publish_job(job_id, settings)
            while True:
                with sessions() as session:
                    done = session.get(Job, job_id)
                    assert done is not None
                    if JobStatus(done.status).finished:
                        break
                time.sleep(0.005)
            total = time.perf_counter() - start
            assert done.status == JobStatus.SUCCEEDED, done.error_message
            assert done.started_at and done.finished_at
            if i:  # the first job waits for the worker to start and load the model
                totals.append(total)
                worker_side.append((done.finished_at - done.started_at).total_seconds())
        total_s = statistics.median(totals)
        print(
            json.dumps(
                {
                    "slide": SMALL_SLIDE.name,
                    "jobs": args.jobs,
                    "submit_to_done_s_median": round(total_s, 3),
                    "submit_to_done_s_all": [round(t, 3) for t in totals],
                    "scoring_in_process_s_median": round(scoring_s, 3),
                    "claim_to_done_in_worker_s_median": round(statistics.median(worker_side), 3),
                    # Per job: what the queue, the claim and the polling add to the worker's own time.
                    "overhead_s_median": round(
                        statistics.median(t - w for t, w in zip(totals, worker_side, strict=True)),
                        3,
                    ),
                    "overhead_vs_in_process_s": round(total_s - scoring_s, 3),
                },
                indent=2,
            )
        )
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        if engine is not None:
            engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        redis.Redis.from_url(broker).flushdb()
        lock.delete(f"idcscan-test-lock:{index}")


if __name__ == "__main__":
    main()
