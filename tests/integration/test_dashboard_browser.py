"""The dashboard end to end in real headless Chromium, after a real training + scoring run.

A tiny detector is trained, registered in an MLflow SQLite store and scored through the
pipeline functions in a temporary state folder; ``ae-anomaly dashboard`` serves the result
from a subprocess; Debian's Chromium, driven by Playwright, loads the pages, checks the
events table and the charts, and clicks "False positive".

Without /usr/bin/chromium the tests skip (scripts/ensure_chromium.sh installs it); under
CI=true they fail instead, so CI cannot pass without having run them.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
from pathlib import Path

import pytest
from sqlalchemy import MetaData, Table, select

from ae_anomaly.sinks import SqlSink

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _load_helpers():
    spec = importlib.util.spec_from_file_location("ae_screenshots",
                                                  ROOT / "scripts" / "screenshots.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


shots = _load_helpers()


def _require_browser() -> None:
    why = None
    if not Path(shots.CHROMIUM).exists():
        why = f"{shots.CHROMIUM} not found (run scripts/ensure_chromium.sh)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = "the playwright package is not installed (pip install -e '.[dev]')"
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser test cannot run under CI: {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """(state folder, dashboard config, sink url, table) after one real scoring run."""
    _require_browser()
    home = tmp_path_factory.mktemp("dashboard-home")
    config = shots.seed_database(home, shots.QUICK_OVERRIDES)
    url, table = f"sqlite:///{home}/anomalies.db", "anomaly_events"
    assert len(SqlSink(url, table).read()) > 0, "the scoring run found no events"
    return home, config, url, table


@pytest.fixture(scope="module")
def server(seeded):
    home, config, _, _ = seeded
    with shots.running_dashboard(config, home) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def browser_context(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, shots.chromium_context(p) as ctx:
        yield ctx


@pytest.fixture
def page(browser_context):
    pg = browser_context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    pg.close()


def test_events_table_lists_the_scored_events_newest_first(page, server, seeded):
    _, _, url, table = seeded
    events = SqlSink(url, table).read()
    page.goto(server + "/?status=all")
    rows = page.locator("#events tbody tr")
    assert rows.count() == min(len(events), 100)
    ids = [rows.nth(i).get_attribute("data-event-id") for i in range(rows.count())]
    assert set(ids) <= set(events["event_id"])
    starts = [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())]
    assert starts == sorted(starts, reverse=True)
    assert shots.wait_for_chart(page, "chart-hourly") == 1  # counts per entity per hour
    # Filtering by entity keeps only that entity's rows.
    entity = events["entity"].iloc[0]
    page.select_option("select[name=entity]", entity)
    page.select_option("select[name=status]", "all")
    page.click("#filters button[type=submit]")
    page.wait_for_load_state()
    cells = page.locator("#events tbody tr td:nth-child(3)").all_inner_texts()
    assert cells and set(cells) == {entity}
    assert len(cells) == int((events["entity"] == entity).sum())


def test_event_page_draws_series_scores_and_channel_shares(page, server, seeded):
    _, _, url, table = seeded
    worst = SqlSink(url, table).read().sort_values("severity").iloc[-1]
    page.goto(server + f"/events/{worst.event_id}")
    n_traces = shots.wait_for_chart(page, "chart-series")
    n_channels = min(4, len(worst.top_channels))
    assert n_traces == n_channels + 2  # raw channels, the score, the threshold
    shapes = page.evaluate("document.getElementById('chart-series').layout.shapes.length")
    assert shapes == n_channels + 1  # the event shaded on every row
    threshold = page.evaluate(
        "document.getElementById('chart-series').data.find(t => t.name === 'threshold').y[0]")
    assert threshold == pytest.approx(worst.threshold, rel=1e-6)
    assert shots.wait_for_chart(page, "chart-shares") == 1
    bars = page.evaluate("document.getElementById('chart-shares').data[0].y")
    assert set(bars) == set(worst.top_channels)
    text = page.inner_text("main")
    assert "recomputed" in text and f"v{worst.model_version}" in text


def test_false_positive_click_changes_the_row_and_is_stored_apart(page, server, seeded):
    _, _, url, table = seeded
    before = SqlSink(url, table).read()
    page.goto(server + "/?status=all")
    row = page.locator("#events tbody tr", has=page.get_by_role("button", name="False positive"))
    row = row.first
    event_id = row.get_attribute("data-event-id")
    assert row.locator("td.status").inner_text() == "open"
    row.get_by_role("button", name="False positive").click()
    page.wait_for_url(server + "/?status=all")
    changed = page.locator(f"#events tbody tr[data-event-id='{event_id}']")
    assert changed.locator("td.status").inner_text() == "false positive"
    assert changed.get_by_role("button", name="Reopen").count() == 1
    # Gone from the open events, listed under false positives.
    page.goto(server + "/")
    assert page.locator(f"tr[data-event-id='{event_id}']").count() == 0
    page.goto(server + "/?status=false_positive")
    assert page.locator(f"tr[data-event-id='{event_id}']").count() == 1
    # Stored in the feedback table; the event rows are exactly as scored.
    store = SqlSink(url, table)
    fb = Table("anomaly_feedback", MetaData(), autoload_with=store.engine)
    with store.engine.connect() as conn:
        kinds = conn.execute(select(fb.c.kind).where(fb.c.event_id == event_id)).scalars().all()
    assert kinds == ["false_positive"]
    assert store.read().equals(before)
    # Counted on the feedback page and exported as CSV.
    page.goto(server + "/feedback")
    assert "false_positive" in page.inner_text("#feedback-history")
    resp = page.request.get(server + "/feedback.csv")
    exported = {r["event_id"]: r for r in csv.DictReader(io.StringIO(resp.text()))}
    assert exported[event_id]["status"] == "false_positive"


def test_alarm_rate_page_draws_rate_per_model_version_against_budget(page, server):
    page.goto(server + "/alarm-rate")
    assert shots.wait_for_chart(page, "chart-alarm-rate") >= 1
    has_budget = page.evaluate(
        "document.getElementById('chart-alarm-rate').layout.shapes.length")
    assert has_budget == 1
    assert "Budget:" in page.inner_text("main")
    assert page.locator("#alarm-rate tbody tr").count() >= 1
