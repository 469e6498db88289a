"""The package's shape: a light ``import ae_anomaly``, the lazy public API, and a wheel
that ships every subpackage, the configs and the flows under their own names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import ae_anomaly
from ae_anomaly.config import load_config, resolve_config_path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "mlflow", "prefect")


def test_import_and_version_load_no_heavy_modules():
    code = ("import json, sys, ae_anomaly; v = ae_anomaly.__version__; "
            f"print(json.dumps([v, [m for m in {HEAVY!r} if m in sys.modules]]))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env, cwd=REPO, timeout=60)
    version, heavy = json.loads(out.stdout)
    assert heavy == [] and version


def test_public_api_is_lazy_and_listed():
    assert set(ae_anomaly.__all__) == {"__version__", *ae_anomaly._EXPORTS}
    assert set(ae_anomaly.__all__) <= set(dir(ae_anomaly))
    assert ae_anomaly.load_config is load_config
    try:
        ae_anomaly.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("unknown names must raise AttributeError")


def test_wheel_lists_every_subpackage_and_the_data():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(tool["packages"])
    dirs = [REPO / "ae_anomaly", *(REPO / "ae_anomaly").rglob("*")]
    found = {".".join(p.relative_to(REPO).parts) for p in dirs
             if p.is_dir() and (any(p.glob("*.py")) or any(p.glob("*.html")))}
    assert found <= packages, f"add to [tool.setuptools] packages: {sorted(found - packages)}"
    assert tool["package-dir"] == {"ae_anomaly": "ae_anomaly", "ae_anomaly.configs": "configs",
                                   "ae_anomaly_flows": "flows"}
    assert not any(p == "flows" or p.startswith("flows.") for p in packages)
    data = tool["package-data"]
    assert "py.typed" in data["ae_anomaly"] and (REPO / "ae_anomaly" / "py.typed").is_file()
    assert data["ae_anomaly.configs"] == ["*.yaml"]
    assert data["ae_anomaly.configs.datasets"] == ["*.yaml"]


def test_config_paths_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = Path(resolve_config_path("configs/demo.yaml"))
    assert demo.is_file() and demo.read_text() == (REPO / "configs/demo.yaml").read_text()
    assert resolve_config_path("configs/nope.yaml") == "configs/nope.yaml"
    assert resolve_config_path("elsewhere/demo.yaml") == "elsewhere/demo.yaml"
    cfg = load_config("configs/netflow_demo.yaml")
    assert Path(cfg.data.netflow).is_file()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.yaml").write_text("training:\n  epochs: 3\n")
    assert resolve_config_path("configs/demo.yaml") == "configs/demo.yaml"  # local wins
    assert load_config("configs/demo.yaml").training.epochs == 3
