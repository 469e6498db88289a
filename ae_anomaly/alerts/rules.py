"""Which notifications are sent: severity, filters, the alarm budget, escalation, silences.

Rules are applied by the dispatcher when it first takes an outbox row for a channel, so a
silence set now holds back what is sent from now on, while the event itself is always
recorded. A held-back row is marked ``suppressed`` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

from ae_anomaly.alerts.store import Silence
from ae_anomaly.config import AlertsConfig


def severity_label(cfg: AlertsConfig, severity: float | None) -> str:
    """The label of the highest level whose minimum ``severity`` reaches (the lowest
    level below them all)."""
    levels = sorted(cfg.severity_levels.items(), key=lambda kv: kv[1])
    label = levels[0][0]
    for name, low in levels:
        if severity is not None and severity >= low:
            label = name
    return label


def level_rank(cfg: AlertsConfig, label: str | None) -> int:
    """Position of a severity label in ``severity_levels`` (higher is more severe)."""
    order = [k for k, _ in sorted(cfg.severity_levels.items(), key=lambda kv: kv[1])]
    return order.index(label) if label in order else -1


def _matches(value: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(value, p) for p in patterns)


def filtered_out(cfg: AlertsConfig, entity: str, model: str) -> str | None:
    """Why the entity / model filters hold an event back, or None."""
    if cfg.entities and not _matches(entity, cfg.entities):
        return f"entity {entity} not in alerts.entities"
    if _matches(entity, cfg.exclude_entities):
        return f"entity {entity} in alerts.exclude_entities"
    if cfg.models and not _matches(model, cfg.models):
        return f"model {model} not in alerts.models"
    if _matches(model, cfg.exclude_models):
        return f"model {model} in alerts.exclude_models"
    return None


def silenced_by(silences: list[Silence], entity: str, model: str, now: datetime
                ) -> Silence | None:
    """The first active silence that matches (entity and model patterns; unset matches any)."""
    for s in silences:
        if not (s.starts_at <= now < s.ends_at):
            continue
        if s.entity and not fnmatchcase(entity, s.entity):
            continue
        if s.model and not fnmatchcase(model, s.model):
            continue
        return s
    return None


@dataclass
class History:
    """What a channel has already been sent for one event."""

    last_action: str | None = None
    last_label: str | None = None
    first_sent_at: datetime | None = None


@dataclass
class Decision:
    """Send or hold back one outbox row on one channel.

    Attributes:
        send: whether to send.
        reason: why (``new``, ``escalated``, ``resolved``, ``test``, ``ops``) or why not.
        label: the severity label to send the alert under.
        supersedes: the label of the alert an escalation replaces.
    """

    send: bool
    reason: str
    label: str = ""
    supersedes: str | None = None


def decide(cfg: AlertsConfig, row: dict[str, Any], history: History,
           silences: list[Silence], sent_today: int, now: datetime) -> Decision:
    """Apply the rules to one outbox row for one channel.

    Args:
        cfg: the alerts section.
        row: the outbox row (``kind``, ``action``, ``entity``, ``model_name``, ``severity``).
        history: what the channel was already sent for this event.
        silences: the silences (active ones apply).
        sent_today: new alerts of this entity sent on the channel in the last 24 hours.
        now: the current time (UTC).
    """
    kind, entity, model = row["kind"], row["entity"], row["model_name"]
    if kind == "test":
        return Decision(True, "test", "info")
    if kind == "ops":
        label = str(row["payload"].get("severity", "warning"))
        if not cfg.ops_alerts:
            return Decision(False, "alerts.ops_alerts is off")
        s = silenced_by(silences, entity, model, now)
        if s is not None:
            return Decision(False, f"silenced by #{s.id} ({s.created_by}: {s.comment})")
        return Decision(True, "ops", label)
    label = severity_label(cfg, row["severity"])
    if row["action"] == "resolved":
        if history.last_action != "firing":
            return Decision(False, "never sent as firing: nothing to resolve")
        return Decision(True, "resolved", history.last_label or label)
    why = filtered_out(cfg, entity, model)
    if why is not None:
        return Decision(False, why)
    escalation = (history.last_action == "firing"
                  and level_rank(cfg, label) > level_rank(cfg, history.last_label))
    if history.last_action == "firing" and not escalation:
        return Decision(False, f"update without escalation (still {history.last_label})")
    if history.last_action is None and (row["severity"] or 0.0) < cfg.min_severity:
        return Decision(False, f"severity {row['severity']:.2f} below alerts.min_severity "
                               f"{cfg.min_severity:g}")
    s = silenced_by(silences, entity, model, now)
    if s is not None:
        return Decision(False, f"silenced by #{s.id} ({s.created_by}: {s.comment})")
    if escalation:
        return Decision(True, "escalated", label, supersedes=history.last_label)
    if sent_today >= cfg.max_per_entity_per_day:
        return Decision(False, f"alarm budget: {sent_today} alerts for {entity} in 24 h "
                               f"(alerts.max_per_entity_per_day {cfg.max_per_entity_per_day})")
    return Decision(True, "new", label)
