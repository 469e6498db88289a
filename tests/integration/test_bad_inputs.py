"""Bad input through the real CLI: every malformed file, config, URL and store gives one
line on stderr, a documented exit status, no traceback, and writes nothing.

Each case runs ``python -m ae_anomaly.cli`` in a subprocess against one tiny detector
(window 8, one epoch) trained once for the module, and a table that already holds that
detector's events: a failing command must leave the table and the registry as they were.
Files are tiny; what costs time is the process start (torch, MLflow), so every case that
starts the pipeline is marked ``slow``; the configuration cases stay in the fast suite.
"""

from __future__ import annotations

import codecs
import gzip
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PREFIX = "ae-anomaly: error:"
MAX_LINE = 1100  # the CLI cuts an error line at 1,000 characters (plus its prefix)
TIMEOUT_S = 300  # a safety net for a hung process, not a timing claim

TINY = {
    "window": {"length": 8, "train_stride": 1},
    "model": {"name": "conv_ae", "channels": [4], "latent_dim": 2},
    "training": {"epochs": 1, "batch_size": 64, "progress": False, "seed": 0},
    "calibration": {"method": "conformal", "alpha": 0.05},
    "events": {"merge_gap": 3},
}


@dataclass
class Env:
    """The module's trained detector, its table, and where a case writes its files."""

    root: Path
    config: Path
    train: pd.DataFrame
    score: pd.DataFrame
    sink_db: Path
    mlflow_db: Path
    env: dict[str, str]


def _write_config(path: Path, root: Path, train: Path, score: Path, **extra: dict) -> Path:
    raw = {**TINY, "data": {"train": str(train), "score": str(score)},
           "sink": {"url": f"sqlite:///{root}/anomalies.db", "table": "anomaly_events"},
           "tracking": {"tracking_uri": f"sqlite:///{root}/mlflow.db",
                        "artifact_location": str(root / "mlartifacts"),
                        "experiment": "bad-inputs", "registered_model": "bad-inputs"}}
    for key, value in extra.items():
        raw[key] = {**raw.get(key, {}), **value}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _train(config: Path) -> None:
    """Train and register the detector of ``config`` (in this process, without Prefect:
    the subprocesses are what is under test)."""
    from ae_anomaly import pipeline
    from ae_anomaly.config import load_config
    from ae_anomaly.tracking import Tracker

    cfg = load_config(config)
    tracker = Tracker(cfg.tracking)
    frame = pipeline.load_training_frame(cfg)
    run_id = pipeline.start_run(cfg, tracker)
    det = pipeline.fit_detector(cfg, frame, tracker, run_id)
    pipeline.log_and_register(cfg, det, frame, tracker, run_id)


def _train_and_score(config: Path) -> None:
    """Train the detector, then score ``data.score`` into the table."""
    from ae_anomaly import pipeline
    from ae_anomaly.config import load_config
    from ae_anomaly.tracking import Tracker

    _train(config)
    cfg = load_config(config)
    det, ref = Tracker(cfg.tracking).load()
    pipeline.write_events(cfg, det, ref, pipeline.score_inputs(cfg, det, None, ref))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """The data files, the config and the environment, before anything is trained."""
    from ae_anomaly.config import AppConfig
    from ae_anomaly.data.synthetic import generate_server_metrics

    root = tmp_path_factory.mktemp("bad-inputs")
    synth = AppConfig.model_validate({"data": {"synthetic": {
        "n_entities": 1, "n_metrics": 2, "train_days": 0.2, "score_days": 0.1,
        "anomalies_per_entity": 1, "seed": 1}}}).data.synthetic
    data = generate_server_metrics(synth)
    train, score = root / "train.csv", root / "score.csv"
    data.train.to_csv(train, index=False)
    data.score.to_csv(score, index=False)
    config = _write_config(root / "cfg.yaml", root, train, score)
    env = dict(os.environ)
    env.update({"AE_ANOMALY_HOME": str(root / "home"), "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1", "PREFECT_LOGGING_LEVEL": "WARNING"})
    return Env(root, config, data.train, data.score, root / "anomalies.db",
               root / "mlflow.db", env)


