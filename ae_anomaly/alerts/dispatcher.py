"""The dispatcher: sends pending outbox rows to every channel, in order, with retries.

For each channel it walks the outbox in ``id`` order from the oldest row that channel has
not finished. Each row is first put through the rules (:mod:`ae_anomaly.alerts.rules`): a
held-back row is marked ``suppressed`` with the reason. The rest are posted (Alertmanager
takes a batch per post, webhooks one row per post) and marked ``sent`` after the receiver
acknowledged them. A transient failure (connection refused, timeout, 5xx) marks the row
``retry`` with a doubling delay and stops that channel: later rows wait, so a receiver
that comes back gets everything in order. A 4xx answer parks the row with the reason and
the channel goes on.

A crash between the post and the mark re-sends that post on restart: duplicates are
limited to what the receiver got but could not acknowledge; every webhook post carries the
outbox id (``X-AE-Anomaly-Delivery``) for receivers that de-duplicate, and Alertmanager
merges a re-posted alert with the same labels.

One dispatcher works at a time per database: a lease row (renewed while working; taken
over when it expires or its process on this host is gone).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select, update

from ae_anomaly.alerts.channels import Channel, DeliveryError, Notification, open_channels
from ae_anomaly.alerts.rules import Decision, History, decide
from ae_anomaly.alerts.store import AlertStore
from ae_anomaly.config import AlertsConfig, AppConfig
from ae_anomaly.db import insert_or_ignore, upsert_statement, utcnow

log = logging.getLogger(__name__)

LEASE = "dispatcher"
LEASE_SECONDS = 60.0
_PAGE = 200


@dataclass
class ChannelReport:
    """What one pass did on one channel."""

    sent: int = 0
    suppressed: int = 0
    parked: int = 0
    expired: int = 0
    retrying: bool = False
    error: str = ""
    pending: int = 0


@dataclass
class DispatchReport:
    """What a dispatch did, per channel."""

    channels: dict[str, ChannelReport] = field(default_factory=dict)
    busy: bool = False  # another dispatcher holds the lease

    @property
    def sent(self) -> int:
        """Notifications sent over all channels."""
        return sum(c.sent for c in self.channels.values())

    @property
    def pending(self) -> int:
        """Rows still pending over all channels."""
        return sum(c.pending for c in self.channels.values())

    def summary(self) -> str:
        """One line for logs and the CLI."""
        if self.busy:
            return "another dispatcher is running"
        if not self.channels:
            return "no alert channel configured"
        parts = []
        for name, c in self.channels.items():
            part = (f"{name}: {c.sent} sent, {c.suppressed} suppressed, {c.parked} parked, "
                    f"{c.pending} pending")
            if c.error:
                part += f" (retrying: {c.error})"
            parts.append(part)
        return "; ".join(parts)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _process_gone(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Dispatcher:
    """Sends the outbox of one anomaly database to the configured channels.

    Args:
        cfg: the alerts section.
        url: the anomaly database (``sink.url``).
        table: the anomaly table (``sink.table``).
        channels: channels to use instead of the configured ones (tests).
    """

    def __init__(self, cfg: AlertsConfig, url: str, table: str = "anomaly_events",
                 channels: list[Channel] | None = None) -> None:
        self.cfg = cfg
        self.store = AlertStore(url, table)
        self.t = self.store.tables
        self.channels = open_channels(cfg) if channels is None else channels
        self.owner = _owner()

    @classmethod
    def from_config(cls, cfg: AppConfig) -> Dispatcher:
        """The dispatcher of a configuration (``alerts`` and ``sink``)."""
        return cls(cfg.alerts, cfg.sink.url, cfg.sink.table)

    # ------------------------------------------------------------- lease
    def _acquire(self) -> bool:
        lt, now = self.t.leases, utcnow()
        until = now + timedelta(seconds=LEASE_SECONDS + self.cfg.timeout_seconds)
        with self.store.engine.begin() as conn:
            conn.execute(insert_or_ignore(conn, lt, [{"name": LEASE, "owner": "", "until":
                                                      now - timedelta(seconds=1)}], ["name"]))
            row = conn.execute(select(lt).where(lt.c.name == LEASE)).one()
            if row.owner not in ("", self.owner) and row.until > now \
                    and not _process_gone(row.owner):
                return False
            conn.execute(update(lt).where(lt.c.name == LEASE, lt.c.owner == row.owner)
                         .values(owner=self.owner, until=until))
        return True

    def release(self) -> None:
        """Give the lease back (so another dispatcher need not wait for it to expire)."""
        lt = self.t.leases
        with self.store.engine.begin() as conn:
            conn.execute(update(lt).where(lt.c.name == LEASE, lt.c.owner == self.owner)
                         .values(owner="", until=utcnow()))

    # ------------------------------------------------------------- state
    def _pending_rows(self, channel: str, after_id: int) -> list[dict[str, Any]]:
        ob, d = self.t.outbox, self.t.deliveries
        stmt = (select(ob, d.c.status, d.c.attempts, d.c.next_attempt_at)
                .select_from(ob.outerjoin(d, and_(d.c.outbox_id == ob.c.id,
                                                  d.c.channel == channel)))
                .where(ob.c.id > after_id, d.c.status.is_(None) | (d.c.status == "retry"))
                .order_by(ob.c.id).limit(_PAGE))
        with self.store.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def _history(self, channel: str, event_id: str) -> History:
        ob, d = self.t.outbox, self.t.deliveries
        stmt = (select(ob.c.action, d.c.severity_label, d.c.sent_at)
                .select_from(ob.join(d, d.c.outbox_id == ob.c.id))
                .where(ob.c.event_id == event_id, d.c.channel == channel,
                       d.c.status == "sent").order_by(ob.c.id))
        with self.store.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        if not rows:
            return History()
        return History(rows[-1].action, rows[-1].severity_label, rows[0].sent_at)

    def _sent_today(self, channel: str, entity: str, now: datetime) -> int:
        ob, d = self.t.outbox, self.t.deliveries
        stmt = (select(func.count()).select_from(ob.join(d, d.c.outbox_id == ob.c.id))
                .where(d.c.channel == channel, d.c.status == "sent", d.c.reason == "new",
                       ob.c.entity == entity, ob.c.kind == "event",
                       d.c.sent_at > now - timedelta(days=1)))
        with self.store.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def _mark(self, channel: str, rows: list[dict[str, Any]]) -> None:
        """Write delivery rows: each ``{outbox_id, status, reason, ...}``."""
        now = utcnow()
        full = [{"channel": channel, "attempts": 0, "next_attempt_at": None, "reason": None,
                 "severity_label": None, "sent_at": None, "updated_at": now, **r} for r in rows]
        cols = ["status", "attempts", "next_attempt_at", "reason", "severity_label",
                "sent_at", "updated_at"]
        with self.store.engine.begin() as conn:
            for i in range(0, len(full), 500):
                conn.execute(upsert_statement(conn, self.t.deliveries, full[i:i + 500],
                                              ["outbox_id", "channel"], cols))

    # ------------------------------------------------------------- one channel
    def _delay(self, attempts: int) -> float:
        return min(self.cfg.retry_base_seconds * 2 ** max(attempts - 1, 0),
                   self.cfg.retry_max_seconds)

    def _channel_pass(self, ch: Channel, deadline: float, respect_backoff: bool
                      ) -> ChannelReport:
        rep = ChannelReport()
        after = 0
        state: dict[str, History] = {}  # this pass's view of what the channel got
        while time.monotonic() < deadline:
            rows = self._pending_rows(ch.name, after)
            if not rows:
                break
            now = utcnow()
            silences = self.store.silences(active_only=True)
            batch: list[tuple[dict[str, Any], Notification, Decision]] = []
            held: list[dict[str, Any]] = []
            blocked = False
            for row in rows:
                if row["status"] == "retry" and respect_backoff \
                        and row["next_attempt_at"] and row["next_attempt_at"] > now:
                    blocked = True
                    break
                if row["created_at"] < now - timedelta(hours=self.cfg.max_age_hours):
                    held.append({"outbox_id": row["id"], "status": "expired",
                                 "reason": f"older than alerts.max_age_hours "
                                           f"{self.cfg.max_age_hours:g}"})
                    rep.expired += 1
                    continue
                eid = row["event_id"]
                hist = History()
                if eid:
                    hist = state.get(eid) or self._history(ch.name, eid)
                sent_today = 0
                if row["kind"] == "event":
                    sent_today = self._sent_today(ch.name, row["entity"], now) + sum(
                        1 for r, _, d in batch if d.reason == "new"
                        and r["entity"] == row["entity"])
                dec = decide(self.cfg, row, hist, silences, sent_today, now)
                if not dec.send:
                    held.append({"outbox_id": row["id"], "status": "suppressed",
                                 "reason": dec.reason})
                    rep.suppressed += 1
                    continue
                n = Notification(id=row["id"], kind=row["kind"], action=row["action"],
                                 change=("escalated" if dec.reason == "escalated"
                                         else row["change"]),
                                 entity=row["entity"], model_name=row["model_name"],
                                 payload=row["payload"], severity_label=dec.label,
                                 supersedes=dec.supersedes, first_sent_at=hist.first_sent_at,
                                 created_at=row["created_at"])
                batch.append((row, n, dec))
                if eid:
                    state[eid] = History(row["action"], dec.label, hist.first_sent_at or now)
                if len(batch) >= ch.batch:
                    break
            # Rows held back before the first one to send can be marked at once; the
            # rest of the page is re-read after the batch is acknowledged.
            if held:
                self._mark(ch.name, held)
            if batch:
                ok = self._send(ch, batch, rep)
                if not ok:
                    break
            if blocked:
                break
            if not batch and not held:
                break
            after = max(r["id"] for r in rows) if not batch else after
        rep.pending = self.store.pending_count(ch.name)
        return rep

    def _send(self, ch: Channel, batch: list[tuple[dict[str, Any], Notification, Decision]],
              rep: ChannelReport) -> bool:
        """Post a batch; True when the channel may go on."""
        try:
            ch.send([n for _, n, _ in batch])
        except DeliveryError as err:
            if err.permanent and len(batch) > 1:
                # Find the refused row: post the batch's rows one by one.
                for item in batch:
                    if not self._send(ch, [item], rep):
                        return False
                return True
            row = batch[0][0]
            if err.permanent:
                log.warning("%s refused outbox row %d: %s", ch.name, row["id"], err)
                self._mark(ch.name, [{"outbox_id": row["id"], "status": "parked",
                                      "reason": str(err)[:2000],
                                      "attempts": (row["attempts"] or 0) + 1}])
                rep.parked += 1
                return True
            attempts = (row["attempts"] or 0) + 1
            delay = self._delay(attempts)
            log.warning("%s: outbox row %d not delivered (attempt %d, next in %.0fs): %s",
                        ch.name, row["id"], attempts, delay, err)
            self._mark(ch.name, [{"outbox_id": row["id"], "status": "retry",
                                  "reason": str(err)[:2000], "attempts": attempts,
                                  "next_attempt_at": utcnow() + timedelta(seconds=delay)}])
            rep.retrying, rep.error = True, str(err)
            return False
        now = utcnow()
        self._mark(ch.name, [{"outbox_id": row["id"], "status": "sent", "reason": dec.reason,
                              "attempts": (row["attempts"] or 0) + 1,
                              "severity_label": dec.label, "sent_at": now}
                             for row, _, dec in batch])
        rep.sent += len(batch)
        return True

    # ------------------------------------------------------------- passes
    def run_once(self, seconds: float = 60.0, respect_backoff: bool = True) -> DispatchReport:
        """One pass over every channel: send what is due, within ``seconds``.

        Args:
            seconds: the time budget of the pass.
            respect_backoff: leave rows whose retry is not yet due (False: retry them now).
        """
        report = DispatchReport()
        if not self.channels:
            return report
        if not self._acquire():
            report.busy = True
            return report
        try:
            deadline = time.monotonic() + seconds
            for ch in self.channels:
                report.channels[ch.name] = self._channel_pass(ch, deadline, respect_backoff)
                self._check_backlog(ch.name, report.channels[ch.name].pending)
        finally:
            self.release()
        return report

    def drain(self, seconds: float) -> DispatchReport:
        """Pass after pass (waiting for due retries) until nothing is pending or
        ``seconds`` are up: what a scoring run does before it exits."""
        deadline = time.monotonic() + seconds
        report = self.run_once(max(deadline - time.monotonic(), 0.1))
        while (report.pending or report.busy) and time.monotonic() < deadline:
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0)))
            report = self.run_once(max(deadline - time.monotonic(), 0.1))
        return report

    def run_forever(self, stop: threading.Event | None = None,
                    interval: float | None = None) -> None:
        """Dispatch every ``interval`` seconds (``alerts.dispatch_interval_seconds``) until
        ``stop`` is set; prunes finished rows older than ``alerts.retention_days`` hourly."""
        stop = stop or threading.Event()
        interval = interval or self.cfg.dispatch_interval_seconds
        last_prune = 0.0
        while not stop.is_set():
            try:
                report = self.run_once(max(interval * 6, 60.0))
                if report.sent or report.channels and any(
                        c.parked or c.retrying for c in report.channels.values()):
                    log.info("alerts: %s", report.summary())
                if time.monotonic() - last_prune > 3600:
                    pruned = self.store.prune(timedelta(days=self.cfg.retention_days))
                    if pruned:
                        log.info("alerts: pruned %d finished outbox rows", pruned)
                    last_prune = time.monotonic()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the loop
                log.exception("alert dispatch failed; trying again in %.0fs", interval)
            stop.wait(interval)

    def _check_backlog(self, channel: str, pending: int) -> None:
        limit = self.cfg.backlog_alert_rows
        if not limit or pending < limit or not self.cfg.ops_alerts:
            return
        hour = utcnow().strftime("%Y-%m-%dT%H")
        self.store.enqueue_ops(f"backlog:{channel}:{hour}", "AeAnomalyDispatchBacklog",
                               channel, f"{pending} alert notifications wait for {channel}",
                               {"channel": channel, "pending": pending})


def start_background(cfg: AppConfig) -> tuple[threading.Thread, threading.Event] | None:
    """Run a dispatcher in a daemon thread (``serve``); None when no channel is configured."""
    if not cfg.alerts.channels():
        return None
    dispatcher = Dispatcher.from_config(cfg)
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run_forever, args=(stop,),
                              name="ae-anomaly-alerts", daemon=True)
    thread.start()
    return thread, stop
