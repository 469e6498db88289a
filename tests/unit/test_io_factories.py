"""One factory each picks the sink and the source by their config ``kind``."""

import pytest

from ae_anomaly.config import AppConfig, load_config
from ae_anomaly.errors import ConfigError
from ae_anomaly.sinks import IncrementalSink, SqlSink, open_sink
from ae_anomaly.sources import open_source


def _with(cfg: AppConfig, section: str, **update) -> AppConfig:
    # model_copy skips validation: how a kind the config does not know reaches a factory.
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=update)})


def test_sink_kind_defaults_to_sql(tmp_path):
    cfg = load_config(None, [f"sink.url=sqlite:///{tmp_path}/a.db"])
    assert cfg.sink.kind == "sql"
    sink = open_sink(cfg)
    assert isinstance(sink, SqlSink)
    sink_type: IncrementalSink = sink  # the protocol the scorer needs
    assert sink_type.write([]) == 0


def test_unknown_sink_kind_is_a_config_error_naming_the_valid_kinds():
    with pytest.raises(ConfigError, match="sql") as err:
        load_config(None, ["sink.kind=kafka"])
    assert "sink.kind" in str(err.value)
    with pytest.raises(ConfigError) as err:
        open_sink(_with(AppConfig(), "sink", kind="kafka"))
    msg = str(err.value)
    assert "\n" not in msg
    assert "'kafka'" in msg and "valid kinds: sql" in msg


@pytest.mark.parametrize("kind", ["files", "kafka"])
def test_non_incremental_source_kind_is_a_config_error_naming_the_valid_kinds(kind):
    cfg = _with(AppConfig(), "source", kind=kind)
    with pytest.raises(ConfigError) as err:
        open_source(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"'{kind}'" in msg and "valid kinds: folder, sql" in msg


def test_staging_url_defaults_to_the_sink_url(tmp_path):
    from ae_anomaly.sources import staging_url

    cfg = load_config(None, ["sink.url=sqlite:///a.db", "source.kind=folder",
                             f"source.path={tmp_path}"])
    assert staging_url(cfg) == "sqlite:///a.db"
    cfg = load_config(None, ["sink.url=sqlite:///a.db", "source.kind=folder",
                             f"source.path={tmp_path}", "source.staging_url=sqlite:///b.db"])
    assert staging_url(cfg) == "sqlite:///b.db"
