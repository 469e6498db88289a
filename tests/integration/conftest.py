"""Fixtures for the operations tests: real PostgreSQL, real MLflow stores, tiny detectors.

PostgreSQL comes from ``AE_ANOMALY_TEST_PG_URL`` (``scripts/run_tests.sh`` / ``make test``
start a throwaway server and set it). Without it the PostgreSQL tests skip with a reason
saying how to enable them, and with ``CI=true`` such a skip is reported as a failure.
Tests that stop and start a server of their own need the binaries
(``AE_ANOMALY_TEST_PG_BIN``, or found under /usr/lib/postgresql).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sqlalchemy import create_engine, text

PG_SKIP = "needs PostgreSQL"
PG_HINT = ("run `make test` (scripts/run_tests.sh starts a throwaway server from the "
           "PostgreSQL binaries, installing them with apt-get when run as root) or set "
           "AE_ANOMALY_TEST_PG_URL=postgresql+psycopg://USER@HOST:PORT/DB")
REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
SUPPORT = REPO / "tests" / "support"  # test-only modules a subprocess imports (faults.py)

# The tiny pipeline every operations test uses: 2 servers x 4 metrics, window 16.
TINY = {
    "data": {"synthetic": {"n_entities": 2, "n_metrics": 4, "train_days": 1,
                           "score_days": 0.5, "anomalies_per_entity": 4, "seed": 3}},
    "window": {"length": 16, "train_stride": 2},
    "model": {"name": "conv_ae", "channels": [8], "latent_dim": 4},
    "training": {"epochs": 2, "batch_size": 128, "patience": 2, "progress": False,
                 "seed": 0},
    "calibration": {"method": "conformal", "alpha": 0.01},
    "events": {"merge_gap": 3},
    "promotion": {"min_calibration": 100, "max_alert_rate": 0.5, "max_score_shift": 50},
}


# ----------------------------------------------------------------------------- CI hook
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    rep = outcome.get_result()
    if (rep.skipped and os.environ.get("CI", "").lower() == "true"
            and PG_SKIP in str(rep.longrepr)):
        rep.outcome = "failed"
        rep.longrepr = (f"CI=true: a PostgreSQL test may not skip ({rep.longrepr[-1]})"
                        if isinstance(rep.longrepr, tuple) else str(rep.longrepr))


# ----------------------------------------------------------------------------- PostgreSQL
def _pg_admin_url() -> str:
    url = os.environ.get("AE_ANOMALY_TEST_PG_URL")
    if not url:
        pytest.skip(f"{PG_SKIP}: {PG_HINT}")
    return url


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The admin URL of the test PostgreSQL server (skips without one)."""
    url = _pg_admin_url()
    try:
        eng = create_engine(url)
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable server
        pytest.skip(f"{PG_SKIP}: AE_ANOMALY_TEST_PG_URL does not answer ({exc}); {PG_HINT}")
    return url


