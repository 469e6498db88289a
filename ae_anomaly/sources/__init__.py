"""Where scheduled, incremental scoring reads its data: a landing folder or a SQL table.

Every source meets the :class:`~ae_anomaly.sources.base.Source` protocol; :func:`open_source`
is the one place that picks one by ``source.kind``. A new source is one class, one config
kind and one line in ``_SOURCES``.

* ``sql``: a raw metrics table (:mod:`ae_anomaly.sources.sql`).
* ``folder``: a landing folder ingested into a staging table
  (:mod:`ae_anomaly.sources.landing`).
"""

from __future__ import annotations

from collections.abc import Callable

from ae_anomaly.config import AppConfig
from ae_anomaly.errors import ConfigError
from ae_anomaly.sources.base import (
    FeatureSchemaError,
    FileNotReady,
    FrameValidator,
    Source,
    Validate,
    check_feature_schema,
    is_transient,
    parse_ts,
    pid_tag,
)
from ae_anomaly.sources.landing import (
    IngestReport,
    LandingFolder,
    open_landing,
    open_landing_source,
    staging_url,
)
from ae_anomaly.sources.sql import SqlMetricsSource, open_sql_source

_SOURCES: dict[str, Callable[..., Source]] = {
    "folder": open_landing_source,
    "sql": open_sql_source,
}


def open_source(cfg: AppConfig, read_only: bool = False) -> Source:
    """The configured incremental source, chosen by ``source.kind``; ``read_only`` for a
    reader that must not create tables or take write locks (the dashboard).

    Raises:
        ConfigError: ``source.kind`` names no incremental source (e.g. ``files``, which
            scores ``data.score`` as a whole instead).
    """
    opener = _SOURCES.get(cfg.source.kind)
    if opener is None:
        raise ConfigError(f"source.kind '{cfg.source.kind}' is not an incremental source; "
                          f"valid kinds: {', '.join(sorted(_SOURCES))} (a landing folder "
                          "with source.path, or a SQL table with source.url)")
    return opener(cfg, read_only=read_only)


__all__ = [
    "FeatureSchemaError",
    "FileNotReady",
    "FrameValidator",
    "IngestReport",
    "LandingFolder",
    "Source",
    "SqlMetricsSource",
    "Validate",
    "check_feature_schema",
    "is_transient",
    "open_landing",
    "open_source",
    "parse_ts",
    "pid_tag",
    "staging_url",
]
