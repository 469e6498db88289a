"""Grafana provisioning and the docker/ stack, checked without a Docker engine.

- Every SQL query of the "ae-anomaly events" dashboard (panels and template variables) runs
  against a real PostgreSQL database whose anomaly table SqlSink created, with Grafana's
  macros and variables expanded the way Grafana expands them for PostgreSQL. Needs
  AE_ANOMALY_TEST_PG_URL (scripts/run_tests.sh starts a server); skipped without it, a
  failure under CI=true.
- The compose file, .env.example, provisioning files and Dockerfile agree with each other
  and with the project (CLI flags, config file, torch pin); ``docker compose config`` runs
  when a compose-capable docker client is installed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import make_url, text

from ae_anomaly.cli import build_parser
from ae_anomaly.config import load_config
from ae_anomaly.sinks import EventRecord, SqlSink

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "ae-anomaly-events.json"
DATASOURCE = DOCKER / "grafana" / "provisioning" / "datasources" / "ae-anomaly.yaml"
PROVIDER = DOCKER / "grafana" / "provisioning" / "dashboards" / "ae-anomaly.yaml"
COMPOSE = DOCKER / "docker-compose.yml"
ENV_EXAMPLE = DOCKER / ".env.example"
T0 = datetime(2026, 1, 6)


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _queries(dash: dict) -> list[tuple[str, str, str]]:
    """(where, format, sql) of every panel target."""
    return [(p["title"], t.get("format", "time_series"), t["rawSql"])
            for p in dash["panels"] for t in p.get("targets", [])]


# --------------------------------------------------------------------- Grafana's expansion
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(interval: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd])", interval.strip().strip("'"))
    assert m, f"interval {interval!r} is not one Grafana accepts here"
    return int(m.group(1)) * _UNITS[m.group(2)]


def expand(sql: str, start: datetime, end: datetime, variables: dict[str, str]) -> str:
    """Expand the PostgreSQL data source's macros and the dashboard variables.

    Mirrors Grafana's PostgreSQL macro engine for the macros this dashboard may use;
    anything else fails the test, so a new macro needs its expansion here first.
    """
    iso = "%Y-%m-%dT%H:%M:%SZ"

    def macro(m: re.Match) -> str:
        name = m.group(1)
        args = [a.strip() for a in m.group(2).split(",")] if m.group(2).strip() else []
        if name == "timeFilter":
            return f"{args[0]} BETWEEN '{start:{iso}}' AND '{end:{iso}}'"
        if name in ("timeGroup", "timeGroupAlias"):  # a third (fill) argument is applied
            secs = _seconds(args[1])                 # by Grafana after the query
            expr = f"floor(extract(epoch from {args[0]})/{secs})*{secs}"
            return expr + (' AS "time"' if name == "timeGroupAlias" else "")
        if name == "timeFrom":
            return f"'{start:{iso}}'"
        if name == "timeTo":
            return f"'{end:{iso}}'"
        raise AssertionError(f"macro $__{name} has no expansion in this test")

    sql = re.sub(r"\$__(\w+)\(([^()]*)\)", macro, sql)

    def var(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in variables, f"variable ${name} is not defined by the dashboard"
        return variables[name]

    sql = re.sub(r"\$\{(\w+)\}|\$(\w+)", var, sql)
    assert "$" not in sql, sql
    return sql


def _quoted(values: list[str]) -> str:
    return ",".join("'" + v.replace("'", "''") + "'" for v in values)


# --------------------------------------------------------------------- the database
def _event(i: int, entity: str, version: str, hours: float, severity: float) -> EventRecord:
    start = T0 + timedelta(hours=hours)
    return EventRecord(
        event_id=f"g{i:03d}", entity=entity, start_ts=start, end_ts=start + timedelta(minutes=3),
        peak_ts=start + timedelta(minutes=1), peak_score=severity * 1.5, threshold=1.5,
        severity=severity, p_value=0.002, n_points=3, top_channels={"cpu_util": 0.8, "io": 0.2},
        model_name="ae-anomaly", model_version=version, run_id="run" + version,
        scored_at=T0 + timedelta(days=2))


EVENTS = [
    _event(0, "server-01", "1", 0.5, 1.1),
    _event(1, "server-01", "1", 0.7, 3.5),
    _event(2, "server-02", "1", 5.2, 1.7),
    _event(3, "server-02", "2", 25.0, 1.2),
    _event(4, "server-03", "2", 25.1, 6.5),
    _event(5, "server-01", "2", 30.0, 2.2),
]
START, END = T0 - timedelta(days=1), T0 + timedelta(days=3)


@pytest.fixture
def pg(new_pg_db):
    """A connection to a fresh database holding the anomaly table written by SqlSink.

    ``new_pg_db`` (tests/integration/conftest.py) skips without AE_ANOMALY_TEST_PG_URL,
    and fails under CI=true.
    """
    sink = SqlSink(new_pg_db(), "anomaly_events")
    sink.write(EVENTS)
    try:
        with sink.engine.connect() as conn:
            yield conn
    finally:
        sink.engine.dispose()


def _run(conn, sql: str, variables: dict[str, str], start=START, end=END) -> list[dict]:
    return [dict(r) for r in conn.execute(text(expand(sql, start, end, variables))).mappings()]


ALL = {"entity": "'__all__'", "model": "'__all__'", "min_severity": "0"}


def test_variable_queries_list_entities_and_model_versions(pg):
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    entities = [r[0] for r in pg.execute(text(variables["entity"]["query"]))]
    models = [r[0] for r in pg.execute(text(variables["model"]["query"]))]
    assert entities == ["server-01", "server-02", "server-03"]
    assert models == ["ae-anomaly v1", "ae-anomaly v2"]


def test_every_panel_query_runs_with_all_selected(pg):
    for title, fmt, sql in _queries(_dashboard()):
        rows = _run(pg, sql, ALL)
        assert rows, f"{title}: no rows"
        if fmt == "time_series":
            assert "time" in rows[0], f"{title}: a time series needs a time column"


def test_panel_results_match_the_table(pg):
    by_title = {title: sql for title, _, sql in _queries(_dashboard())}
    assert _run(pg, by_title["Events in range"], ALL) == [{"events": len(EVENTS)}]
    assert _run(pg, by_title["Entities alarming"], ALL) == [{"entities": 3}]
    assert _run(pg, by_title["Max severity"], ALL)[0]["max_severity"] == pytest.approx(6.5)
    series = _run(pg, by_title["Events over time (per hour, by model version)"], ALL)
    assert sum(r["events"] for r in series) == len(EVENTS)
    assert all(float(r["time"]) % 3600 == 0 for r in series)
    assert {r["metric"] for r in series} == {"ae-anomaly v1", "ae-anomaly v2"}
    top = _run(pg, by_title["Top entities"], ALL)
    assert [(r["entity"], r["events"]) for r in top] == [
        ("server-01", 3), ("server-02", 2), ("server-03", 1)]
    table = _run(pg, by_title["Events by severity"], ALL)
    assert [r["severity"] for r in table] == sorted((e.severity for e in EVENTS), reverse=True)
    assert table[0]["level"] == "high" and table[-1]["level"] == "low"
    assert "cpu_util" in table[0]["top_channels"]


def test_panel_queries_honour_variables_and_time_range(pg):
    by_title = {title: sql for title, _, sql in _queries(_dashboard())}
    count = by_title["Events in range"]
    one = {**ALL, "entity": _quoted(["server-01"])}
    assert _run(pg, count, one) == [{"events": 3}]
    two = {**ALL, "entity": _quoted(["server-01", "server-02"]),
           "model": _quoted(["ae-anomaly v2"])}
    assert _run(pg, count, two) == [{"events": 2}]
    assert _run(pg, count, {**ALL, "min_severity": "2"}) == [{"events": 3}]
    day2 = (T0 + timedelta(days=1), T0 + timedelta(days=2))
    assert _run(pg, count, ALL, *day2) == [{"events": 3}]
    # An empty range still runs everywhere (Grafana shows "no data", not an error).
    empty = (T0 - timedelta(days=30), T0 - timedelta(days=29))
    for _, _, sql in _queries(_dashboard()):
        _run(pg, sql, ALL, *empty)


# --------------------------------------------------------------------- static checks
def test_dashboard_json_is_provisionable():
    dash = _dashboard()
    ds = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]
    assert dash["title"] == "ae-anomaly events" and dash["uid"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    kinds = {p["type"] for p in dash["panels"]}
    assert {"timeseries", "bargauge", "table"} <= kinds  # over time, top entities, severity
    for p in dash["panels"]:
        for t in [p, *p["targets"]]:
            assert t["datasource"] == {"type": ds["type"], "uid": ds["uid"]}, p["title"]
    variables = {v["name"] for v in dash["templating"]["list"]}
    for title, _, sql in _queries(dash):
        used = set(re.findall(r"\$\{?(\w+)", re.sub(r"\$__\w+", "", sql)))
        assert used <= variables, f"{title}: undefined {used - variables}"


def test_datasource_takes_its_password_from_the_environment():
    ds = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]
    assert ds["type"] == "grafana-postgresql-datasource"
    assert ds["jsonData"]["database"] == "anomalies" and ds["user"] == "grafana"
    assert re.fullmatch(r"\$\{?GRAFANA_DB_PASSWORD\}?", ds["secureJsonData"]["password"])
    provider = yaml.safe_load(PROVIDER.read_text())["providers"][0]
    compose = yaml.safe_load(COMPOSE.read_text())
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["services"]["grafana"]
                  ["volumes"] if v.startswith("./"))
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    env = compose["services"]["grafana"]["environment"]
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def _compose_vars(text_: str) -> tuple[set[str], set[str]]:
    """(every ${VAR} used, the ones required with :?)."""
    used = set(re.findall(r"\$\{(\w+)", text_))
    required = set(re.findall(r"\$\{(\w+):\?", text_))
    return used, required


def test_compose_credentials_come_from_env_example_only():
    raw = COMPOSE.read_text()
    used, required = _compose_vars(raw)
    example = dict(line.split("=", 1) for line in
                   (x.strip().lstrip("# ") for x in ENV_EXAMPLE.read_text().splitlines())
                   if re.fullmatch(r"[A-Z_]+=.*", line))
    assert used <= set(example), f"not in .env.example: {used - set(example)}"
    secrets = {k for k in example if "PASSWORD" in k}
    assert secrets and all(example[k] == "" for k in secrets), "example passwords must be empty"
    assert secrets <= required, "every password must be required (${VAR:?...})"
    compose = yaml.safe_load(raw)
    for name, svc in compose["services"].items():
        env = svc.get("environment", {})
        for key, value in env.items():
            if "PASSWORD" in key:
                assert str(value).startswith("${"), f"{name}.{key} is hard-coded"
        for word in ("password", "secret"):
            assert word not in " ".join(map(str, svc.get("command", []))).lower()


def test_compose_services_run_real_commands_and_config():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"postgres", "mlflow", "prefect", "worker", "dashboard", "grafana"} <= set(services)
    ae = [n for n, s in services.items() if s.get("build")]
    assert {s["build"]["dockerfile"] for n, s in services.items() if n in ae} == {
        "docker/Dockerfile"}
    parser = build_parser()
    for name in ae:
        cmd = services[name]["command"]
        if cmd[0] == "ae-anomaly":
            args = parser.parse_args(cmd[1:])  # the flags exist
            cfg_path = args.config.replace("/app/", str(ROOT) + "/")
            cfg = load_config(cfg_path)
            assert cfg.sink.url.startswith("postgresql+psycopg://")
            assert make_url(cfg.sink.url).password is None, "no password in the config"
    assert services["worker"]["command"][1] == "serve"
    assert services["dashboard"]["command"][1] == "dashboard"
    for svc in services.values():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{port} is open beyond this host"


def _service_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname, parts.port


def test_compose_prometheus_and_alertmanager_resolve_inside_the_stack():
    """Grafana's Prometheus data source, Prometheus's scrape target and the pipeline's
    alerts.alertmanager_url name services of the stack, on the ports those listen on; the
    mounted configurations exist and pass promtool / amtool where they are installed."""
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"prometheus", "alertmanager"} <= set(services)

    def mounts(name: str) -> dict[str, str]:
        return {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}

    prom_yml = DOCKER / mounts("prometheus")["/etc/prometheus/prometheus.yml"]
    am_yml = DOCKER / mounts("alertmanager")["/etc/alertmanager/alertmanager.yml"]
    assert prom_yml.is_file() and am_yml.is_file()
    cmd = " ".join(services["prometheus"]["command"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in cmd
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in " ".join(
        services["alertmanager"]["command"])
    for name, port in (("prometheus", 9090), ("alertmanager", 9093)):
        assert any(str(p).endswith(f":{port}") for p in services[name]["ports"])
        assert set(compose["volumes"]) >= {f"{name}-data"}
    # Grafana -> prometheus:9090
    prom_ds = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
    assert _service_port(yaml.safe_load(prom_ds.read_text())["datasources"][0]["url"]) == (
        "prometheus", 9090)
    # Prometheus -> dashboard:8050/metrics, and the dashboard trusts that Host header.
    targets = [t for job in yaml.safe_load(prom_yml.read_text())["scrape_configs"]
               for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["dashboard:8050"]
    args = build_parser().parse_args(services["dashboard"]["command"][1:])
    assert args.port == 8050 and "dashboard" in args.trusted_host
    # The pipeline -> alertmanager:9093
    stack = load_config(str(DOCKER / "config" / "stack.yaml"))
    assert _service_port(stack.alerts.alertmanager_url) == ("alertmanager", 9093)
    for tool, check in (("promtool", ["check", "config", str(prom_yml)]),
                        ("amtool", ["check-config", str(am_yml)])):
        if shutil.which(tool):
            res = subprocess.run([tool, *check], capture_output=True, text=True)
            assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_installs_like_the_makefile():
    docker = (DOCKER / "Dockerfile").read_text()
    pins = re.findall(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert re.search(r"ARG TORCH_VERSION=([\d.]+)", docker).group(1) == pins[0]
    steps = [line for line in docker.splitlines() if "pip install" in line]
    assert "--upgrade pip" in steps[0] and "torch==" in steps[1] and "-e ." in steps[2]
    make = (ROOT / "Makefile").read_text()
    assert make.index("torch==") < make.index('install -q -e ".[dev]"')
    user = re.findall(r"^USER (\S+)", docker, re.M)
    assert user and user[-1] not in ("root", "0")


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_parses(tmp_path):
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("no compose-capable docker client here (docker compose plugin or "
                    "docker-compose): the compose file was only checked as YAML")
    env = tmp_path / "test.env"
    names = re.findall(r"^#?\s*([A-Z_]+)=", ENV_EXAMPLE.read_text(), re.M)
    env.write_text("".join(f"{n}=test-{n.lower()}\n" for n in names if "PORT" not in n
                           and "TAG" not in n))
    out = subprocess.run([*cmd, "--env-file", str(env), "-f", str(COMPOSE), "config"],
                         capture_output=True, text=True, cwd=DOCKER)
    assert out.returncode == 0, shlex.join(cmd) + ": " + out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == (
        "test-postgres_password")
