"""Fault injection for the fault tests, from outside the production code.

A scoring subprocess started by ``tests/integration/conftest.py:start_runner`` calls
:func:`install_from_env` before it scores. The hooks are SQLAlchemy event listeners on every
engine, so the library neither knows nor checks for them.

``AE_ANOMALY_FAULT_STALL`` reads ``<point>:<nth>[:<seconds>]``: the ``nth`` time the process
passes ``point`` it writes ``AE_ANOMALY_FAULT_MARKER`` (when set) and sleeps, so a test can
kill the process at a known place. A point is passed by a *watermark transaction*, one that
writes a scoring watermark (``INSERT`` into a ``*_watermarks`` table: one entity's re-scored
events and its watermark, ``SqlSink.write_increment``):

* ``in_txn``: everything is written, the transaction is about to commit (not yet committed:
  a kill here must leave nothing of it);
* ``after_commit``: it has committed and its connection is back in the pool.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.pool import Pool

FAULT_ENV = "AE_ANOMALY_FAULT_STALL"
FAULT_MARKER_ENV = "AE_ANOMALY_FAULT_MARKER"
POINTS = ("in_txn", "after_commit")

log = logging.getLogger(__name__)
_WATERMARK_WRITE = re.compile(r"^\s*INSERT\s+INTO\s+\"?\w+_watermarks\b", re.IGNORECASE)
_WROTE = "faults.wrote_watermark"
_COMMITTED = "faults.committed_watermark"


class FaultPlan:
    """Stalls the ``nth`` time the process passes ``point``."""

    def __init__(self, point: str, nth: int, seconds: float, marker: str | None) -> None:
        if point not in POINTS:
            raise ValueError(f"{FAULT_ENV}: unknown point '{point}'; valid: {', '.join(POINTS)}")
        self.point, self.nth, self.seconds, self.marker = point, nth, seconds, marker
        self.count = 0

    def passed(self, name: str) -> None:
        if name != self.point:
            return
        self.count += 1
        if self.count == self.nth:
            self.stall(name)

    def stall(self, name: str) -> None:
        """Mark the place and sleep (a test kills the process meanwhile)."""
        if self.marker:
            Path(self.marker).write_text(f"{name} {self.nth} {os.getpid()}\n")
        log.warning("fault hook: stalling at %s #%s for %ss", name, self.nth, self.seconds)
        time.sleep(self.seconds)


def install(plan: FaultPlan) -> Callable[[], None]:
    """Listen on every engine and pool of this process for the plan's point.

    Returns:
        A function that removes the listeners again.
    """

    def note_watermark(conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if _WATERMARK_WRITE.match(statement):
            conn.info[_WROTE] = True

    def forget(conn: Connection) -> None:
        conn.info.pop(_WROTE, None)

    def before_commit(conn: Connection) -> None:
        if conn.info.pop(_WROTE, False):
            plan.passed("in_txn")
            conn.info[_COMMITTED] = True

    def after_commit(_dbapi_conn: Any, record: Any) -> None:
        if record is not None and record.info.pop(_COMMITTED, False):
            plan.passed("after_commit")

    hooks = [(Engine, "before_cursor_execute", note_watermark), (Engine, "rollback", forget),
             (Engine, "commit", before_commit), (Pool, "checkin", after_commit)]
    for target, name, fn in hooks:
        event.listen(target, name, fn)

    def uninstall() -> None:
        for target, name, fn in hooks:
            event.remove(target, name, fn)

    return uninstall


def plan_from_env() -> FaultPlan | None:
    """The fault ``AE_ANOMALY_FAULT_STALL`` names, or None."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    point, nth, seconds = (spec.split(":") + ["1", "3600"])[:3]
    return FaultPlan(point, int(nth), float(seconds), os.environ.get(FAULT_MARKER_ENV))


def install_from_env() -> None:
    """Install the fault that ``AE_ANOMALY_FAULT_STALL`` names, if any."""
    plan = plan_from_env()
    if plan is not None:
        install(plan)
