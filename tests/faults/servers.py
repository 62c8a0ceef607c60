"""PostgreSQL clusters and Redis servers that a fault test starts, stops and kills by itself.

The fault tests take servers down; they must never touch the machine's shared services, so each
gets its own on a free port, in a temporary folder, removed at the end. PostgreSQL refuses to run
as root, so under root its commands run as the `postgres` user (the Debian packages create it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from idcscan.processes import free_port
from tests.conftest import service_missing


def _pg_bin() -> Path | None:
    """The PostgreSQL server's programs: IDCSCAN_TEST_PG_BIN, else the newest Debian package's."""
    if "IDCSCAN_TEST_PG_BIN" in os.environ:
        return Path(os.environ["IDCSCAN_TEST_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


PG_BIN = _pg_bin()


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class PostgresCluster:
    """A throwaway PostgreSQL cluster (trust auth) on 127.0.0.1:`port`. No fsync (a crash of
    the server process loses nothing, only one of the machine would), but commits are synchronous:
    `stop("immediate")` must not lose a committed row."""

    def __init__(self) -> None:
        if PG_BIN is None or not (PG_BIN / "initdb").exists():
            service_missing("PostgreSQL server programs (initdb, pg_ctl) not found")
        assert PG_BIN is not None
        self.bin = PG_BIN
        self.folder = Path(tempfile.mkdtemp(prefix="idcscan-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self.port = free_port()
        self._run(
            self.bin / "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "--no-instructions",
        )

    def _run(self, *argv: str | Path) -> None:
        done = subprocess.run(
            _as_postgres([str(a) for a in argv]), capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr[-2000:]}")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} "
            "-c fsync=off -c full_page_writes=off"
        )
        self._run(
            self.bin / "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session and shuts down; `immediate` is a crash."""
        self._run(self.bin / "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        if self.running():
            with contextlib.suppress(RuntimeError):  # already gone: nothing to stop
                self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


class RedisServer:
    """A throwaway redis-server on 127.0.0.1:`port`, with an append-only file in its folder."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            service_missing("redis-server not found")
        self.binary = binary
        self.folder = Path(tempfile.mkdtemp(prefix="idcscan-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - the child writes it
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with redis.Redis.from_url(self.url) as client:
                    client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not come up")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections (the kernel does), nothing answers."""
        assert self.process is not None and self.process.poll() is None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)
