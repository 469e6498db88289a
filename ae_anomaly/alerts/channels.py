"""Where notifications go: Alertmanager's API, a JSON webhook, a Slack-compatible webhook.

A :class:`Notification` is one outbox row as the dispatcher decided to send it (firing or
resolved, with the severity label the receiver knows it by). Every channel posts JSON over
HTTP with the standard library and raises :class:`DeliveryError` on failure: ``permanent``
for a 4xx answer other than 408 / 429 (the receiver refuses the payload: retrying cannot
help, the row is parked), transient otherwise (connection refused, timeout, 5xx).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ae_anomaly.config import AlertsConfig

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-AE-Anomaly-Signature"
TIMESTAMP_HEADER = "X-AE-Anomaly-Timestamp"
DELIVERY_HEADER = "X-AE-Anomaly-Delivery"  # "<outbox id>": the receiver's idempotency key
_ZERO = "0001-01-01T00:00:00Z"  # Alertmanager's "not set" time
_OPS_ALERTNAMES = {"test": "AeAnomalyTest"}


class DeliveryError(Exception):
    """A post failed; ``permanent`` when retrying cannot help (the row is parked)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass
class Notification:
    """One outbox row on its way to one channel.

    Attributes:
        id: the outbox row id (order and idempotency key).
        kind: ``event``, ``ops`` or ``test``.
        action: ``firing`` or ``resolved``.
        change: what happened (``new``, ``grew``, ``closed``, ``deleted``, ``escalated``, or
            the operational alert's name).
        entity: the entity (a deployment or source for operational alerts).
        model_name: the model (events).
        payload: the event snapshot, or the operational alert's fields.
        severity_label: the ``severity`` label the alert is sent (and resolved) under.
        supersedes: on an escalation, the severity label of the alert this one replaces
            (Alertmanager resolves it).
        first_sent_at: when this event was first sent on the channel (None: now).
    """

    id: int
    kind: str
    action: str
    change: str
    entity: str
    model_name: str
    payload: dict[str, Any]
    severity_label: str
    supersedes: str | None = None
    first_sent_at: datetime | None = None
    created_at: datetime | None = field(default=None, repr=False)


def _rfc3339(ts: datetime) -> str:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _parse(ts: str | None) -> datetime | None:
    return None if not ts else datetime.fromisoformat(ts).replace(tzinfo=None)


# ------------------------------------------------------------------------- payloads
def alert_labels(n: Notification, cfg: AlertsConfig, severity_label: str | None = None
                 ) -> dict[str, str]:
    """The labels of a notification's alert: its identity in Alertmanager."""
    p = n.payload
    if n.kind == "event":
        labels = {"alertname": "AeAnomalyEvent", "entity": n.entity,
                  "model": n.model_name, "model_version": str(p.get("model_version", "")),
                  "event_id": str(p.get("event_id", "")),
                  "severity": severity_label or n.severity_label}
    else:
        labels = {"alertname": _OPS_ALERTNAMES.get(n.kind, str(p.get("alertname"))),
                  "entity": n.entity, "severity": str(p.get("severity", "warning"))}
        if n.kind == "test":
            labels["test_id"] = str(n.id)
    return {**cfg.labels, **labels}


def alert_annotations(n: Notification, cfg: AlertsConfig) -> dict[str, str]:
    """Summary, top channels, peak / threshold and the dashboard link of a notification."""
    p = n.payload
    if n.kind != "event":
        out = {"summary": str(p.get("summary", ""))}
        if p.get("details"):
            out["description"] = json.dumps(p["details"], sort_keys=True, default=str)
        return out
    chans = ", ".join(f"{k} {float(v):.0%}" for k, v in list(p["top_channels"].items())[:3])
    state = "open" if p.get("is_open") else f"ended {p['end_ts']}"
    return {
        "summary": (f"{n.entity}: anomaly since {p['start_ts']} ({state}), severity "
                    f"{float(p['severity']):.1f}" + (f", driven by {chans}" if chans else "")),
        "top_channels": chans,
        "peak": f"peak score {float(p['peak_score']):.4g} / threshold "
                f"{float(p['threshold']):.4g} at {p['peak_ts']}",
        "dashboard": event_url(cfg, str(p["event_id"])),
        "change": n.change,
    }


