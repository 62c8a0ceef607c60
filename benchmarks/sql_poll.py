"""The embedded broker's polling: how long a message waits before an idle consumer gets it, and
what the consumer's empty polls cost, for kombu's SQL transport (one poll a second) against
`idcscan.broker.SqlTransport` (one every `SQL_POLL_S`), on a SQLite broker file.

    python -m benchmarks.sql_poll [--rounds 4] [--messages 8] [--idle-s 5]

Each round measures both transports, alternating which goes first, in this process: a consumer
thread waits on the queue as a worker does (`drain_events`); messages are published at random
moments, and each one's wait is the time from its publish to its delivery. Then the consumer
waits on an empty queue for `--idle-s` seconds, and its thread's CPU seconds over that time are
the idle cost. Ratios (SqlTransport over kombu's) are taken per round; the load average is printed
with them, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from kombu import Connection
from kombu.transport import sqlalchemy as kombu_sql

from idcscan.broker import SqlTransport

QUEUE = "bench-poll"


def _consume(
    url: str,
    transport: type[kombu_sql.Transport],
    arrivals: queue.Queue[float],
    stop: threading.Event,
) -> None:
    """Wait on the queue until `stop`, putting each message's wait (seconds) into `arrivals`;
    2 s at a time, as Celery's worker loop for this transport does (a shorter wait would cut the
    polling interval to it)."""
    with Connection(url, transport=transport) as connection:
        simple = connection.SimpleQueue(QUEUE)
        while not stop.is_set():
            try:
                message = simple.get(timeout=2.0)
            except simple.Empty:
                continue
            arrivals.put(time.monotonic() - message.payload["sent"])
            message.ack()
        simple.close()


def _idle_cpu_s(url: str, transport: type[kombu_sql.Transport], seconds: float) -> float:
    """CPU seconds a consumer thread spends waiting `seconds` on an empty queue."""
    spent: list[float] = []

    def wait() -> None:
        with Connection(url, transport=transport) as connection:
            simple = connection.SimpleQueue(QUEUE)
            start = time.thread_time()
            with contextlib.suppress(simple.Empty):
                simple.get(timeout=seconds)
            spent.append(time.thread_time() - start)
            simple.close()

    thread = threading.Thread(target=wait)
    thread.start()
    thread.join()
    return spent[0]


def measure(
    transport: type[kombu_sql.Transport],
    folder: Path,
    messages: int,
    idle_s: float,
) -> dict[str, float]:
    """One transport's median and mean wait, and its idle CPU share, on a fresh broker file."""
    url = f"sqlite:///{folder / f'{transport.__module__}-{time.monotonic_ns()}.sqlite3'}"
    arrivals: queue.Queue[float] = queue.Queue()
    stop = threading.Event()
    consumer = threading.Thread(target=_consume, args=(url, transport, arrivals, stop))
    consumer.start()
    waits = []
    with Connection(url, transport=transport) as connection:
        simple = connection.SimpleQueue(QUEUE)
        for _ in range(messages):
            time.sleep(random.uniform(0.3, 1.3))  # any phase of the consumer's poll
            simple.put({"sent": time.monotonic()})
            waits.append(arrivals.get(timeout=10))
        simple.close()
    stop.set()
    consumer.join()
    idle = _idle_cpu_s(url, transport, idle_s)
    return {
        "wait_median_s": statistics.median(waits),
        "wait_mean_s": statistics.fmean(waits),
        "idle_cpu_share": idle / idle_s,
        "cpu_ms_per_poll": 1000 * idle / (idle_s / transport.polling_interval),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--messages", type=int, default=8, help="messages per transport a round")
    parser.add_argument("--idle-s", type=float, default=5.0, help="idle wait per transport a round")
    args = parser.parse_args()
    transports = {"kombu": kombu_sql.Transport, "idcscan": SqlTransport}
    rounds = []
    with tempfile.TemporaryDirectory(prefix="idcscan-sql-poll-") as folder:
        for index in range(args.rounds):
            order = list(transports) if index % 2 == 0 else list(reversed(transports))
            rounds.append(
                {
                    name: measure(transports[name], Path(folder), args.messages, args.idle_s)
                    for name in order
                }
            )

    def per_round(key: str) -> list[float]:
        return [round(r["idcscan"][key] / r["kombu"][key], 3) for r in rounds]

    def median(name: str, key: str) -> float:
        return round(statistics.median(r[name][key] for r in rounds), 4)

    keys = ("wait_median_s", "wait_mean_s", "idle_cpu_share", "cpu_ms_per_poll")
    print(
        json.dumps(
            {
                "polling_interval_s": {n: t.polling_interval for n, t in transports.items()},
                "medians_over_rounds": {n: {k: median(n, k) for k in keys} for n in transports},
                "idcscan_over_kombu_per_round": {k: per_round(k) for k in keys},
                "load_average_1min": round(os.getloadavg()[0], 2),
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