@pytest.fixture(scope="module")
def bad(files: Env, prefect_harness: None) -> Env:
    """``files`` with the detector trained and registered, its events in the table, and
    the subprocesses pointed at the session's Prefect test server."""
    from prefect.settings import PREFECT_API_URL

    _train_and_score(files.config)
    files.env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return files


def snapshot(env: Env) -> tuple[list[tuple] | None, int | None]:
    """The anomaly table's rows and the number of registered model versions (None before
    the module's detector is trained)."""
    if not env.sink_db.exists():
        return None, None
    with sqlite3.connect(env.sink_db) as conn:
        rows = conn.execute("SELECT * FROM anomaly_events ORDER BY event_id").fetchall()
    with sqlite3.connect(env.mlflow_db) as conn:
        versions = conn.execute("SELECT count(*) FROM model_versions").fetchone()[0]
    return rows, versions


def run_cli(env: Env, args: list[str], timeout: float = TIMEOUT_S,
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ae_anomaly.cli", *args], cwd=env.root,
                          env=env.env, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- the cases
@dataclass
class Case:
    """One bad input.

    Attributes:
        command: the CLI command (``train``, ``score``, ``config``, ``events``, ...).
        make: writes the case's files under a folder; returns the command's arguments
            after ``-c <config>`` (e.g. ``["-i", path]``, ``["--set", "k=v"]``).
        says: what the error line must contain (the file name, the column, the row ...);
            ``{dir}`` is replaced by the case's folder.
        code: the expected exit status (2: user error; 3: transient; 0: the input works).
        config: False: the command gets no ``-c`` (``make`` passes its own).
        slow: starts the pipeline (seconds of imports and a model load).
    """

    command: str
    make: Callable[[Path, Env], list[str]]
    says: tuple[str, ...] = ()
    code: int = 2
    config: bool = True
    slow: bool = True
    timeout: float = TIMEOUT_S


def _csv(name: str, frame: Callable[[Env], pd.DataFrame]) -> Callable[[Path, Env], list[str]]:
    def make(d: Path, env: Env) -> list[str]:
        frame(env).to_csv(d / name, index=False)
        return ["-i", str(d / name)]
    return make


def _parquet(name: str, frame: Callable[[Env], pd.DataFrame]
             ) -> Callable[[Path, Env], list[str]]:
    def make(d: Path, env: Env) -> list[str]:
        frame(env).to_parquet(d / name, index=False)
        return ["-i", str(d / name)]
    return make


def _bytes(name: str, content: Callable[[Env], bytes]) -> Callable[[Path, Env], list[str]]:
    def make(d: Path, env: Env) -> list[str]:
        (d / name).write_bytes(content(env))
        return ["-i", str(d / name)]
    return make


def _set(*overrides: str) -> Callable[[Path, Env], list[str]]:
    def make(d: Path, env: Env) -> list[str]:
        out = []
        for o in overrides:
            out += ["--set", o.replace("{dir}", str(d))]
        return out
    return make


def _yaml(text: str | bytes) -> Callable[[Path, Env], list[str]]:
    def make(d: Path, env: Env) -> list[str]:
        p = d / "bad.yaml"
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        return ["-c", str(p)]
    return make


def _text(env: Env) -> str:
    return env.score.to_csv(index=False)


def _with(col: str, row: int, value: object, source: str = "score"
          ) -> Callable[[Env], pd.DataFrame]:
    """The score (or train) frame with one cell replaced (``row`` 0-based)."""
    def frame(env: Env) -> pd.DataFrame:
        df = getattr(env, source).copy()
        if col not in df.columns or isinstance(value, str) or value is None:
            df[col] = df[col].astype(object) if col in df.columns else None
        df.loc[row, col] = value
        return df
    return frame


def _score(env: Env) -> pd.DataFrame:
    return env.score.copy()


def _typed_ts(env: Env) -> pd.DataFrame:
    df = env.score.copy()
    df["timestamp"] = pd.to_datetime(df["timestamp"])
    return df


def _nat(env: Env) -> pd.DataFrame:
    df = _typed_ts(env)
    df.loc[3, "timestamp"] = pd.NaT
    return df


def _mixed_zones(env: Env) -> pd.DataFrame:
    df = env.score.copy()
    ts = df["timestamp"].astype(str)
    df["timestamp"] = ts.where(df.index < 10, ts + "+02:00")
    return df


def _swap(i: int, j: int) -> Callable[[Env], pd.DataFrame]:
    def frame(env: Env) -> pd.DataFrame:
        df = env.score.copy()
        df.loc[[i, j], "timestamp"] = df.loc[[j, i], "timestamp"].to_numpy()
        return df
    return frame


def _dup(env: Env) -> pd.DataFrame:
    df = env.score.copy()
    df.loc[4, "timestamp"] = df.loc[3, "timestamp"]
    return df


def _wide(env: Env) -> pd.DataFrame:
    extra = pd.DataFrame(np.ones((len(env.score), 5000)),
                         columns=[f"extra_{i}" for i in range(5000)])
    return pd.concat([env.score, extra], axis=1)


def _long_gap(env: Env) -> pd.DataFrame:
    df = env.score.copy()
    df["cpu_util"] = df["cpu_util"].astype(object)
    df.loc[10:25, "cpu_util"] = ""
    return df


def _latin1(env: Env) -> bytes:
    df = env.score.copy()
    df["label"] = "normal, caf\u00e9 d\u00e9j\u00e0 vu"
    return df.to_csv(index=False).encode("latin-1")


def _dir_named_csv(d: Path, env: Env) -> list[str]:
    (d / "folder.csv").mkdir()
    return ["-i", str(d / "folder.csv")]


def _deleted_artifacts(d: Path, env: Env) -> list[str]:
    """A second model in the same store whose artifact folder is then deleted."""
    cfg = _write_config(d / "cfg.yaml", env.root, env.root / "train.csv",
                        env.root / "score.csv",
                        tracking={"experiment": "deleted", "registered_model": "deleted",
                                  "artifact_location": str(d / "art")})
    _train(cfg)
    shutil.rmtree(d / "art")
    return ["--set", "tracking.registered_model=deleted"]


def _under_file(d: Path, env: Env) -> list[str]:
    (d / "plain-file").write_text("not a folder\n")
    return ["--set", f"sink.url=sqlite:///{d}/plain-file/sub/anomalies.db"]


def _corrupt_parquet(env: Env) -> bytes:
    import io

    buf = io.BytesIO()
    env.score.to_parquet(buf, index=False)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def _parquet_bytes(env: Env) -> bytes:
    import io

    buf = io.BytesIO()
    env.score.to_parquet(buf, index=False)
    return buf.getvalue()


CASES: dict[str, Case] = {
    # --- configuration files and overrides (no pipeline: the fast suite)
    "yaml-binary": Case("config", _yaml(bytes(range(256)) * 8), ("bad.yaml", "UTF-8"),
                        config=False, slow=False),
    "yaml-utf16": Case("config", _yaml("data:\n  nan_policy: drop\n".encode("utf-16")),
                       ("bad.yaml", "UTF-8"), config=False, slow=False),
    "yaml-list": Case("config", _yaml("- data\n- model\n"), ("bad.yaml", "mapping"),
                      config=False, slow=False),
    "yaml-syntax": Case("config", _yaml("data: [unclosed\n"), ("bad.yaml", "YAML", "line"),
                        config=False, slow=False),
    "yaml-unknown-key": Case("config", _yaml("data:\n  trian: x.csv\n"),
                             ("bad.yaml", "data.trian", "unknown key"), config=False,
                             slow=False),
    "yaml-wrong-type": Case("config", _yaml("training:\n  epochs: many\n"),
                            ("bad.yaml", "training.epochs"), config=False, slow=False),
    "yaml-is-folder": Case("config", lambda d, e: ["-c", str(d)], ("folder",), config=False,
                           slow=False),
    "yaml-missing": Case("config", lambda d, e: ["-c", str(d / "nope.yaml")],
                         ("nope.yaml", "not found"), config=False, slow=False),
    "set-without-equals": Case("config", _set("calibration.alpha"),
                               ("calibration.alpha", "key=value"), slow=False),
    "set-unknown-key": Case("config", _set("calibration.alfa=0.1"),
                            ("calibration.alfa", "unknown key"), slow=False),
    "set-unknown-section": Case("config", _set("nosuch.key=1"), ("nosuch",), slow=False),
    "alpha-out-of-range": Case("config", _set("calibration.alpha=2"),
                               ("calibration.alpha",), slow=False),
    "negative-window": Case("config", _set("window.length=-3"), ("window.length",),
                            slow=False),
    "unknown-model": Case("config", _set("model.name=transformer"), ("transformer",),
                          slow=False),
    "unknown-encoding": Case("config", _set("data.encoding=klingon"),
                             ("data.encoding", "klingon"), slow=False),
    # --- URLs and stores
    "sink-url-malformed": Case("events", _set("sink.url=not a url"), ("not a url",)),
    "sink-url-unknown-scheme": Case("events", _set("sink.url=nosuchdb://host/db"),
                                    ("nosuchdb",)),
    "sink-folder-under-a-file": Case("events", _under_file, ("plain-file",)),
    "mlflow-unknown-scheme": Case("calibrate", _set("tracking.tracking_uri=foo://bar"),
                                  ("foo://bar",)),
    "no-registered-model": Case("calibrate", _set("tracking.registered_model=nosuch"),
                                ("nosuch",)),
    "score-without-model": Case("score", _set("tracking.registered_model=nosuch"),
                                ("nosuch",)),
    "deleted-model-artifacts": Case("calibrate", _deleted_artifacts, ("artifact",)),
    # --- score: files that are not CSV text
    "binary-csv": Case("score", _bytes("bin.csv", lambda e: os.urandom(4096)),
                       ("bin.csv", "binary")),
    "utf16-csv": Case("score", _bytes("u16.csv", lambda e: _text(e).encode("utf-16")),
                      ("u16.csv", "UTF-16", "data.encoding")),
    "utf16-csv-no-bom": Case("score", _bytes("u16le.csv",
                                             lambda e: _text(e).encode("utf-16-le")),
                             ("u16le.csv", "UTF-16")),
    "latin1-csv": Case("score", _bytes("latin1.csv", _latin1),
                       ("latin1.csv", "Latin-1", "data.encoding")),
    "gzip-named-csv": Case("score", _bytes("gz.csv", lambda e: gzip.compress(
        _text(e).encode())), ("gz.csv", "gzip")),
    "parquet-named-csv": Case("score", _bytes("pq.csv", _parquet_bytes),
                              ("pq.csv", "Parquet")),
    "corrupt-parquet": Case("score", _bytes("cut.parquet", _corrupt_parquet),
                            ("cut.parquet", "Parquet")),
    "empty-file": Case("score", _bytes("empty.csv", lambda e: b""), ("empty.csv", "empty")),
    "ragged-rows": Case("score", _bytes("ragged.csv", lambda e: (
        _text(e) + "2026-01-06 00:00:00,server-01,1,2,3,4\n").encode()),
        ("ragged.csv", "CSV")),
    "very-long-cell": Case("score", _bytes("longcell.csv", lambda e: (
        _text(e) + "2026-01-06 00:00:00,server-01," + "x" * 1_000_000 + ",1\n").encode()),
        ("longcell.csv", "cpu_util", "not a number")),
    # --- score: structure
    "header-only-score": Case("score", _bytes("hdr.csv",
                                              lambda e: b"timestamp,entity,cpu_util,load_avg\n"),
                              ("hdr.csv", "no data rows")),
    "too-short-score": Case("score", _csv("short.csv", lambda e: e.score.head(5)),
                            ("short.csv", "too short")),
    "missing-metric-column": Case("score", _csv("miss.csv",
                                                lambda e: e.score.drop(columns="load_avg")),
                                  ("miss.csv", "load_avg")),
    "missing-timestamp-column": Case("score", _csv("nots.csv",
                                                   lambda e: e.score.drop(columns="timestamp")),
                                     ("nots.csv", "timestamp")),
    "5000-extra-columns": Case("score", _csv("wide.csv", _wide),
                               ("wide.csv", "extra_0", "4,990 more")),
    "nonexistent-path": Case("score", lambda d, e: ["-i", str(d / "nope.csv")],
                             ("nope.csv", "no such file")),
    "folder-named-csv": Case("score", _dir_named_csv, ("folder.csv",)),
    # --- score: values (CSV and Parquet alike)
    "inf-csv": Case("score", _csv("inf.csv", _with("cpu_util", 3, "inf")),
                    ("inf.csv", "cpu_util", "row 4", "infinite")),
    "inf-parquet": Case("score", _parquet("inf.parquet", _with("cpu_util", 3, np.inf)),
                        ("inf.parquet", "cpu_util", "row 4", "infinite")),
    "nan-beyond-max-fill": Case("score", _csv("gap.csv", _long_gap),
                                ("gap.csv", "cpu_util", "row 16", "max_nan_fill")),
    "null-timestamp-csv": Case("score", _csv("nat.csv", _with("timestamp", 3, "")),
                               ("nat.csv", "timestamp", "row 4", "missing")),
    "null-timestamp-parquet": Case("score", _parquet("nat.parquet", _nat),
                                   ("nat.parquet", "timestamp", "row 4", "missing")),
    "unparseable-timestamp": Case("score", _csv("badts.csv",
                                                _with("timestamp", 3, "yesterday-ish")),
                                  ("badts.csv", "timestamp", "row 4", "yesterday-ish")),
    "bool-metric-csv": Case("score", _csv("bool.csv", lambda e: e.score.assign(
        cpu_util=e.score.cpu_util > 40)), ("bool.csv", "cpu_util", "not a number")),
    "bool-metric-parquet": Case("score", _parquet("bool.parquet", lambda e: e.score.assign(
        cpu_util=e.score.cpu_util > 40)), ("bool.parquet", "cpu_util", "true/false")),
    "string-metric-parquet": Case("score", _parquet("str.parquet", lambda e: e.score.assign(
        cpu_util=e.score.cpu_util.astype(str))), ("str.parquet", "cpu_util", "not a number")),
    "text-metric-csv": Case("score", _csv("text.csv", _with("load_avg", 7, "high")),
                            ("text.csv", "load_avg", "row 8", "'high'")),
    "empty-entity-csv": Case("score", _csv("ent.csv", _with("entity", 3, "")),
                             ("ent.csv", "entity", "row 4", "empty")),
    "null-entity-parquet": Case("score", _parquet("ent.parquet", _with("entity", 3, None)),
                                ("ent.parquet", "entity", "row 4", "empty")),
    "mixed-naive-and-zoned": Case("score", _csv("tz.csv", _mixed_zones),
                                  ("tz.csv", "timestamp", "row 11", "offset")),
    "duplicate-timestamps": Case("score", _csv("dup.csv", _dup),
                                 ("dup.csv", "timestamp", "row 5", "duplicate")),
    "decreasing-timestamps": Case("score", _csv("back.csv", _swap(5, 6)),
                                  ("back.csv", "timestamp", "row 7", "not sorted")),
    # --- train
    "header-only-train": Case("train", _bytes("hdr.csv",
                                              lambda e: b"timestamp,entity,cpu_util,load_avg\n"),
                              ("hdr.csv", "no data rows")),
    "too-short-train": Case("train", _csv("short.csv", lambda e: e.train.head(12)),
                            ("server-01", "too few")),
    "train-over-size-limit": Case("train", lambda d, e: [
        "-i", str(e.root / "train.csv"), "--set", "data.max_in_memory_bytes=1000"],
        ("train.csv", "max_in_memory_bytes")),
    "inf-parquet-train": Case("train", _parquet("inf.parquet", _with(
        "load_avg", 20, -np.inf, "train")), ("inf.parquet", "load_avg", "row 21", "infinite")),
    "binary-train": Case("train", _bytes("bin.csv", lambda e: os.urandom(4096)),
                         ("bin.csv", "binary")),
    "nonexistent-train": Case("train", lambda d, e: ["-i", str(d / "nope.csv")],
                              ("nope.csv", "no such file")),
    # --- inputs that must work (exit 0)
    "bom-csv-works": Case("score", _bytes("bom.csv", lambda e: codecs.BOM_UTF8
                                          + _text(e).encode()), code=0),
    "crlf-csv-works": Case("score", _bytes("crlf.csv", lambda e: _text(e).replace(
        "\n", "\r\n").encode()), code=0),
    "declared-latin1-works": Case("score", lambda d, e: _bytes("latin1.csv", _latin1)(d, e)
                                  + ["--set", "data.encoding=latin-1"], code=0),
    "declared-utf16-works": Case("score", lambda d, e: _bytes("u16.csv", lambda x: _text(
        x).encode("utf-16"))(d, e) + ["--set", "data.encoding=utf-16"], code=0),
}
# The tracking server's port is closed: MLflow retries (its own schedule) before giving up,
# and the outage is reported as transient (exit 3). Slow by nature, with a wide deadline.
CASES["mlflow-closed-port"] = Case(
    "calibrate", _set("tracking.tracking_uri=http://127.0.0.1:1"), ("127.0.0.1",), code=3,
    timeout=900)


def _params() -> list:
    return [pytest.param(name, marks=[pytest.mark.slow] if case.slow else [], id=name)
            for name, case in CASES.items()]


@pytest.mark.parametrize("name", _params())
def test_bad_input(request: pytest.FixtureRequest, tmp_path: Path, name: str) -> None:
    case = CASES[name]
    # Configuration cases never reach the pipeline: no detector needed.
    bad: Env = request.getfixturevalue("bad" if case.slow else "files")
    args = case.make(tmp_path, bad)
    before = snapshot(bad)
    config = ["-c", str(bad.config)] if case.config else []
    proc = run_cli(bad, [case.command, *config, *args], timeout=case.timeout)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    assert proc.returncode == case.code, out[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if case.code == 0:
        assert not [line for line in lines if line.startswith(PREFIX)], proc.stderr
        return
    assert len(lines) == 1, proc.stderr[-3000:]
    line = lines[0]
    assert line.startswith(PREFIX), line
    assert len(line) < (500 if name == "5000-extra-columns" else MAX_LINE), len(line)
    for text in case.says:
        assert text.replace("{dir}", str(tmp_path)) in line, line
    assert snapshot(bad) == before  # nothing written: no event, no model version


def test_battery_has_at_least_40_bad_inputs() -> None:
    assert sum(1 for c in CASES.values() if c.code != 0) >= 40


@pytest.mark.slow
def test_broken_pipe_on_stdout_exits_quietly(bad: Env) -> None:
    """``ae-anomaly config | head -1``: the reader goes away; no 'transient' message.

    The read end is closed before the command writes, so its first write meets a broken
    pipe for certain (with ``head -1`` it depends on the pipe's buffer).
    """
    for command in (["config", "-c", str(bad.config)], ["events", "-c", str(bad.config)]):
        proc = subprocess.Popen([sys.executable, "-m", "ae_anomaly.cli", *command],
                                cwd=bad.root, env=bad.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.wait(timeout=TIMEOUT_S)
        assert proc.returncode == 141, err
        assert err.strip() == "", err
