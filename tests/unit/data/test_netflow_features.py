"""The flow feature pipeline: fitted on training rows only, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ae_anomaly.data.netflow_features import MISSING, UNSEEN, NetflowFeaturePipeline, auto_log1p
from ae_anomaly.errors import DataError


def _train(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "bytes": np.round(rng.lognormal(8, 2, n)),
            "rate": rng.uniform(0, 1, n),
            "const": np.full(n, 7.0),
            "proto": rng.choice(["tcp", "udp", "icmp"], n, p=[0.7, 0.25, 0.05]),
            "port": rng.choice([443, 53, 22], n),
            "site": ["a"] * n,
        }
    )


def _pipe(**kw: object) -> NetflowFeaturePipeline:
    return NetflowFeaturePipeline(
        numeric=["bytes", "rate", "const"], categorical=["proto", "port", "site"], **kw
    )


def test_statistics_come_from_training_rows_only() -> None:
    train = _train()
    pipe = _pipe().fit(train)
    before = json.dumps(pipe.to_dict(), sort_keys=True)
    test = _train(50, seed=1)
    test["bytes"] *= 1000.0
    test["rate"] += 5.0
    pipe.transform(test)
    assert json.dumps(pipe.to_dict(), sort_keys=True) == before

    logged = np.log1p(train["bytes"])
    assert pipe.medians_["bytes"] == pytest.approx(float(np.median(logged)))
    q25, q75 = np.percentile(train["rate"], [25, 75])
    assert pipe.iqrs_["rate"] == pytest.approx(q75 - q25)
    refit = _pipe().fit(pd.concat([train, test]))
    assert refit.medians_["rate"] != pipe.medians_["rate"]

    x = pipe.transform(train)
    col = pipe.feature_names_.index("rate")
    expected = (train["rate"] - np.median(train["rate"])) / (q75 - q25)
    np.testing.assert_allclose(x[:, col], expected, rtol=1e-5, atol=1e-6)


def test_unseen_category_goes_to_unseen_bucket() -> None:
    pipe = _pipe().fit(_train())
    test = _train(4, seed=2)
    test["proto"] = ["tcp", "gre", "sctp", "udp"]
    test["port"] = [443, 8080, 22, 53]
    x = pipe.transform(test)
    names = pipe.feature_names_
    onehot = [i for i, n in enumerate(names) if n.startswith("proto=")]
    assert x[:, onehot].sum(axis=1).tolist() == [1.0] * 4
    assert x[:, names.index(f"proto={UNSEEN}")].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert x[:, names.index("proto=tcp")].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert x[:, names.index(f"port={UNSEEN}")].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert x[:, names.index("port=443")].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_constant_columns_dropped() -> None:
    pipe = _pipe().fit(_train())
    assert pipe.dropped_constant_ == ["const", "site"]
    assert "const" not in pipe.feature_names_
    assert not any(n.startswith("site=") for n in pipe.feature_names_)
    test = _train(3).drop(columns=["const", "site"])  # dropped columns are not needed later
    assert pipe.transform(test).shape == (3, len(pipe.feature_names_))


def test_json_round_trip_transforms_identically() -> None:
    train = _train()
    pipe = _pipe(max_categories=2).fit(train)
    clone = NetflowFeaturePipeline.from_dict(json.loads(json.dumps(pipe.to_dict())))
    test = _train(100, seed=5)
    test.loc[:3, "proto"] = "gre"
    test.loc[4, "bytes"] = np.nan
    np.testing.assert_array_equal(clone.transform(test), pipe.transform(test))
    assert clone.feature_names_ == pipe.feature_names_
    assert clone.to_dict() == pipe.to_dict()

    unfitted = NetflowFeaturePipeline.from_dict(_pipe().to_dict())
    assert not unfitted.is_fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        unfitted.transform(train)
    with pytest.raises(ValueError, match="not a saved flow feature pipeline"):
        NetflowFeaturePipeline.from_dict({**pipe.to_dict(), "surprise": 1})


def test_output_shape_dtype_and_names() -> None:
    train = _train()
    pipe = _pipe().fit(train)
    x = pipe.transform(train)
    assert x.dtype == np.float32 and x.shape == (len(train), len(pipe.feature_names_))
    assert pipe.feature_names_[:2] == ["bytes", "rate"]
    assert pipe.categories_["proto"] == ["tcp", "udp", "icmp"]  # most frequent first
    assert "proto=__unseen__" in pipe.feature_names_ and np.isfinite(x).all()


def test_max_categories_sends_rare_values_to_unseen() -> None:
    pipe = _pipe(max_categories=1).fit(_train())
    assert pipe.categories_["proto"] == ["tcp"]
    x = pipe.transform(
        pd.DataFrame({"bytes": [1.0], "rate": [0.5], "proto": ["udp"], "port": [22]})
    )
    assert x[0, pipe.feature_names_.index(f"proto={UNSEEN}")] == 1.0


def test_log1p_auto_clipping_and_explicit() -> None:
    train = _train()
    assert auto_log1p(train, ["bytes", "rate", "const"]) == ["bytes"]
    pipe = _pipe().fit(train)
    assert pipe.log1p_cols_ == ["bytes"]
    x = pipe.transform(
        pd.DataFrame({"bytes": [-5.0, 0.0], "rate": [0.5, 0.5], "proto": "tcp", "port": 22})
    )
    assert x[0, 0] == x[1, 0]  # negative clipped at 0 before log1p

    explicit = _pipe(log1p=[]).fit(train)
    assert explicit.log1p_cols_ == []
    with pytest.raises(ValueError, match="not a numeric column"):
        _pipe(log1p=["proto"])


def test_zero_iqr_falls_back_to_std_and_missing_values() -> None:
    frame = pd.DataFrame({"spiky": [0.0] * 90 + [10.0] * 10, "cat": [None] * 50 + ["x"] * 50})
    pipe = NetflowFeaturePipeline(["spiky"], ["cat"], log1p=[]).fit(frame)
    assert pipe.iqrs_["spiky"] == pytest.approx(np.std(frame["spiky"]))
    assert MISSING in pipe.categories_["cat"]
    x = pipe.transform(pd.DataFrame({"spiky": [np.nan], "cat": [None]}))
    assert x[0, 0] == 0.0  # a missing number becomes the training median
    assert x[0, pipe.feature_names_.index(f"cat={MISSING}")] == 1.0


def test_bad_input_is_data_error() -> None:
    pipe = _pipe().fit(_train())
    with pytest.raises(DataError) as err:
        pipe.transform(_train(5).drop(columns=["rate"]))
    assert err.value.column == "rate"
    bad = _train(5).astype({"bytes": object})
    bad.loc[3, "bytes"] = "lots"
    with pytest.raises(DataError) as err:
        pipe.transform(bad)
    assert (err.value.column, err.value.row) == ("bytes", 4)
    with pytest.raises(DataError, match="no training rows"):
        _pipe().fit(_train().iloc[:0])
