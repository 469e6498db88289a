"""Regenerate the dashboard screenshots in docs/img/ from a real pipeline run.

    .venv/bin/python scripts/screenshots.py            # demo-sized data, ~2 minutes
    .venv/bin/python scripts/screenshots.py --quick    # tiny data (what the browser test uses)

Trains the demo's conv autoencoder twice in a temporary state folder (v1, then v2 with a
looser alpha, promoted to champion, so the alarm-rate page shows a promotion that raised the
alarm rate), scores the demo's fresh period with each, marks two events, starts
``ae-anomaly dashboard`` and screenshots every page in headless Debian Chromium driven by
Playwright. Needs ``/usr/bin/chromium`` (scripts/ensure_chromium.sh installs it).

The helpers (``seed_database``, ``running_dashboard``, ``chromium_context``) are also what
tests/integration/test_dashboard_browser.py uses, so the screenshots and the test exercise
the same setup.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("AE_ANOMALY_CHROMIUM", "/usr/bin/chromium")
# STACK.md: the flags that keep Debian's Chromium headless, quiet and offline.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]

# Tiny and fast: two servers, half a day scored, a small network, two epochs.
QUICK_OVERRIDES = [
    "data.synthetic.n_entities=2", "data.synthetic.n_metrics=4",
    "data.synthetic.train_days=1", "data.synthetic.score_days=0.5",
    "data.synthetic.anomalies_per_entity=3", "window.length=32", "window.train_stride=4",
    "model.channels=[8]", "model.latent_dim=4", "training.epochs=2", "training.patience=1",
    "training.progress=false", "calibration.alpha=0.01",
]
# Demo-sized data with fewer epochs than `make demo`.
DEMO_OVERRIDES = ["training.epochs=8", "training.progress=false"]


def seed_database(home: Path, overrides: list[str], second_alpha: float | None = None
                  ) -> Path:
    """A real pipeline run into ``home``: demo data, train, register, score, write events.

    Args:
        home: the state folder (``AE_ANOMALY_HOME`` is set to it for this process).
        overrides: config overrides on top of configs/demo.yaml.
        second_alpha: when given, train a second version with this alpha, promote it to
            champion and score the same data again (events of two model versions).

    Returns:
        A config file (YAML) for ``ae-anomaly dashboard --config``.
    """
    previous = os.environ.get("AE_ANOMALY_HOME")
    os.environ["AE_ANOMALY_HOME"] = str(home)  # {home} in the config; restored after
    try:
        return _seed(home, overrides, second_alpha)
    finally:
        if previous is None:
            os.environ.pop("AE_ANOMALY_HOME", None)
        else:
            os.environ["AE_ANOMALY_HOME"] = previous


def _seed(home: Path, overrides: list[str], second_alpha: float | None) -> Path:
    from ae_anomaly import pipeline
    from ae_anomaly.config import load_config
    from ae_anomaly.tracking import Tracker

    base = str(ROOT / "configs" / "demo.yaml")
    data = pipeline.write_demo_data(load_config(base, overrides))
    ov = [*overrides, *pipeline.demo_overrides(data)]
    runs = [ov] + ([[*ov, f"calibration.alpha={second_alpha}", "training.seed=1"]]
                   if second_alpha is not None else [])
    for i, run_ov in enumerate(runs):
        cfg = load_config(base, run_ov)
        tracker = Tracker(cfg.tracking)
        frame = pipeline.load_training_frame(cfg)
        run_id = pipeline.start_run(cfg, tracker)
        det = pipeline.fit_detector(cfg, frame, tracker, run_id)
        reg = pipeline.log_and_register(cfg, det, frame, tracker, run_id)
        if i > 0:
            tracker.set_alias("challenger", tracker.alias_version("champion") or "1")
            tracker.set_alias("champion", reg.model.version)
        champion, ref = tracker.load()
        result = pipeline.score_inputs(cfg, champion)
        pipeline.write_events(cfg, champion, ref, result)
    cfg_path = home / "dashboard.yaml"
    cfg_path.write_text(yaml.safe_dump(load_config(base, ov).model_dump(mode="json")))
    return cfg_path


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_dashboard(config: Path, home: Path, port: int | None = None,
                      timeout: float = 90.0, log_path: Path | None = None) -> Iterator[str]:
    """Run ``ae-anomaly dashboard`` in a subprocess; yields its base URL, stops it after."""
    port = port or free_port()
    env = {**os.environ, "AE_ANOMALY_HOME": str(home)}
    log_path = log_path or home / "dashboard.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ae_anomaly.cli", "dashboard", "--config", str(config),
             "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"dashboard exited with {proc.returncode}: "
                                       f"{log_path.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"dashboard not up after {timeout:.0f}s: "
                                       f"{log_path.read_text()[-3000:]}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def chromium_context(playwright: Any, viewport: tuple[int, int] = (1400, 900)
                     ) -> Iterator[Any]:
    """A headless Debian Chromium context with a fresh, empty profile (Playwright)."""
    profile = tempfile.mkdtemp(prefix="ae-anomaly-chromium-")
    try:
        ctx = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]})
        try:
            yield ctx
        finally:
            ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def wait_for_chart(page: Any, div_id: str, timeout_ms: int = 30_000) -> int:
    """Wait until a Plotly chart has drawn; returns its number of traces."""
    page.wait_for_function(
        f"() => {{ const d = document.getElementById('{div_id}');"
        f" return d && d.data && d.data.length > 0 && d.querySelector('.main-svg'); }}",
        timeout=timeout_ms)
    return int(page.evaluate(f"document.getElementById('{div_id}').data.length"))


def take_screenshots(base_url: str, out: Path) -> list[Path]:
    """Mark two events, then screenshot every page into ``out``."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    shots = []
    with sync_playwright() as p, chromium_context(p) as ctx:
        page = ctx.new_page()
        page.goto(base_url + "/?status=all")
        rows = page.locator("#events tbody tr")
        # Feedback for the feedback page: one false positive, one acknowledged.
        rows.nth(1).get_by_role("button", name="False positive").click()
        page.wait_for_load_state()
        page.locator("#events tbody tr").nth(0).get_by_role("button", name="Acknowledge").click()
        page.wait_for_load_state()

        page.goto(base_url + "/")
        wait_for_chart(page, "chart-hourly")
        shots.append(out / "dashboard-events.png")
        page.screenshot(path=str(shots[-1]), full_page=True)

        worst = page.locator("#events tbody tr").first.locator("a").first.get_attribute("href")
        page.goto(base_url + "/?status=all&min_severity=2")
        href = page.locator("#events tbody tr a").first.get_attribute("href") or worst
        page.goto(base_url + href)
        wait_for_chart(page, "chart-series")
        wait_for_chart(page, "chart-shares")
        shots.append(out / "dashboard-event.png")
        page.screenshot(path=str(shots[-1]), full_page=True)

        page.goto(base_url + "/alarm-rate")
        wait_for_chart(page, "chart-alarm-rate")
        shots.append(out / "dashboard-alarm-rate.png")
        page.screenshot(path=str(shots[-1]), full_page=True)

        page.goto(base_url + "/feedback")
        shots.append(out / "dashboard-feedback.png")
        page.screenshot(path=str(shots[-1]), full_page=True)
    return shots


def main() -> int:
    """Seed a temporary state folder, serve the dashboard, screenshot it."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "img"), help="output folder")
    ap.add_argument("--quick", action="store_true", help="tiny data (seconds, not minutes)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary state folder")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} not found: run scripts/ensure_chromium.sh", file=sys.stderr)
        return 2
    from ae_anomaly.environment import apply_quiet_defaults

    home = Path(tempfile.mkdtemp(prefix="ae-anomaly-shots-"))
    os.environ["AE_ANOMALY_HOME"] = str(home)
    apply_quiet_defaults()
    try:
        print(f"seeding {home} with a real training + scoring run ...", flush=True)
        config = seed_database(home, QUICK_OVERRIDES if args.quick else DEMO_OVERRIDES,
                               second_alpha=0.03 if args.quick else 0.004)
        with running_dashboard(config, home) as url:
            for path in take_screenshots(url, Path(args.out)):
                print(f"wrote {path}")
    finally:
        if args.keep:
            print(f"state folder kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
