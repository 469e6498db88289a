"""Where flagged events go."""

from ae_anomaly.records import EventRecord
from ae_anomaly.sinks.base import Sink
from ae_anomaly.sinks.sql import SqlSink

__all__ = ["EventRecord", "Sink", "SqlSink"]
