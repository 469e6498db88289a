"""A database password given on the command line is stored and printed nowhere.

``ae-anomaly train`` and ``score`` run the real flows (Prefect test harness) against a real
PostgreSQL anomaly database reached as a role with a password, ``--set
sink.url=postgresql+psycopg://ROLE:SECRET@...``. Afterwards the secret (a unique string)
must not appear in the MLflow store (database bytes and artifact files), in Prefect's
database or PREFECT_HOME, in what the commands printed, or in the log records.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from ae_anomaly import pipeline
from ae_anomaly.config import load_config

CONFIG = "configs/demo.yaml"
FAST = ["training.epochs=2", "training.progress=false", "data.synthetic.n_entities=2",
        "data.synthetic.n_metrics=4", "data.synthetic.train_days=1",
        "data.synthetic.score_days=0.5", "window.length=16", "window.train_stride=2"]


@pytest.fixture
def secret_sink(pg_url: str):
    """A fresh database owned by a fresh role with a unique password: (secret, URL)."""
    secret = f"Sec{uuid.uuid4().hex}"
    role, db = f"r_{uuid.uuid4().hex[:10]}", f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'"))
        conn.execute(text(f'CREATE DATABASE "{db}" OWNER {role}'))
    url = make_url(pg_url).set(username=role, password=secret, database=db)
    yield secret, url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
    admin.dispose()


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_sink_password_is_stored_and_printed_nowhere(secret_sink, prefect_harness, tmp_path,
                                                     monkeypatch, capsys, caplog) -> None:
    import prefect.settings
    from prefect.logging.handlers import APILogWorker

    from ae_anomaly.cli import main

    secret, url = secret_sink
    home = tmp_path / "home"
    monkeypatch.setenv("AE_ANOMALY_HOME", str(home))
    data = pipeline.write_demo_data(load_config(CONFIG, FAST))
    overrides = [*FAST, *pipeline.demo_overrides(data), f"sink.url={url}"]
    args = [x for o in overrides for x in ("--set", o)]
    with caplog.at_level(logging.INFO):
        assert main(["train", "-c", CONFIG, *args]) == 0
        assert main(["score", "-c", CONFIG, *args]) == 0
        assert main(["config", "-c", CONFIG, *args]) == 0
    APILogWorker.drain_all(timeout=10)  # the flow-run logs reach the database
    # the events did go through the password URL
    assert len(pipeline.read_events(load_config(CONFIG, overrides))) > 0

    printed = capsys.readouterr()
    assert secret not in printed.out + printed.err
    assert secret not in caplog.text
    assert all(secret not in r.getMessage() for r in caplog.records)
    needle = secret.encode()
    # MLflow: the SQLite store (params, tags) and every artifact (resolved config, model)
    assert (home / "mlflow.db").is_file()
    assert _files_holding(home, needle) == []
    # Prefect: its database (flow-run parameters, logs) and PREFECT_HOME
    db_url = prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    prefect_db = Path(db_url.split("///", 1)[1]).parent
    assert any(prefect_db.iterdir())
    assert _files_holding(prefect_db, needle) == []
    assert _files_holding(Path(os.environ["PREFECT_HOME"]), needle) == []
    # what the flows did store: a reference to this process's environment
    assert "sink.url=" in "".join(
        p.read_bytes().decode("latin-1") for p in prefect_db.rglob("*") if p.is_file())
