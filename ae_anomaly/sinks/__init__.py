"""Where flagged events go.

Every sink meets :class:`~ae_anomaly.sinks.base.Sink` (``write(records) -> int``, idempotent
on ``event_id``); the configured one also keeps watermarks
(:class:`~ae_anomaly.sinks.base.IncrementalSink`). :func:`open_sink` is the one place that
picks a sink by ``sink.kind``: a new sink is one class, one config kind and one line in
``_SINKS``.
"""

from __future__ import annotations

from collections.abc import Callable

from ae_anomaly.config import AppConfig, SinkConfig
from ae_anomaly.errors import ConfigError
from ae_anomaly.records import EventRecord
from ae_anomaly.sinks.base import EventQuery, IncrementalSink, Sink
from ae_anomaly.sinks.sql import SqlSink

# (sink section, write alert notifications to the outbox) -> sink
_SINKS: dict[str, Callable[[SinkConfig, bool], IncrementalSink]] = {
    "sql": lambda c, outbox: SqlSink(c.url, c.table, outbox=outbox),
}


def open_sink(cfg: AppConfig) -> IncrementalSink:
    """The configured sink, chosen by ``sink.kind`` (its tables created or migrated); it
    writes alert notifications to the outbox when ``alerts`` has a channel (or ``outbox``).

    Raises:
        ConfigError: ``sink.kind`` names no sink.
    """
    opener = _SINKS.get(cfg.sink.kind)
    if opener is None:
        raise ConfigError(f"sink.kind '{cfg.sink.kind}' is not a sink; valid kinds: "
                          f"{', '.join(sorted(_SINKS))}")
    return opener(cfg.sink, cfg.alerts.outbox_enabled)


__all__ = ["EventQuery", "EventRecord", "IncrementalSink", "Sink", "SqlSink", "open_sink"]
