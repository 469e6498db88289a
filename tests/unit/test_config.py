from pathlib import Path

import pytest

from ae_anomaly.config import AppConfig, expand_path, load_config
from ae_anomaly.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_and_shipped_configs_load():
    assert isinstance(load_config(), AppConfig)
    for path in (REPO / "configs").glob("*.yaml"):
        load_config(path)


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["training.epochs=3", "calibration.alpha=0.01",
                             "model.channels=[8, 4]", "training.progress=false"])
    assert cfg.training.epochs == 3 and cfg.calibration.alpha == 0.01
    assert cfg.model.channels == [8, 4] and cfg.training.progress is False


def test_override_switches_model_family():
    cfg = load_config(None, ["model.name=dense_ae", "model.hidden=[16]"])
    assert cfg.model.name == "dense_ae" and cfg.model.hidden == [16]


def test_typo_names_key_and_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("training:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(f) in str(e.value) and "training.epoch" in str(e.value)
    assert "unknown key" in str(e.value)


def test_wrong_type_names_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("calibration:\n  alpha: lots\n")
    with pytest.raises(ConfigError, match=r"calibration\.alpha"):
        load_config(f)


def test_out_of_range_value():
    with pytest.raises(ConfigError, match=r"calibration\.alpha"):
        load_config(None, ["calibration.alpha=0.9"])


def test_unknown_model_lists_valid_ones():
    with pytest.raises(ConfigError, match="conv_ae"):
        load_config(None, ["model.name=transformer"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["training.epochs"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_names_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("training:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(f)


def test_home_expansion(monkeypatch, tmp_path):
    monkeypatch.setenv("AE_ANOMALY_HOME", str(tmp_path))
    assert expand_path("sqlite:///{home}/x.db") == f"sqlite:///{tmp_path}/x.db"
    assert expand_path("{home}/a.csv") == f"{tmp_path}/a.csv"
