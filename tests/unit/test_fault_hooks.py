"""The fault tests' hooks (tests/support/faults.py) fire where the fault tests expect.

The library has no fault points: the hooks watch SQLAlchemy events for the transaction that
writes a scoring watermark. Here, instead of stalling, the plan looks at the database from
another connection, on a real SQLite sink.
"""

import sys
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from ae_anomaly.db import make_engine
from ae_anomaly.records import Watermark
from ae_anomaly.sinks import SqlSink

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
import faults  # noqa: E402


class LookingPlan(faults.FaultPlan):
    """At the point: which entities' watermarks another connection sees."""

    def __init__(self, point: str, nth: int, url: str) -> None:
        super().__init__(point, nth, 0.0, None)
        self.reader = make_engine(url)
        self.seen: list[str] | None = None

    def stall(self, name: str) -> None:
        with self.reader.connect() as conn:
            self.seen = sorted(conn.execute(text(
                "SELECT entity FROM anomaly_events_watermarks")).scalars())


@pytest.mark.parametrize(("point", "visible"), [("in_txn", ["a"]),
                                                 ("after_commit", ["a", "b"])])
def test_the_nth_watermark_transaction_stalls_before_or_after_its_commit(tmp_path, point,
                                                                          visible):
    url = f"sqlite:///{tmp_path}/a.db"
    sink = SqlSink(url)
    plan = LookingPlan(point, 2, url)
    uninstall = faults.install(plan)
    try:
        sink.write([])
        for ent in ("a", "b", "c"):
            wm = Watermark(resume_after=None, scored_through=datetime(2026, 1, 1),
                           model_version="1", job_id="t")
            sink.write_increment("m", ent, [], None, None, wm)
        sink.read_watermarks("m")  # reads pass no point
    finally:
        uninstall()
    assert plan.count == 3
    assert plan.seen == visible


def test_unknown_point_is_refused():
    with pytest.raises(ValueError, match="in_txn, after_commit"):
        faults.FaultPlan("nowhere", 1, 0.0, None)
