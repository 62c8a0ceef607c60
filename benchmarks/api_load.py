"""HTTP load on the production server: status polling and submission, the worker running.

    python -m benchmarks.api_load [--database URL --broker URL] [--rate 200] [--duration 20]

Starts `idcscan api` (gunicorn) and `idcscan worker` on a fresh data folder, registers the
benchmark model, creates a client, then drives the API with wrk (`apt-get install wrk`):

1. polling `GET /v1/jobs/{id}` at about `--rate` requests/s (each wrk connection waits
   connections/rate between requests; wrk is closed-loop, so the achieved rate is printed);
2. polling flat out (the ceiling on this machine);
3. submitting the Aperio sample (1.9 MB multipart) flat out, while the worker scores what
   arrives.

Rate limiting is raised out of the way; every other setting is the production default.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import requests

from benchmarks._common import ROOT, benchmark_model
from idcscan.processes import free_port, idcscan_process

SLIDE = ROOT / "samples" / "wsi" / "CMU-1-Small-Region.svs"
BOUNDARY = "idcscan-bench-boundary"

POLL_LUA = """
wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEY")
local pause = tonumber(os.getenv("DELAY_MS") or "0")
if pause > 0 then
  function delay() return pause end
end
"""

SUBMIT_LUA = """
local f = io.open(os.getenv("BODY_FILE"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEY")
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. os.getenv("BOUNDARY")
"""


def _cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "idcscan.cli", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def _wrk(
    url: str, script: str, env: dict[str, str], connections: int, seconds: int
) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", handle.name, url],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    os.unlink(handle.name)
    return _parse(out)


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def _parse(out: str) -> dict[str, float]:
    figures: dict[str, float] = {}
    for pct in ("50", "90", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if match:
            figures[f"p{pct}_ms"] = round(_ms(*match.groups()), 2)
    figures["requests_per_s"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    figures["requests"] = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["non_2xx"] = float(errors.group(1)) if errors else 0.0
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", help="database URL (default: embedded SQLite)")
    parser.add_argument("--broker", help="broker URL (default: embedded SQL transport)")
    parser.add_argument("--rate", type=int, default=200, help="target polling rate, requests/s")
    parser.add_argument("--duration", type=int, default=20, help="seconds per wrk run")
    parser.add_argument(
        "--api-workers", type=int, default=0, help="gunicorn processes (default: idcscan's)"
    )
    parser.add_argument("--model", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the data folder and logs")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    work = Path(tempfile.mkdtemp(prefix="idcscan-bench-"))
    env = {
        **os.environ,
        "IDCSCAN_DATA_DIR": str(work / "data"),
        "IDCSCAN_RATE_LIMIT": "1000000/minute",
        "IDCSCAN_INFERENCE_THREADS": "1",
    }
    if args.database:
        env["IDCSCAN_DATABASE_URL"] = args.database
    if args.broker:
        env["IDCSCAN_BROKER_URL"] = args.broker
        env["IDCSCAN_RATE_LIMIT_STORAGE_URL"] = args.broker
    _cli(env, "db", "upgrade")
    _cli(env, "models", "register", str(benchmark_model(work, args.model)), "--activate")
    key = _cli(env, "clients", "add", "bench").strip().splitlines()[-1]
    body = work / "submit.body"
    body.write_bytes(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="slide"; filename="s.svs"\r\n\r\n'.encode()
        + SLIDE.read_bytes()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = ["api", "--port", str(port)] + (
        ["--workers", str(args.api_workers)] if args.api_workers else []
    )
    results: dict[str, object] = {
        "cpus": os.cpu_count(),
        "database": args.database or "sqlite",
        "broker": args.broker or "sqla+sqlite",
    }
    with (
        idcscan_process(api, env, work / "api.log"),
        idcscan_process(["worker", "--concurrency=1"], env, work / "worker.log"),
    ):
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the API did not become ready; see {work / 'api.log'}")
            time.sleep(0.2)
        with SLIDE.open("rb") as slide:
            job = requests.post(
                url + "/v1/jobs",
                files={"slide": ("s.svs", slide)},
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            ).json()
        poll_url = f"{url}/v1/jobs/{job['id']}"
        connections = 20
        lua_env = {
            "KEY": key,
            "DELAY_MS": str(round(connections * 1000 / args.rate)),
            "BODY_FILE": str(body),
            "BOUNDARY": BOUNDARY,
        }
        results["poll_at_rate"] = _wrk(poll_url, POLL_LUA, lua_env, connections, args.duration)
        results["poll_flat_out"] = _wrk(
            poll_url, POLL_LUA, {**lua_env, "DELAY_MS": "0"}, 16, args.duration
        )
        results["submit_flat_out"] = _wrk(url + "/v1/jobs", SUBMIT_LUA, lua_env, 4, args.duration)
        results["jobs"] = dict(
            re.findall(r'^idcscan_jobs\{status="(\w+)"\} (\S+)', metrics(url), re.M)
        )
    # What the API answered, from its own access log (one JSON line per request).
    answered = re.findall(r'"route": "([^"]+)", "status": (\d+)', (work / "api.log").read_text())
    results["api_statuses"] = {
        f"{route} {status}": n for (route, status), n in Counter(answered).items()
    }
    print(json.dumps(results, indent=2, default=str))
    if args.keep:
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def metrics(url: str) -> str:
    return requests.get(url + "/metrics", timeout=10).text


if __name__ == "__main__":
    main()
