"""Secrets: masking, ``${ENV_VAR}`` interpolation, overrides moved out of flow parameters,
and the CLI's error lines."""

from __future__ import annotations

import os

import pytest

from ae_anomaly.config import load_config
from ae_anomaly.errors import ConfigError
from ae_anomaly.secrets import mask_text, mask_values, stash_secrets


@pytest.mark.parametrize(("text", "masked"), [
    ("postgresql+psycopg://ae:s3cret@db:5432/x?sslmode=require",
     "postgresql+psycopg://ae:***@db:5432/x?sslmode=require"),
    ("postgresql+psycopg://ae:s3cr@et@db/x", "postgresql+psycopg://ae:***@db/x"),
    ("http://user:p%40ss@mlflow:5000/api", "http://user:***@mlflow:5000/api"),
    ("postgresql+psycopg://db/x?user=ae&password=abc&sslmode=require",
     "postgresql+psycopg://db/x?user=ae&password=***&sslmode=require"),
    ("host=db dbname=x password=zz user=ae", "host=db dbname=x password=*** user=ae"),
    ("postgresql+psycopg://ae:${AE_DB_PASSWORD}@db/x",
     "postgresql+psycopg://ae:${AE_DB_PASSWORD}@db/x"),
    ("postgresql+psycopg://ae@db:5432/x", "postgresql+psycopg://ae@db:5432/x"),
    ("http://mlflow:5000/a@b", "http://mlflow:5000/a@b"),
    ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
])
def test_mask_text(text: str, masked: str) -> None:
    assert mask_text(text) == masked
    assert mask_text(masked) == masked


def test_mask_values_walks_a_config_mapping() -> None:
    data = {"sink": {"url": "postgresql+psycopg://ae:hunter2@db/x", "table": "t"},
            "list": ["http://u:hunter2@h/"], "n": 3}
    assert "hunter2" not in str(mask_values(data))
    assert mask_values(data)["n"] == 3 and data["sink"]["url"].endswith("hunter2@db/x")


def test_env_references_resolve_in_yaml_and_overrides(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AE_TEST_DB_PASSWORD", "hunter2")
    path = tmp_path / "c.yaml"
    path.write_text("sink:\n  url: postgresql+psycopg://ae:${AE_TEST_DB_PASSWORD}@db/x\n")
    assert load_config(path).sink.url == "postgresql+psycopg://ae:hunter2@db/x"
    cfg = load_config(None, ["source.url=postgresql+psycopg://r:${AE_TEST_DB_PASSWORD}@m/x",
                             "source.kind=sql"])
    assert cfg.source.url == "postgresql+psycopg://r:hunter2@m/x"


def test_missing_env_reference_names_the_key_and_variable() -> None:
    os.environ.pop("AE_TEST_UNSET_VAR", None)
    with pytest.raises(ConfigError, match=r"key 'sink.url': environment variable "
                                          r"AE_TEST_UNSET_VAR is not set"):
        load_config(None, ["sink.url=postgresql+psycopg://ae:${AE_TEST_UNSET_VAR}@db/x"])


def test_config_error_masks_a_password_in_the_overrides() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["sink.url=postgresql+psycopg://ae:hunter2@db/x", "sink.bogus=1"])
    assert "hunter2" not in str(err.value) and "ae:***@db" in str(err.value)


def test_stash_secrets_moves_passwords_into_the_environment(monkeypatch) -> None:
    for key in [k for k in os.environ if k.startswith("AE_ANOMALY_SECRET_")]:
        monkeypatch.delenv(key)
    out = stash_secrets(["sink.url=postgresql+psycopg://ae:hunter2@db/x", "training.epochs=2",
                         "source.url=postgresql+psycopg://r:${MINE}@m/x"])
    assert "hunter2" not in " ".join(out)
    assert out[1:] == ["training.epochs=2", "source.url=postgresql+psycopg://r:${MINE}@m/x"]
    monkeypatch.setenv("MINE", "x")
    # the stashed reference resolves when the flow loads the configuration
    assert load_config(None, out[:1]).sink.url == "postgresql+psycopg://ae:hunter2@db/x"
    assert stash_secrets(["sink.url=postgresql+psycopg://ae:hunter2@db/y"])[0] == \
        out[0].replace("/x", "/y")  # the same secret reuses its variable


def test_cli_config_error_prints_the_override_masked(capsys) -> None:
    from ae_anomaly.cli import main

    rc = main(["config", "--set", "sink.url=postgresql+psycopg://ae:hunter2@db/x",
               "--set", "sink.bogus=1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("ae-anomaly: error: ") and len(err.splitlines()) == 1
    assert "hunter2" not in err and "ae:***@db/x" in err


def test_cli_config_output_masks_passwords(capsys) -> None:
    from ae_anomaly.cli import main

    assert main(["config", "--set", "sink.url=postgresql+psycopg://ae:hunter2@db/x"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "ae:***@db/x" in out


def test_cli_log_lines_mask_passwords(caplog) -> None:
    import logging

    from ae_anomaly.cli import _setup_logging

    _setup_logging(False)
    with caplog.at_level(logging.WARNING):
        logging.getLogger("prefect").warning(
            "cannot reach %s", "postgresql+psycopg://ae:hunter2@db/x")
    assert "hunter2" not in caplog.text and "ae:***@db/x" in caplog.text