def _with_db(url: str, db: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{db}"


@pytest.fixture
def new_pg_db(pg_url: str):
    """Factory: a fresh database on the test server (dropped afterwards)."""
    made: list[str] = []
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")

    def make() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return _with_db(pg_url, name)

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The anomaly database: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/anomalies.db"
    return request.getfixturevalue("new_pg_db")()


def _find_pg_bin() -> str | None:
    env = os.environ.get("AE_ANOMALY_TEST_PG_BIN")
    if env and Path(env, "initdb").exists():
        return env
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists():
            return str(d)
    found = shutil.which("initdb")
    return str(Path(found).parent) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """A private PostgreSQL server that a test may stop and start (database down/up)."""

    def __init__(self, bin_dir: str, root: Path) -> None:
        self.bin = Path(bin_dir)
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        root.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            shutil.chown(root, "postgres")
        self._as_pg([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                     "--auth=trust", "-E", "UTF8", "--no-locale"])

    def _as_pg(self, cmd: list[str]) -> None:
        if os.getuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off")
        self._as_pg([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                     str(self.root / "server.log"), "-w", "-t", "60", "start", "-o", opts])

    def stop(self) -> None:
        self._as_pg([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                     "stop"])

    def running(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0


@pytest.fixture
def pg_server(tmp_path_factory: pytest.TempPathFactory):
    """Factory of private PostgreSQL servers (initdb'd, not started); stopped afterwards."""
    bin_dir = _find_pg_bin()
    if bin_dir is None:
        pytest.skip(f"{PG_SKIP} binaries (initdb, pg_ctl): set AE_ANOMALY_TEST_PG_BIN or "
                    f"{PG_HINT}")
    servers: list[PgServer] = []

    def make() -> PgServer:
        root = Path(f"/tmp/ae-pg-{uuid.uuid4().hex[:8]}")
        srv = PgServer(bin_dir, root)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        if srv.running():
            try:
                srv.stop()
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(srv.root, ignore_errors=True)


# ----------------------------------------------------------------------------- environment
@pytest.fixture(scope="session", autouse=True)
def _quiet_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Offline and quiet (tests/conftest.py sets the same when it is there). The Prefect
    test server is tests/conftest.py's ``prefect_harness``."""
    from ae_anomaly.environment import apply_quiet_defaults

    home = tmp_path_factory.mktemp("ae_home")
    os.environ.setdefault("AE_ANOMALY_HOME", str(home))
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    apply_quiet_defaults()


# ----------------------------------------------------------------------------- models
@dataclass
class Store:
    """An MLflow store in a temporary folder with a registered tiny detector."""

    root: Path
    tracking: dict[str, str]
    name: str
    version: str
    detector: Any
    data: Any  # SyntheticData of TINY

    def config(self, **sections: Any) -> dict[str, Any]:
        """A raw config: TINY + this store's tracking section + ``sections`` merged in."""
        raw = json.loads(json.dumps(TINY))
        raw["tracking"] = dict(self.tracking)
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        return raw


def train_and_register(root: Path, name: str = "ops-tiny", *, seed: int = 0,
                       n_metrics: int = 4, epochs: int = 2,
                       sections: dict[str, Any] | None = None) -> Store:
    """Train a tiny detector and register it through the pipeline (champion if first);
    ``sections`` are merged into the TINY config (e.g. a ``postprocess`` section)."""
    from ae_anomaly import pipeline
    from ae_anomaly.config import AppConfig
    from ae_anomaly.data.synthetic import generate_server_metrics
    from ae_anomaly.tracking import Tracker

    tracking = {"tracking_uri": f"sqlite:///{root}/mlflow.db",
                "artifact_location": str(root / "mlartifacts"),
                "experiment": "ops-tests", "registered_model": name}
    raw = json.loads(json.dumps(TINY))
    raw["tracking"] = tracking
    raw["training"]["seed"] = seed
    raw["training"]["epochs"] = epochs
    for key, value in (sections or {}).items():
        raw[key] = {**raw.get(key, {}), **value}
    cfg = AppConfig.model_validate(raw)
    data = generate_server_metrics(cfg.data.synthetic)
    frame = data.train
    if n_metrics != cfg.data.synthetic.n_metrics:
        keep = [c for c in frame.columns if c in ("timestamp", "entity")]
        keep += [c for c in frame.columns if c not in keep][:n_metrics]
        frame = frame[keep]
    tracker = Tracker(cfg.tracking)
    run_id = pipeline.start_run(cfg, tracker)
    det = pipeline.fit_detector(cfg, frame, tracker, run_id)
    reg = pipeline.log_and_register(cfg, det, frame, tracker, run_id)
    return Store(root, tracking, name, reg.model.version, det, data)


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory, _quiet_env: None) -> Store:
    """A session-wide MLflow store whose tiny detector is the champion. Do not move its
    aliases: promotion tests train their own store."""
    return train_and_register(tmp_path_factory.mktemp("mlflow"))


#: Post-processing that reaches both ways in time (centred smoothing) with per-channel
#: thresholds: the context the incremental scorer must keep is larger than one window.
SMOOTHED = {"postprocess": {"smooth": 5, "smooth_mode": "center"},
            "calibration": {"per_channel": True}}


@pytest.fixture(scope="session")
def smoothed_store(tmp_path_factory: pytest.TempPathFactory, _quiet_env: None) -> Store:
    """Like ``store``, with :data:`SMOOTHED` post-processing, in its own MLflow store."""
    return train_and_register(tmp_path_factory.mktemp("mlflow-smoothed"), "ops-smoothed",
                              sections=SMOOTHED)


# ----------------------------------------------------------------------------- data and runs
def slices(frame: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    """The frame cut in time into ``n`` consecutive drops (all entities in each)."""
    stamps = np.sort(frame["timestamp"].unique())
    return [frame[frame["timestamp"].isin(part)] for part in np.array_split(stamps, n)]


def drop(folder: Path, name: str, frame: pd.DataFrame, age: float = 60.0) -> Path:
    """Write a landing file atomically (temporary name, then rename), ``age`` seconds old."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp = folder / (name + ".tmp")
    if name.endswith(".parquet"):
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def folder_config(store: Store, root: Path, db_url: str, **sections: Any) -> dict[str, Any]:
    """A raw config scoring the landing folder ``root/landing`` into ``db_url``."""
    src = {"kind": "folder", "path": str(root / "landing"), "settle_seconds": 0,
           "retries": 2, "retry_delay_seconds": 0.2}
    src.update(sections.pop("source", {}))
    return store.config(source=src, sink={"url": db_url, "table": "anomaly_events"},
                        **sections)


RUNNER = textwrap.dedent("""\
    import json, sys
    import faults  # tests/support: AE_ANOMALY_FAULT_STALL hooks, outside the library
    faults.install_from_env()
    from ae_anomaly.environment import apply_quiet_defaults
    apply_quiet_defaults()
    from ae_anomaly import pipeline
    from ae_anomaly.config import load_config
    from ae_anomaly.sources import FileNotReady
    from ae_anomaly.tracking import Tracker
    cfg = load_config(sys.argv[1])
    det, model = Tracker(cfg.tracking).load()
    if cfg.source.kind == "folder":
        try:
            pipeline.ingest_landing(cfg, list(det.feature_names_))
        except FileNotReady:
            pass
    res = pipeline.score_increment(cfg, det, model, job_id=sys.argv[2])
    print("RESULT " + json.dumps(res.summary(), default=str))
""")


_CHAMPIONS: dict[str, Any] = {}


def score_inprocess(raw: dict[str, Any], job: str = "test",
                    backfill: tuple[str | None, str | None] | None = None) -> dict[str, Any]:
    """One scheduled scoring run in this process (what the runner does, without Prefect)."""
    from ae_anomaly import pipeline
    from ae_anomaly.config import AppConfig
    from ae_anomaly.sources import FileNotReady
    from ae_anomaly.tracking import Tracker

    cfg = AppConfig.model_validate(raw)
    key = cfg.tracking.tracking_uri + cfg.tracking.registered_model
    tracker = Tracker(cfg.tracking)
    version = tracker.alias_version(cfg.tracking.alias)
    if _CHAMPIONS.get(key, (None,))[0] != version:
        _CHAMPIONS[key] = (version, tracker.load())
    det, model = _CHAMPIONS[key][1]
    if cfg.source.kind == "folder" and backfill is None:
        try:
            pipeline.ingest_landing(cfg, list(det.feature_names_))
        except FileNotReady:
            pass
    return pipeline.score_increment(cfg, det, model, job_id=job, backfill=backfill).summary()


def runner_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SUPPORT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def start_runner(config: Path, job: str, **env: str) -> subprocess.Popen[str]:
    """One scheduled scoring run (ingest + score from the watermarks) in a new process."""
    return subprocess.Popen([PYTHON, "-c", RUNNER, str(config), job], cwd=REPO,
                            env=runner_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def run_scoring(config: Path, job: str = "run", **env: str) -> dict[str, Any]:
    return finish(start_runner(config, job, **env))


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def read_events(db_url: str, table: str = "anomaly_events") -> pd.DataFrame:
    from ae_anomaly.sinks import SqlSink

    df = SqlSink(db_url, table).read()
    return df.sort_values("event_id").reset_index(drop=True)


def read_watermarks(db_url: str, model: str) -> dict[str, tuple[Any, ...]]:
    from ae_anomaly.sinks import SqlSink

    wms = SqlSink(db_url).read_watermarks(model)
    return {ent: wm.position() for (_, ent), wm in wms.items()}


KEY_COLUMNS = ["event_id", "entity", "start_ts", "end_ts", "peak_ts", "n_points", "is_open",
               "model_name", "model_version", "run_id"]


def assert_same_events(got: pd.DataFrame, want: pd.DataFrame, exact: bool = False) -> None:
    """Same events: identical ids, times, counts; scores equal (to float32 noise unless
    ``exact``). ``scored_at`` is when, not what, and is not compared."""
    assert len(got) == len(want), (len(got), len(want))
    assert got["event_id"].is_unique
    g = got.sort_values("event_id").reset_index(drop=True)
    w = want.sort_values("event_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(g[KEY_COLUMNS], w[KEY_COLUMNS], check_dtype=False)
    for col in ("peak_score", "threshold", "severity", "p_value"):
        a, b = g[col].to_numpy(float), w[col].to_numpy(float)
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=col)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=col)
    if exact:
        assert g["top_channels"].tolist() == w["top_channels"].tolist()


@pytest.fixture(scope="session")
def ops() -> SimpleNamespace:
    """Helpers for the operations tests (test modules do not import each other)."""
    return SimpleNamespace(
        slices=slices, drop=drop, write_config=write_config, folder_config=folder_config,
        start_runner=start_runner, finish=finish, run_scoring=run_scoring, kill=kill,
        score_inprocess=score_inprocess,
        read_events=read_events, read_watermarks=read_watermarks,
        assert_same_events=assert_same_events, train_and_register=train_and_register,
        free_port=free_port, runner_env=runner_env, REPO=REPO, PYTHON=PYTHON,
        tiny=lambda: json.loads(json.dumps(TINY)))