def event_url(cfg: AlertsConfig, event_id: str) -> str:
    """The dashboard page of an event."""
    return f"{cfg.dashboard_url.rstrip('/')}/events/{event_id}"


def _window(n: Notification, cfg: AlertsConfig, now: datetime) -> tuple[datetime, datetime]:
    """``startsAt`` and ``endsAt`` of a notification's alert, as Alertmanager needs them.

    Starts at the event's first step (never in the future). A firing open event ends
    ``open_ttl_hours`` from now (it is resolved explicitly when it closes); a firing closed
    event or an operational alert ends ``min_firing_seconds`` from now, so Alertmanager
    notifies before it resolves; a resolution ends now, but not before the alert has fired
    for ``min_firing_seconds``.
    """
    start = _parse(n.payload.get("start_ts")) or n.created_at or now
    start = min(start, now)
    hold = timedelta(seconds=cfg.min_firing_seconds)
    if n.action == "resolved":
        end = max(now, (n.first_sent_at or now) + hold)
    elif n.kind == "event" and n.payload.get("is_open"):
        end = now + timedelta(hours=cfg.open_ttl_hours)
    else:
        end = max(now, (n.first_sent_at or now) + hold)
    return start, max(end, start)


def alertmanager_alerts(n: Notification, cfg: AlertsConfig, now: datetime | None = None
                        ) -> list[dict[str, Any]]:
    """The alerts ``POST /api/v2/alerts`` receives for one notification (an escalation also
    resolves the alert it supersedes)."""
    now = now or _now()
    start, end = _window(n, cfg, now)
    gen = event_url(cfg, str(n.payload["event_id"])) if n.kind == "event" else \
        cfg.dashboard_url
    out = [{"labels": alert_labels(n, cfg), "annotations": alert_annotations(n, cfg),
            "startsAt": _rfc3339(start), "endsAt": _rfc3339(end), "generatorURL": gen}]
    if n.supersedes:
        out.append({"labels": alert_labels(n, cfg, n.supersedes),
                    "annotations": alert_annotations(n, cfg), "startsAt": _rfc3339(start),
                    "endsAt": _rfc3339(now), "generatorURL": gen})
    return out


def _fingerprint(labels: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]


def webhook_payload(n: Notification, cfg: AlertsConfig, now: datetime | None = None
                    ) -> dict[str, Any]:
    """Alertmanager's webhook payload (version 4) for one notification."""
    now = now or _now()
    start, end = _window(n, cfg, now)
    labels, ann = alert_labels(n, cfg), alert_annotations(n, cfg)
    group = {"alertname": labels["alertname"], "entity": labels["entity"]}
    return {
        "version": "4", "receiver": "ae-anomaly", "status": n.action,
        "groupKey": "{}:" + json.dumps(group, sort_keys=True), "truncatedAlerts": 0,
        "groupLabels": group, "commonLabels": labels, "commonAnnotations": ann,
        "externalURL": cfg.dashboard_url,
        "alerts": [{"status": n.action, "labels": labels, "annotations": ann,
                    "startsAt": _rfc3339(start),
                    "endsAt": _rfc3339(end) if n.action == "resolved" else _ZERO,
                    "generatorURL": ann.get("dashboard", cfg.dashboard_url),
                    "fingerprint": _fingerprint(labels)}],
    }


