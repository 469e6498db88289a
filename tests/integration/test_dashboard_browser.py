"""The dashboard end to end in real headless Chromium, after a real training + scoring run.

A tiny detector is trained, registered in an MLflow SQLite store and scored through the
pipeline functions in a temporary state folder; ``ae-anomaly dashboard`` serves the result
from a subprocess; Debian's Chromium, driven by Playwright, loads the pages, checks the
events table and the charts, and clicks "False positive". The security checks run against
the same real server: a cross-site form post, a foreign Host header, the headers, labels
with HTML in them, and no Content-Security-Policy violation on any page.

Without /usr/bin/chromium the tests skip (scripts/ensure_chromium.sh installs it); under
CI=true they fail instead, so CI cannot pass without having run them.
"""

from __future__ import annotations

import csv
import http.client
import importlib.util
import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from sqlalchemy import MetaData, Table, select

from ae_anomaly.sinks import EventRecord, SqlSink

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


MLFLOW_UI = "http://mlflow.test:5000"


@pytest.fixture(scope="module")
def server(seeded):
    home, config, _, _ = seeded
    previous = os.environ.get("AE_ANOMALY_DASHBOARD_MLFLOW_URL")
    os.environ["AE_ANOMALY_DASHBOARD_MLFLOW_URL"] = MLFLOW_UI  # the subprocess inherits it
    try:
        with shots.running_dashboard(config, home) as base_url:
            yield base_url
    finally:
        if previous is None:
            os.environ.pop("AE_ANOMALY_DASHBOARD_MLFLOW_URL", None)
        else:
            os.environ["AE_ANOMALY_DASHBOARD_MLFLOW_URL"] = previous


