"""Sharding a fleet of entities (ae_anomaly.fleet) and the ``execution`` section."""

from __future__ import annotations

import pytest

from ae_anomaly.config import AppConfig, ExecutionConfig, load_config
from ae_anomaly.errors import ConfigError
from ae_anomaly.fleet import split_shards

ENTITIES = [f"host-{i}" for i in range(7)]


def test_shard_size_gives_balanced_consecutive_shards():
    shards = split_shards(ENTITIES, ExecutionConfig(shard_size=3))
    assert [len(s) for s in shards] == [3, 2, 2]
    assert [e for s in shards for e in s] == ENTITIES


def test_number_of_shards_defaults_to_the_workers_and_never_exceeds_entities():
    assert [len(s) for s in split_shards(ENTITIES, ExecutionConfig(workers=3))] == [3, 2, 2]
    assert len(split_shards(ENTITIES, ExecutionConfig(shards=5))) == 5
    assert split_shards(ENTITIES[:2], ExecutionConfig(shards=8)) == [["host-0"], ["host-1"]]
    assert split_shards([], ExecutionConfig()) == []


def test_execution_section_defaults_to_local_and_validates():
    assert AppConfig().execution.backend == "local"
    cfg = load_config(None, ["execution.backend=dask", "execution.address=tcp://s:8786"])
    assert cfg.execution.address == "tcp://s:8786"
    with pytest.raises(ConfigError, match="shard_size or shards"):
        load_config(None, ["execution.shard_size=2", "execution.shards=2"])
    with pytest.raises(ConfigError, match="execution.backend"):
        load_config(None, ["execution.backend=ray"])
