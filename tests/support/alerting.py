"""Test helpers for alert delivery: a local HTTP receiver, a throwaway Alertmanager and
Prometheus (Debian's packages), event records."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ae_anomaly.records import EventRecord

WAIT = 120.0  # generous: tests assert behaviour, not timings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def record(eid: str, start: datetime, minutes: int = 5, severity: float = 3.0,
           is_open: bool = False, entity: str = "web-1", model: str = "m",
           version: str = "1") -> EventRecord:
    return EventRecord(
        event_id=eid, entity=entity, start_ts=start, end_ts=start + timedelta(minutes=minutes),
        peak_ts=start, peak_score=severity, threshold=1.0, severity=severity, p_value=0.01,
        n_points=minutes + 1, top_channels={"cpu_util": 0.7, "mem_used": 0.3},
        model_name=model, model_version=version, run_id="r",
        scored_at=datetime(2026, 1, 2), is_open=is_open)


class Receiver:
    """A local HTTP receiver recording every JSON post (with its headers).

    ``status`` is the code it answers (200 by default); ``stop()`` / ``start()`` take it
    down and bring it back on the same port; ``dedup`` (on by default) keeps only the first
    post of each ``X-AE-Anomaly-Delivery`` key in ``unique``.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.posts: list[dict[str, Any]] = []
        self.status = 200
        self.lock = threading.Lock()
        # Hold the answer to post number ``block_at`` (1-based) until ``release`` is set.
        self.block_at: int | None = None
        self.blocked = threading.Event()
        self.release = threading.Event()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with outer.lock:
                    code = outer.status
                    if code < 300:
                        outer.posts.append({"body": json.loads(body), "raw": body,
                                            "headers": headers})
                    hold = outer.block_at is not None and len(outer.posts) == outer.block_at
                if hold:
                    outer.blocked.set()
                    outer.release.wait(WAIT)
                try:
                    self.send_response(code)
                    self.end_headers()
                    self.wfile.write(b"ok" if code < 300 else b"refused")
                except OSError:
                    pass  # the sender is gone

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.allow_reuse_address = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def keys(self) -> list[str]:
        with self.lock:
            return [p["headers"].get("x-ae-anomaly-delivery", "") for p in self.posts]

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [p["body"] for p in self.posts]

    def unique(self) -> list[dict[str, Any]]:
        seen, out = set(), []
        with self.lock:
            for p in self.posts:
                key = p["headers"].get("x-ae-anomaly-delivery")
                if key not in seen:
                    seen.add(key)
                    out.append(p["body"])
        return out


# ------------------------------------------------------------------------- Alertmanager
def alertmanager_bin() -> str | None:
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def prometheus_bin() -> str | None:
    return shutil.which("prometheus")


AM_CONFIG = """\
route:
  receiver: hook
  group_by: [alertname, entity, event_id]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {hook}
        send_resolved: true
"""


class Alertmanager:
    """A throwaway Alertmanager on 127.0.0.1 with a webhook receiver (``hook``)."""

    def __init__(self, root: Path, hook: str) -> None:
        self.root = root
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        (root / "am.yml").write_text(AM_CONFIG.format(hook=hook))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Alertmanager:
        binary = alertmanager_bin()
        assert binary is not None
        self.log = open(self.root / "am.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.root / 'am.yml'}",
             f"--storage.path={self.root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._ready, what="Alertmanager to start")
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def alerts(self, **params: str) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?{query}", timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.log.close()
            self.proc = None
