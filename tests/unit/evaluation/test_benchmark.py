"""The benchmark harness end to end on tiny synthetic SMD- and NAB-format folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ae_anomaly.cli import main
from ae_anomaly.errors import ConfigError
from ae_anomaly.evaluation.benchmark import (
    FLOW_ALPHA,
    RECORD_KEYS,
    TIME_SERIES_ONLY,
    resolve_settings,
    run_benchmark,
)
from ae_anomaly.evaluation.report import render
from ae_anomaly.postprocess import reduce_channels, smooth_scores

TINY_AE = ["window.length=16", "training.epochs=1", "model.channels=[8]", "model.latent_dim=4",
           "training.batch_size=64"]


def _series(rng: np.random.Generator, n: int, c: int, phase: float) -> np.ndarray:
    t = np.arange(n)[:, None]
    base = 0.5 + 0.3 * np.sin(2 * np.pi * t / 50 + phase + np.arange(c)[None, :])
    return np.clip(base + rng.normal(0, 0.02, (n, c)), 0, 1)


@pytest.fixture(scope="module")
def smd_dir(tmp_path_factory) -> Path:
    """Two machines, 4 metrics, 2000 train / 2000 test steps; 6 level shifts of 8 steps."""
    root = tmp_path_factory.mktemp("smd")
    for sub in ("train", "test", "test_label", "interpretation_label"):
        (root / sub).mkdir()
    rng = np.random.default_rng(0)
    for i, machine in enumerate(["machine-a", "machine-b"]):
        train = _series(rng, 2000, 4, i)
        test = _series(rng, 2000, 4, i)
        labels = np.zeros(2000, dtype=int)
        for start in (100, 400, 750, 1100, 1500, 1800):
            test[start:start + 8, :2] += 0.8
            labels[start:start + 8] = 1
        np.savetxt(root / "train" / f"{machine}.txt", train, delimiter=",", fmt="%.5f")
        np.savetxt(root / "test" / f"{machine}.txt", test, delimiter=",", fmt="%.5f")
        np.savetxt(root / "test_label" / f"{machine}.txt", labels, fmt="%d")
        (root / "interpretation_label" / f"{machine}.txt").write_text("100-107:1,2\n")
    return root


def _run(smd_dir: Path, out: Path, models: list[str], seeds=(0,), overrides=(), **kw):
    settings = resolve_settings("smd", smd_dir, models, overrides=[*TINY_AE, *overrides], **kw)
    new: list[dict] = []
    data = run_benchmark(settings, out, models, list(seeds), progress=False,
                         on_cell=new.append)
    return data, new


def test_end_to_end_schema_and_floors(smd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "res.json"
    models = ["conv_ae", "pca", "iforest", "random"]
    data, new = _run(smd_dir, out, models, seeds=(0, 1),
                     calibration_methods=["conformal", "k_sigma"], alphas=[0.01, 0.001])
    assert len(new) == len(data["records"]) == 2 * 4 * 2
    on_disk = json.loads(out.read_text())  # strict JSON: NaN is written as null
    assert on_disk["records"] == json.loads(json.dumps(data["records"]))
    for rec in on_disk["records"]:
        missing = [k for k in RECORD_KEYS if k not in rec]
        assert not missing, missing
        assert rec["alpha"] == 0.01 and rec["calibration"] == "conformal"
        assert [(c["calibration"], c["alpha"]) for c in rec["calibrations"]] == [
            ("conformal", 0.01), ("conformal", 0.001), ("k_sigma", 0.01)]
        assert 0 <= rec["far_check"] <= 1 and rec["train_s"] >= 0 and rec["score_s"] >= 0
    summary = on_disk["summary"]
    assert set(summary) == set(models)
    for m in models:
        assert summary[m]["n_cells"] == 4
        for key in ("auc_pr", "auc_roc", "f1", "f1_pa", "best_f1", "far_check", "far_normal"):
            assert key in summary[m]
        assert "conformal@0.01" in summary[m]["calibrations"]
    # behavioural floors: the injected level shifts are easy; random is the chance level
    assert summary["pca"]["auc_roc"] >= 0.9
    assert summary["random"]["f1"] <= 0.05
    assert 0.25 <= summary["random"]["auc_roc"] <= 0.75  # smoothed noise: few effective samples
    assert on_disk["meta"]["machine"]["nproc"] >= 1
    assert on_disk["meta"]["runs"][0]["cells_computed"] == 16
    md = render([out])
    assert "`pca`" in md and "`random`" in md and "best F1 (oracle)" in md


def test_resume_skips_finished_cells(smd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "res.json"
    first, new = _run(smd_dir, out, ["pca", "random"])
    assert len(new) == 4
    again, new = _run(smd_dir, out, ["pca", "random"])
    assert new == [] and again["records"] == first["records"]
    more, new = _run(smd_dir, out, ["pca", "random", "iforest"], seeds=(0, 1))
    assert sorted((r["model"], r["seed"]) for r in new) == sorted(
        [("iforest", 0), ("iforest", 1), ("pca", 1), ("random", 1)] * 2)
    assert more["records"][:4] == first["records"]
    assert len(more["meta"]["runs"]) == 3


def test_resume_refuses_other_settings(smd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "res.json"
    _run(smd_dir, out, ["random"])
    with pytest.raises(ConfigError, match="other settings"):
        _run(smd_dir, out, ["random"], overrides=["postprocess.smooth=3"])
    _run(smd_dir, out, ["random", "pca"], overrides=["models.pca.variance=0.5"])
    with pytest.raises(ConfigError, match="other model settings"):
        _run(smd_dir, out, ["pca"], overrides=["models.pca.variance=0.9"])


def test_settings_precedence_and_errors(smd_dir: Path, tmp_path: Path) -> None:
    s = resolve_settings("smd", smd_dir, ["conv_ae", "pca"],
                         overrides=["postprocess.smooth=3", "models.pca.variance=0.9",
                                    "model.latent_dim=4", "models.conv_ae.kernel_size=3"])
    assert s.cfg.postprocess.smooth == 3 and s.cfg.training.progress is False
    assert s.model_params["pca"]["variance"] == 0.9
    assert s.model_params["pca"]["scaler"] == "none"  # the SMD default
    assert s.model_params["conv_ae"]["latent_dim"] == 4
    assert s.model_params["conv_ae"]["kernel_size"] == 3
    with pytest.raises(ConfigError, match="unknown model"):
        resolve_settings("smd", smd_dir, ["nope"])
    with pytest.raises(ConfigError, match="bench.smoth"):
        resolve_settings("smd", smd_dir, ["pca"], overrides=["bench.smoth=3"])
    with pytest.raises(ConfigError, match="best_f1"):
        resolve_settings("smd", smd_dir, ["pca"], calibration_methods=["best_f1"])
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("window:\n  length: 32\n")
    s = resolve_settings("nab", smd_dir, ["pca"], config_path=str(cfg_file))
    assert s.cfg.window.length == 32  # the file beats the dataset default (16)
    assert resolve_settings("nab", smd_dir, ["pca"]).cfg.window.length == 16


def test_cli_benchmark(smd_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.json"
    rc = main(["benchmark", "--dataset", "smd", "--data-dir", str(smd_dir), "--entities",
               "machine-a", "--models", "pca,random", "--seeds", "0", "--no-progress",
               "--output", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "`pca`" in printed and "`random`" in printed
    recs = json.loads(out.read_text())["records"]
    assert {r["entity"] for r in recs} == {"machine-a"}
    rc = main(["benchmark", "--dataset", "smd", "--data-dir", str(smd_dir), "--models",
               "bogus", "--output", str(tmp_path / "x.json")])
    assert rc == 2


def test_smoothing_and_channel_reduce_hand_computed() -> None:
    s = np.array([0.0, 0.0, 6.0, 0.0, 0.0])
    np.testing.assert_allclose(smooth_scores(s, 3, "center"), [0, 2, 2, 2, 0])
    np.testing.assert_allclose(smooth_scores(s, 3, "trailing"), [0, 0, 2, 2, 2])
    np.testing.assert_allclose(smooth_scores(s, 2, "center"), [0, 0, 3, 3, 0])
    np.testing.assert_allclose(smooth_scores(s, 1), s)
    ch = np.array([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    np.testing.assert_allclose(reduce_channels(ch, "mean"), [3, 1])
    np.testing.assert_allclose(reduce_channels(ch, "max"), [6, 3])
    np.testing.assert_allclose(reduce_channels(ch, "topk", 2), [4, 1.5])


def test_pca_baseline_is_detector_shaped(smd_dir: Path) -> None:
    from ae_anomaly.config import CalibrationConfig, PCAConfig, PreprocessConfig
    from ae_anomaly.data.timeseries import read_smd
    from ae_anomaly.detectors import SeriesBaseline

    train, _ = read_smd(smd_dir, "machine-a", "train")
    test, labels = read_smd(smd_dir, "machine-a", "test")
    det = SeriesBaseline(PCAConfig(variance=0.9), preprocess=PreprocessConfig(),
                         calibration=CalibrationConfig(alpha=0.01)).fit(train)
    scores = det.score(test)
    assert scores.shape == (2000,) and np.isfinite(scores).all()
    # the threshold came from the held-out tail of the training data
    assert math.isfinite(det.threshold_)
    assert det.predict(test)[labels == 1].mean() > det.predict(test)[labels == 0].mean()


@pytest.fixture(scope="module")
def nab_dir(tmp_path_factory) -> Path:
    """Two NAB files of 2000 five-minute rows; one anomaly window in each."""
    root = tmp_path_factory.mktemp("nab")
    (root / "data" / "cat").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(1)
    windows = {}
    for name in ("a", "b"):
        ts = np.datetime64("2020-01-01T00:00") + np.arange(2000) * np.timedelta64(5, "m")
        v = np.sin(np.arange(2000) / 8) + rng.normal(0, 0.05, 2000)
        v[1500:1506] += 4
        lines = ["timestamp,value"] + [
            f"{str(t).replace('T', ' ')}:00,{x:.4f}" for t, x in zip(ts, v, strict=True)]
        (root / "data" / "cat" / f"{name}.csv").write_text("\n".join(lines) + "\n")
        windows[f"cat/{name}.csv"] = [[f"{str(ts[1490]).replace('T', ' ')}:00.000000",
                                       f"{str(ts[1520]).replace('T', ' ')}:00.000000"]]
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    return root


def test_nab_summary_has_profiles(nab_dir: Path, tmp_path: Path) -> None:
    settings = resolve_settings("nab", nab_dir, ["pca", "random"],
                                overrides=["window.length=8", "models.pca.window=8"])
    data = run_benchmark(settings, tmp_path / "nab.json", ["pca", "random"], [0],
                         progress=False)
    assert len(data["records"]) == 4
    for rec in data["records"]:
        assert rec["n_test"] == 2000 - 300  # after the probationary 15%
        assert all(d >= 300 for d in rec["detections"])
    for m in ("pca", "random"):
        for key in ("nab_standard", "nab_reward_low_fp", "nab_reward_low_fn"):
            assert math.isfinite(data["summary"][m][key])
    assert data["summary"]["pca"]["nab_standard"] > data["summary"]["random"]["nab_standard"]
    assert "NAB" in render([tmp_path / "nab.json"])


def test_a_rule_that_cannot_be_fitted_raises_no_alarm_and_says_why(nab_dir: Path,
                                                                   tmp_path: Path) -> None:
    """pot on a flat series (all calibration scores tied) cannot be fitted: that file gets
    no detections under pot, with the reason in the record; conformal is unaffected."""
    import shutil

    root = tmp_path / "nab"
    shutil.copytree(nab_dir, root)
    ts = np.datetime64("2020-01-01T00:00") + np.arange(2000) * np.timedelta64(5, "m")
    lines = ["timestamp,value"] + [f"{str(t).replace('T', ' ')}:00,1.0" for t in ts]
    (root / "data" / "cat" / "flat.csv").write_text("\n".join(lines) + "\n")
    windows = json.loads((root / "labels" / "combined_windows.json").read_text())
    windows["cat/flat.csv"] = []
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    settings = resolve_settings("nab", root, ["pca"], calibration_methods=["pot", "conformal"],
                                alphas=[0.001],
                                overrides=["window.length=8", "models.pca.window=8"])
    data = run_benchmark(settings, tmp_path / "nab.json", ["pca"], [0], progress=False)
    by_file = {r["entity"]: r for r in data["records"]}
    flat = by_file["cat/flat.csv"]["calibrations"]
    assert "tied scores" in flat[0]["calibration_error"] and flat[0]["detections"] == []
    assert "calibration_error" not in flat[1]
    pot_a = by_file["cat/a.csv"]["calibrations"][0]
    assert "calibration_error" not in pot_a and math.isfinite(pot_a["threshold"])
    assert math.isfinite(data["summary"]["pca"]["nab_standard"])


def test_flows_tabular_benchmark(tmp_path: Path) -> None:
    from ae_anomaly.data.synthetic_netflow import generate_netflow

    repo = Path(__file__).resolve().parents[3]
    data = tmp_path / "flows"
    for split, seed in (("train", 1), ("test", 2)):
        (data / split).mkdir(parents=True)
        frame, _ = generate_netflow(n_hosts=2, days=0.25, seed=seed, attack_count=1)
        frame.to_csv(data / split / "flows.csv", index=False)
    models = ["dense_ae", "pca", "iforest", "random"]
    settings = resolve_settings(
        "netflow", data, models, dataset_config=repo / "configs" / "datasets" / "netflow.yaml",
        overrides=["training.epochs=2", "model.hidden=[16]", "model.latent_dim=4"])
    assert settings.cfg.postprocess.smooth == 1 and settings.bench.check_fraction == 0
    assert settings.calibrations == [("conformal", FLOW_ALPHA)] and FLOW_ALPHA == 0.01
    res = run_benchmark(settings, tmp_path / "flows.json", models, [0], progress=False)
    assert {r["model"] for r in res["records"]} == set(models)
    for rec in res["records"]:
        # per-row data: no point-adjusted figure anywhere
        assert [k for k in RECORD_KEYS if k not in rec] == list(TIME_SERIES_ONLY)
        assert all("f1_pa" not in c for c in rec["calibrations"])
        assert math.isnan(rec["far_check"])  # no check slice for row data
        assert rec["n_test"] > 100
    summ = res["summary"]
    assert "f1_pa" not in json.dumps(summ)
    assert summ["pca"]["auc_roc"] > 0.8 and summ["dense_ae"]["auc_roc"] > 0.5  # 2 epochs
    assert summ["random"]["f1"] < summ["pca"]["f1"]
    md = render([tmp_path / "flows.json"])
    assert "F1-PA" not in md.split("## Results", 1)[1] and "`dense_ae`" in md
    with pytest.raises(ConfigError, match="dataset-config"):
        resolve_settings("netflow", data, ["pca"])


def test_flows_benchmark_on_one_labelled_file(tmp_path: Path, capsys) -> None:
    """A description with a split: one labelled file, train on a share of its normal rows."""
    from ae_anomaly.data.netflow import load_netflow_dataset_config, read_netflow
    from ae_anomaly.data.synthetic_netflow import generate_netflow

    repo = Path(__file__).resolve().parents[3]
    ds_path = repo / "configs" / "datasets" / "netflow_one_file.yaml"
    data = tmp_path / "flows"
    data.mkdir()
    frame, _ = generate_netflow(n_hosts=2, days=0.25, seed=1, attack_count=1)
    frame.to_csv(data / "flows.csv", index=False)
    out = tmp_path / "one.json"
    rc = main(["benchmark", "--dataset", "netflow", "--data-dir", str(data), "--dataset-config",
               str(ds_path), "--models", "pca,random", "--seeds", "0", "--no-progress",
               "--output", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "`pca`" in printed and "F1-PA" not in printed
    full = read_netflow(data / "flows.csv", load_netflow_dataset_config(ds_path))
    n_normal = int((~full["is_anomaly"]).sum())
    rec = json.loads(out.read_text())["records"][0]
    assert rec["n_test"] == len(full) - round(0.6 * n_normal)  # the test part, every attack
    assert rec["anomaly_rate"] == pytest.approx(full["is_anomaly"].sum() / rec["n_test"])


def test_every_model_is_checked_before_any_training(tmp_path: Path, capsys) -> None:
    """dense_ae trains fine on rows, vae and rae (arch conv) cannot: one error, no cell run."""
    repo = Path(__file__).resolve().parents[3]
    data = tmp_path / "flows"
    data.mkdir()
    out = tmp_path / "never.json"
    rc = main(["benchmark", "--dataset", "netflow", "--data-dir", str(data), "--dataset-config",
               str(repo / "configs" / "datasets" / "netflow.yaml"), "--models",
               "dense_ae,vae,pca,rae", "--seeds", "0", "--no-progress", "--output", str(out)])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 of 4 models" in err
    assert "model 'vae': arch 'conv' needs windows" in err and "models.rae.arch=dense" in err
    with pytest.raises(ConfigError, match="cvae' is conditioned on time-of-day"):
        resolve_settings("nsl-kdd", data, ["cvae"], overrides=["models.cvae.arch=dense"])
    # fixed as the message says, the settings resolve; on series the conv families are fine
    resolve_settings("netflow", data, ["dense_ae", "vae"], overrides=["models.vae.arch=dense"],
                     dataset_config=repo / "configs" / "datasets" / "netflow.yaml")
    resolve_settings("smd", data, ["vae", "cvae", "rae", "conv_ae"], overrides=TINY_AE)
    with pytest.raises(ConfigError, match="2 of 2 models") as bad:  # a bad key counts too
        resolve_settings("nsl-kdd", data, ["vae", "pca"], overrides=["models.pca.bogus=1"])
    assert "models.pca.bogus" in str(bad.value) and "model 'vae'" in str(bad.value)


@pytest.mark.parametrize("post", [
    ["postprocess.smooth=5", "postprocess.smooth_mode=center"],
    ["postprocess.errors=causal", "postprocess.smooth=3", "calibration.per_channel=true"],
    ["postprocess.baseline_window=200", "postprocess.smooth=3"],
])
def test_benchmark_scores_are_what_production_writes(smd_dir: Path, post: list[str],
                                                     tmp_path: Path) -> None:
    """A cell's test scores and threshold equal those of a detector trained and scored by the
    production code (Detector.fit / Detector.score) with the same settings."""
    from ae_anomaly.calibration import rule_from_config
    from ae_anomaly.detectors import AutoencoderDetector as Detector
    from ae_anomaly.detectors import load_detector
    from ae_anomaly.evaluation.benchmark import Dataset
    from ae_anomaly.evaluation.benchmark.cells import _ts_scores

    settings = resolve_settings("smd", smd_dir, ["conv_ae"], overrides=[*TINY_AE, *post])
    ent = Dataset(settings).load("machine-a")
    cell = _ts_scores("conv_ae", 0, ent, settings)

    cfg, b = settings.cfg, settings.bench
    n_check = int(round(len(ent.train) * b.check_fraction))
    calibration = cfg.calibration.model_copy(update={
        "calibration_fraction": b.calibration_fraction / (1 - b.check_fraction)})
    det = Detector(cfg.model.model_copy(update={"name": "conv_ae"}), cfg.window,
                   cfg.preprocess, cfg.training.model_copy(update={"seed": 0}), calibration,
                   cfg.postprocess)
    det.fit(ent.train.iloc[:len(ent.train) - n_check])
    np.testing.assert_allclose(cell.test, det.score(ent.test), rtol=1e-5, atol=1e-9)
    thr = rule_from_config(calibration).fit(cell.cal).threshold_
    assert thr == pytest.approx(det.threshold_, rel=1e-6)
    # and what a saved, reloaded model (the registry's) writes
    back = load_detector(det.save(tmp_path / "det"))
    np.testing.assert_array_equal(back.score(ent.test), det.score(ent.test))


def test_variant_table_names_what_differs_and_counts_the_bar(smd_dir: Path,
                                                             tmp_path: Path) -> None:
    from ae_anomaly.evaluation.report import render_variants

    models = ["pca", "random"]
    head = tmp_path / "smd.json"
    _run(smd_dir, head, models, alphas=[0.01])
    smooth = tmp_path / "smd-smooth3.json"
    _run(smd_dir, smooth, models, alphas=[0.01],
         overrides=["postprocess.smooth=3", "postprocess.baseline_window=50"])
    ksig = tmp_path / "smd-ksigma.json"
    _run(smd_dir, ksig, models, calibration_methods=["k_sigma"], alphas=[0.01])
    table = render_variants(head, [smooth, ksig])
    rows = {line.split(" | ")[0].strip("| `") + ":" + line.split(" | ")[2].strip("`"): line
            for line in table.splitlines()[2:]}
    assert "postprocess.baseline_window=50, postprocess.smooth=3" in rows["smd-smooth3.json:pca"]
    assert "threshold `k_sigma` at 0.01" in rows["smd-ksigma.json:random"]
    assert "headline settings (conformal at 0.01)" in rows["smd.json:pca"]
    # the last column counts the machines whose far_check lies within the bar
    assert rows["smd.json:pca"].rstrip(" |").endswith("/2")
    assert "far_normal" in table.splitlines()[0]