def slack_payload(n: Notification, cfg: AlertsConfig) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` plus one section block)."""
    ann = alert_annotations(n, cfg)
    icon = {"firing": ":rotating_light:", "resolved": ":white_check_mark:"}[n.action]
    verb = "RESOLVED" if n.action == "resolved" else n.severity_label.upper()
    title = f"{icon} [{verb}] {ann['summary']}"
    lines = [title]
    if "peak" in ann:
        lines.append(ann["peak"])
        lines.append(f"<{ann['dashboard']}|Open in the dashboard>")
    elif "description" in ann:
        lines.append(f"`{ann['description'][:500]}`")
    text = "\n".join(lines)
    return {"text": title, "blocks": [{"type": "section",
                                       "text": {"type": "mrkdwn", "text": text}}]}


# ------------------------------------------------------------------------- posting
def post_json(url: str, body: Any, timeout: float, headers: dict[str, str] | None = None,
              secret: bytes | None = None) -> int:
    """POST ``body`` as JSON; returns the status. Signs it with HMAC-SHA256 when ``secret``.

    Raises:
        DeliveryError: no 2xx answer (permanent for a 4xx other than 408 and 429).
    """
    data = json.dumps(body, separators=(",", ":"), default=str).encode()
    hdrs = {"Content-Type": "application/json", "User-Agent": "ae-anomaly",
            **(headers or {})}
    if secret is not None:
        ts = str(int(time.time()))
        mac = hmac.new(secret, ts.encode() + b"." + data, hashlib.sha256).hexdigest()
        hdrs[TIMESTAMP_HEADER] = ts
        hdrs[SIGNATURE_HEADER] = f"sha256={mac}"
    req = urllib.request.Request(url, data=data, headers=hdrs, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - configured URL
            return int(resp.status)
    except urllib.error.HTTPError as err:
        detail = err.read(300).decode("utf-8", "replace").strip()
        permanent = 400 <= err.code < 500 and err.code not in (408, 429)
        raise DeliveryError(f"HTTP {err.code} from {url}: {detail}", permanent) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DeliveryError(f"{url}: {reason}") from None


def verify_signature(secret: bytes, body: bytes, timestamp: str, signature: str) -> bool:
    """Check a webhook's ``X-AE-Anomaly-Signature`` (for receivers and tests)."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"sha256={mac}", signature)


class Channel:
    """A configured destination; ``send`` posts one batch of notifications (in order)."""

    name = ""
    batch = 1

    def __init__(self, url: str, cfg: AlertsConfig) -> None:
        self.url = url
        self.cfg = cfg

    def send(self, batch: list[Notification]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _secret(self) -> bytes | None:
        env = self.cfg.webhook_secret_env
        if not env:
            return None
        value = os.environ.get(env)
        if not value:
            raise DeliveryError(f"alerts.webhook_secret_env names {env}, which is not set",
                                permanent=False)
        return value.encode()


class AlertmanagerChannel(Channel):
    """Posts to Alertmanager's ``/api/v2/alerts`` as Prometheus does (a list of alerts)."""

    name = "alertmanager"
    batch = 50

    def send(self, batch: list[Notification]) -> None:
        now = _now()
        alerts = [a for n in batch for a in alertmanager_alerts(n, self.cfg, now)]
        post_json(f"{self.url.rstrip('/')}/api/v2/alerts", alerts, self.cfg.timeout_seconds)


class WebhookChannel(Channel):
    """Posts Alertmanager's version-4 webhook payload, one notification per post."""

    name = "webhook"

    def send(self, batch: list[Notification]) -> None:
        for n in batch:
            post_json(self.url, webhook_payload(n, self.cfg), self.cfg.timeout_seconds,
                      {DELIVERY_HEADER: str(n.id)}, self._secret())


class SlackChannel(Channel):
    """Posts a Slack incoming-webhook message, one notification per post."""

    name = "slack"

    def send(self, batch: list[Notification]) -> None:
        for n in batch:
            post_json(self.url, slack_payload(n, self.cfg), self.cfg.timeout_seconds,
                      {DELIVERY_HEADER: str(n.id)}, self._secret())


CHANNELS: dict[str, type[Channel]] = {c.name: c for c in (AlertmanagerChannel, WebhookChannel,
                                                          SlackChannel)}


def open_channels(cfg: AlertsConfig) -> list[Channel]:
    """The configured channels, in a fixed order."""
    return [CHANNELS[name](url, cfg) for name, url in cfg.channels().items()]
