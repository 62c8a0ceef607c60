"""A real HTTP receiver of completion webhooks for the tests, and the README's verification
recipe loaded from the README itself (so the documented snippet is the one tested)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.conftest import ROOT


def readme_verify() -> Callable[..., bool]:
    """`verify(secret, headers, body)` exactly as README.md prints it."""
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- webhook-verify -->\n```python\n(.*?)```", text, re.DOTALL)
    assert found, "README.md lost its webhook verification recipe"
    namespace: dict[str, Any] = {}
    exec(found.group(1), namespace)
    return namespace["verify"]  # type: ignore[no-any-return]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A ThreadingHTTPServer on loopback. `answers[path]` is the list of status codes to give in
    turn (the last one repeats; 200 when none); `on_request(received)` runs before answering."""

    answers: dict[str, list[int]] = field(default_factory=dict)
    on_request: Callable[[Received], None] | None = None
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                got = Received(self.path, headers, body, time.monotonic())
                receiver.received.append(got)
                if receiver.on_request is not None:
                    receiver.on_request(got)
                codes = receiver.answers.get(self.path, [200])
                status = codes.pop(0) if len(codes) > 1 else codes[0]
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