@pytest.fixture(scope="module")
def browser_context(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, shots.chromium_context(p) as ctx:
        yield ctx


@pytest.fixture
def page(browser_context):
    pg = browser_context.new_page()
    pg.set_default_timeout(30_000)
    problems: list[str] = []  # page errors and console errors (a CSP violation is one)
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.on("console", lambda msg: problems.append(f"console: {msg.text} {msg.location}")
          if msg.type == "error" and "favicon" not in str(msg.location) else None)
    pg.problems = problems
    yield pg
    pg.close()


def _raw_get(base_url: str, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    """A GET with exactly these headers (a browser will not send a foreign Host)."""
    conn = http.client.HTTPConnection(urlsplit(base_url).netloc, timeout=10)
    conn.putrequest("GET", path, skip_host=True)
    for key, value in headers.items():
        conn.putheader(key, value)
    conn.endheaders()
    resp = conn.getresponse()
    resp.body = resp.read()
    conn.close()
    return resp


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
    assert page.problems == []  # the charts drew under the CSP, without errors
    # Filtering by entity keeps only that entity's rows.
    entity = events["entity"].iloc[0]
    page.select_option("select[name=entity]", entity)
    page.select_option("select[name=status]", "all")
    page.click("#filters button[type=submit]")
    page.wait_for_load_state()
    cells = page.locator("#events tbody tr td:nth-child(2)").all_inner_texts()
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
    assert page.problems == []


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
    assert changed.locator("td.status").inner_text().split() == ["resolved", "false", "positive"]
    assert changed.get_by_role("button", name="Reopen").count() == 1
    # Gone from the open events, listed under resolved.
    page.goto(server + "/")
    assert page.locator(f"tr[data-event-id='{event_id}']").count() == 0
    page.goto(server + "/?status=resolved")
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
    assert "resolved (false positive)" in page.inner_text("#feedback-history")
    resp = page.request.get(server + "/feedback.csv")
    exported = {r["event_id"]: r for r in csv.DictReader(io.StringIO(resp.text()))}
    assert exported[event_id]["status"] == "resolved"
    assert exported[event_id]["verdict"] == "false_positive"


def test_alarm_rate_page_draws_rate_per_model_version_against_budget(page, server):
    page.goto(server + "/alarm-rate")
    assert shots.wait_for_chart(page, "chart-alarm-rate") >= 1
    has_budget = page.evaluate(
        "document.getElementById('chart-alarm-rate').layout.shapes.length")
    assert has_budget == 1
    assert "Budget:" in page.inner_text("main")
    assert page.locator("#alarm-rate tbody tr").count() >= 1


def test_pages_draw_under_the_csp_without_errors(page, server):
    for path, chart in (("/?status=all", "chart-hourly"), ("/alarm-rate", "chart-alarm-rate"),
                        ("/feedback", None)):
        resp = page.goto(server + path)
        assert resp.status == 200
        headers = resp.headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        if chart:
            shots.wait_for_chart(page, chart)
    assert page.problems == []


def test_cross_site_form_post_is_refused(page, server, seeded):
    _, _, url, table = seeded
    store = SqlSink(url, table)
    event_id = store.read()["event_id"].iloc[0]
    fb = Table("anomaly_feedback", MetaData(), autoload_with=store.engine)

    def feedback_rows() -> int:
        with store.engine.connect() as conn:
            return len(conn.execute(select(fb.c.kind).where(fb.c.event_id == event_id)).all())

    before = feedback_rows()
    page.goto(server + "/")  # the operator has the dashboard open: cookie and token exist
    token = page.get_attribute("meta[name=csrf-token]", "content")
    # A page on another site posts a form to the dashboard, even with a valid token.
    attacker = "http://attacker.test/"
    page.route(attacker, lambda route: route.fulfill(content_type="text/html", body=f"""
        <form method="post" action="{server}/events/{event_id}/feedback">
          <input type="hidden" name="kind" value="false_positive">
          <input type="hidden" name="csrf_token" value="{token}">
          <button type="submit" id="go">win a prize</button></form>"""))
    page.goto(attacker)
    with page.expect_navigation():
        page.click("#go")
    assert "403" in page.inner_text("h1")
    assert feedback_rows() == before  # nothing added


def test_foreign_host_header_is_refused_by_the_real_server(server):
    host = urlsplit(server).netloc
    resp = _raw_get(server, "/", {"Host": "rebound.attacker.example"})
    assert resp.status == 400 and b"anomaly_events" not in resp.body
    assert _raw_get(server, "/feedback.csv", {"Host": "rebound.attacker.example"}).status == 400
    ok = _raw_get(server, "/healthz", {"Host": host})
    assert ok.status == 200 and ok.getheader("x-frame-options") == "DENY"


def test_html_in_labels_renders_as_text_not_as_links(page, server, seeded):
    _, _, url, table = seeded
    sink = SqlSink(url, table)
    first = sink.read()["start_ts"].min() - timedelta(days=1)  # oldest: last on every list
    evil = '<a href="https://evil.example/">{}</a>'
    sink.write([EventRecord(
        event_id="evil-labels", entity=evil.format("srv"), start_ts=first,
        end_ts=first + timedelta(minutes=5), peak_ts=first, peak_score=1.0, threshold=2.0,
        severity=0.5, p_value=0.5, n_points=1,
        top_channels={evil.format("cpu"): 0.7, "mem": 0.3}, model_name=evil.format("m"),
        model_version="9", run_id="r9", scored_at=first)])
    page.goto(server + "/events/evil-labels")
    assert shots.wait_for_chart(page, "chart-shares") == 1
    chart = page.locator("#chart-shares")
    assert chart.locator("a").count() == 0  # Plotly would draw <a> as an SVG link
    assert evil.format("cpu") in chart.inner_text()  # shown as text
    page.goto(server + "/alarm-rate")
    shots.wait_for_chart(page, "chart-alarm-rate")
    assert page.locator("#chart-alarm-rate a").count() == 0
    assert evil.format("m") in page.locator("#chart-alarm-rate").inner_text()
    page.goto(server + "/?" + urlencode({"entity": evil.format("srv")}))
    shots.wait_for_chart(page, "chart-hourly")
    assert page.locator("#chart-hourly a").count() == 0
    assert page.locator("a[href='https://evil.example/']").count() == 0
    assert page.problems == []


def test_walk_relative_range_event_mlflow_links_acknowledge_alarm_rate(page, server, seeded):
    """The on-call walk: last 7 days -> an event -> its MLflow links -> acknowledge -> the
    alarm-rate page leaves it out of the false alarms. The range counts back from the
    wall clock, so two events are written at recent times (the scored data is from January)."""
    _, _, url, table = seeded
    sink = SqlSink(url, table)
    real = sink.read().sort_values("severity").iloc[-1]
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)

    def copy(event_id: str, start: datetime) -> EventRecord:
        return EventRecord(
            event_id=event_id, entity=real.entity, start_ts=start,
            end_ts=start + timedelta(minutes=5), peak_ts=start, peak_score=real.peak_score,
            threshold=real.threshold, severity=real.severity, p_value=real.p_value,
            n_points=3, top_channels=real.top_channels, model_name=real.model_name,
            model_version=real.model_version, run_id=real.run_id, scored_at=now)

    sink.write([copy("walk-recent", now - timedelta(days=2)),
                copy("walk-older", now - timedelta(days=10))])
    page.goto(server + "/?status=all")
    page.select_option("select[name=range]", "7d")
    assert page.locator("input[name=start]").is_disabled()  # from/to give way to the range
    page.click("#filters button[type=submit]")
    page.wait_for_url("**range=7d**")
    ids = page.locator("#events tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.eventId)")
    assert ids == ["walk-recent"]
    assert "Last 7 d" in page.inner_text("#range-note")
    page.click("tr[data-event-id='walk-recent'] a")
    page.wait_for_url("**/events/walk-recent")
    assert page.get_attribute("#mlflow-run", "href") == f"{MLFLOW_UI}/#/runs/{real.run_id}"
    assert page.get_attribute("#mlflow-model", "href") == (
        f"{MLFLOW_UI}/#/models/{real.model_name}/versions/{real.model_version}")
    assert page.inner_text("#event-status").strip() == "open"
    page.get_by_role("button", name="Acknowledge").click()
    page.wait_for_load_state()
    assert page.inner_text("#event-status").strip() == "acknowledged"
    page.goto(server + "/alarm-rate")
    day = (now - timedelta(days=2)).strftime("%Y-%m-%d")
    row = page.locator(f"#alarm-rate tr[data-model='{real.model_name}:{real.model_version}']"
                       f"[data-day='{day}']")
    assert row.locator("td.true-anomalies").inner_text() == "1"
    assert row.locator("td.false-alarms").inner_text() == "0"
    assert "left out" in page.inner_text(".notes")
    assert page.problems == []


def test_events_table_fits_a_1366_px_laptop_screen(page, server, tmp_path):
    page.set_viewport_size({"width": 1366, "height": 768})
    page.goto(server + "/?status=all")
    shots.wait_for_chart(page, "chart-hourly")
    widths = page.evaluate("""() => ({doc: document.documentElement.scrollWidth,
        table: document.getElementById('events').scrollWidth,
        right: document.getElementById('events').getBoundingClientRect().right})""")
    page.screenshot(path=str(tmp_path / "events-1366.png"))
    assert widths["doc"] <= 1366 and widths["table"] <= 1366 and widths["right"] <= 1366, widths


def test_auto_refresh_reloads_the_page_and_is_kept_in_the_url(page, server):
    page.goto(server + "/?status=all&refresh=5")  # the select offers 30 s and up; 5 s is
    assert page.input_value("#auto-refresh") == "5"  # the shortest the URL accepts
    assert "refresh=5" in page.get_attribute("header nav a[href^='/alarm-rate']", "href")
    page.evaluate("window.__before_reload = true")
    page.wait_for_function("() => window.__before_reload === undefined", timeout=60_000)
    assert "refresh=5" in page.url
    # Choosing "off" in the header drops it from the URL and stops reloading.
    page.select_option("#auto-refresh", "")
    page.wait_for_url(lambda u: "refresh" not in u)
    page.select_option("#auto-refresh", "60")
    page.wait_for_url("**refresh=60**")
    assert page.problems == []


def test_alerts_page_adds_a_silence_through_the_form_and_ends_it(page, server, seeded):
    """Header nav -> Alerts -> fill in the silence form -> it is listed as active (and
    stored through AlertStore) -> End now moves it to the past ones."""
    from ae_anomaly.alerts.store import AlertStore

    _, _, url, table = seeded
    page.goto(server + "/")
    page.click("header nav a[href='/alerts']")
    page.wait_for_url(server + "/alerts")
    assert page.locator("header nav a.active").inner_text() == "Alerts"
    assert page.input_value("#silence-form input[name=start]")  # defaults to now
    page.fill("#silence-form input[name=entity]", "browser-*")
    page.fill("#silence-form input[name=duration]", "3h")
    page.fill("#silence-form input[name=comment]", "kernel upgrade")
    page.click("#silence-form button[type=submit]")
    page.wait_for_url("**/alerts#silence-*")
    row = page.locator("#silences-active tbody tr", has_text="browser-*")
    assert row.count() == 1
    assert row.locator("td.why").inner_text() == "kernel upgrade"
    assert row.locator("td.who").inner_text() == "anonymous"  # no login on this server
    active = [s for s in AlertStore(url, table).silences() if s.entity == "browser-*"]
    assert len(active) == 1 and active[0].comment == "kernel upgrade"
    row.get_by_role("button", name="End now").click()
    page.wait_for_url("**/alerts#silence-*")
    assert page.locator("#silences-active tbody tr", has_text="browser-*").count() == 0
    page.click("details summary")
    assert page.locator("#silences-past tbody tr", has_text="browser-*").count() == 1
    assert page.problems == []
