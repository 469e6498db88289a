"""Hand-worked checks of the NAB scorer.

Shared set-up: one file of 100 rows, one per minute. The probationary length is
min(floor(0.15 * 100), 0.15 * 5000) = min(15, 750) = 15 rows, so rows 0..14 are not scored.
The window covers rows 40..49 (inclusive), so its width is w = 10.

S(x) = 2 / (1 + exp(5 x)) - 1 is NAB's scaled sigmoid; S(-1) = 0.98661429815.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ae_anomaly.evaluation.nab import (
    PROFILES,
    load_nab_windows,
    nab_scores,
    probationary_length,
    scaled_sigmoid,
    score_file,
)

STANDARD = PROFILES["standard"]
N = 100
TS = np.datetime64("2020-01-01T00:00") + np.arange(N) * np.timedelta64(1, "m")
WINDOW = [(TS[40], TS[49])]
S_MINUS_1 = 2 / (1 + math.exp(-5)) - 1  # 0.98661429815, NAB's maxTP


def s(x: float) -> float:
    """NAB's scaledSigmoid written out independently of the module under test."""
    return -1.0 if x > 3.0 else 2 / (1 + math.exp(5 * x)) - 1


def detect(*rows: int, n: int = N) -> np.ndarray:
    det = np.zeros(n, dtype=bool)
    det[list(rows)] = True
    return det


def test_profiles() -> None:
    assert set(PROFILES) == {"standard", "reward_low_fp", "reward_low_fn"}
    assert PROFILES["standard"] == {
        "tpWeight": 1.0,
        "fpWeight": 0.11,
        "fnWeight": 1.0,
        "tnWeight": 1.0,
    }
    assert PROFILES["reward_low_fp"]["fpWeight"] == 0.22
    assert PROFILES["reward_low_fn"]["fnWeight"] == 2.0


def test_scaled_sigmoid_values() -> None:
    # S(-1) = 2 / (1 + e^-5) - 1 = 0.98661; S(-0.5) = 0.84828; S(0) = 0; S(1) = -0.98661
    np.testing.assert_allclose(
        scaled_sigmoid(np.array([-1.0, -0.5, 0.0, 1.0])),
        [0.98661429815, 0.84828363995, 0.0, -0.98661429815],
        rtol=1e-10,
    )
    # beyond 3 the FP penalty is exactly -1; at 3 itself it is S(3) = -tanh(7.5)
    assert float(scaled_sigmoid(3.5)) == -1.0
    assert float(scaled_sigmoid(3.0)) == pytest.approx(-math.tanh(7.5))


def test_probationary_length() -> None:
    assert probationary_length(100) == 15  # floor(15.0)
    assert probationary_length(4999) == 749  # floor(749.85)
    assert probationary_length(22695) == 750  # capped at 0.15 * 5000
    assert probationary_length(100, 0.0) == 0


def test_detection_at_window_start_scores_full_tp_weight() -> None:
    # position = -(49 - 40 + 1) / 10 = -1; score = tpWeight * S(-1) / maxTP = 1 * S(-1) / S(-1)
    # = 1.0 (NAB divides by maxTP = S(-1), so the earliest detection earns exactly tpWeight)
    assert score_file(TS, detect(40), WINDOW, STANDARD) == pytest.approx(1.0)


def test_detection_at_window_end() -> None:
    # position = -(49 - 49 + 1) / 10 = -0.1; S(-0.1) = tanh(0.25) = 0.244919
    # score = 0.244919 / 0.986614 = 0.248242
    expected = s(-0.1) / S_MINUS_1
    assert expected == pytest.approx(0.248242, abs=1e-6)
    assert score_file(TS, detect(49), WINDOW, STANDARD) == pytest.approx(expected)


def test_no_detections_is_minus_fn_weight() -> None:
    # one missed window: -fnWeight = -1.0 (standard), -2.0 (reward_low_fn)
    none = detect()
    assert score_file(TS, none, WINDOW, STANDARD) == pytest.approx(-1.0)
    assert score_file(TS, none, WINDOW, PROFILES["reward_low_fn"]) == pytest.approx(-2.0)


def test_detection_far_after_window_costs_full_fp_weight() -> None:
    # row 99: position = (99 - 49) / (10 - 1) = 5.56 > 3 -> S = -1
    # score = FN (-1.0) + FP (0.11 * -1) = -1.11; reward_low_fp: -1 - 0.22 = -1.22
    assert score_file(TS, detect(99), WINDOW, STANDARD) == pytest.approx(-1.11)
    assert score_file(TS, detect(99), WINDOW, PROFILES["reward_low_fp"]) == pytest.approx(-1.22)


def test_detection_just_after_window_costs_little() -> None:
    # row 50: position = (50 - 49) / (10 - 1) = 1/9; S(1/9) = -tanh(5/18) = -0.270847
    # score = FN (-1.0) + 0.11 * -0.270847 = -1.029793
    expected = -1.0 + 0.11 * s(1 / 9)
    assert expected == pytest.approx(-1.029793, abs=1e-6)
    assert score_file(TS, detect(50), WINDOW, STANDARD) == pytest.approx(expected)


def test_detection_before_any_window_costs_full_fp_weight() -> None:
    # row 20 is scored (>= 15) and no window precedes it -> 0.11 * -1; plus FN -1 -> -1.11
    assert score_file(TS, detect(20), WINDOW, STANDARD) == pytest.approx(-1.11)


def test_detection_in_probation_is_ignored() -> None:
    # row 5 < 15: no FP; the window is still missed -> -1.0
    assert score_file(TS, detect(5), WINDOW, STANDARD) == pytest.approx(-1.0)
    # a detection at row 14 (last probationary row) is ignored as well
    assert score_file(TS, detect(14), WINDOW, STANDARD) == pytest.approx(-1.0)


def test_two_detections_in_same_window_count_once() -> None:
    # rows 40 and 45: only the earliest counts -> 1.0, not 1.0 + something
    assert score_file(TS, detect(40, 45), WINDOW, STANDARD) == pytest.approx(1.0)
    # rows 45 and 47: earliest is 45, position = -(49 - 45 + 1) / 10 = -0.5
    # score = S(-0.5) / S(-1) = 0.848284 / 0.986614 = 0.859793
    expected = s(-0.5) / S_MINUS_1
    assert expected == pytest.approx(0.859793, abs=1e-6)
    assert score_file(TS, detect(45, 47), WINDOW, STANDARD) == pytest.approx(expected)


def test_every_false_positive_counts() -> None:
    # rows 20 and 21 (before the window): 2 * -0.11; row 40: +1.0 -> 1 - 0.22 = 0.78
    assert score_file(TS, detect(20, 21, 40), WINDOW, STANDARD) == pytest.approx(0.78)


def test_false_positive_uses_closest_preceding_window() -> None:
    # windows rows 20..29 (w = 10) and 60..64 (w = 5); detections at 20 (TP, +1.0),
    # 70 (after the second window: position (70 - 64) / (5 - 1) = 1.5) and
    # 35 (after the first window: position (35 - 29) / (10 - 1) = 2/3);
    # second window missed: -1.0
    windows = [(TS[60], TS[64]), (TS[20], TS[29])]  # unsorted on purpose
    expected = 1.0 - 1.0 + 0.11 * s(1.5) + 0.11 * s(2 / 3)
    assert score_file(TS, detect(20, 35, 70), windows, STANDARD) == pytest.approx(expected)


def test_window_inside_probation() -> None:
    # window rows 5..10 lies wholly in the probationary period (rows < 15): NAB drops its
    # rows, so it is neither a TP nor an FN -> 0.0
    windows = [(TS[5], TS[10])]
    assert score_file(TS, detect(), windows, STANDARD) == pytest.approx(0.0)
    assert score_file(TS, detect(7), windows, STANDARD) == pytest.approx(0.0)
    # window rows 10..19 straddles the boundary: it is scored, only rows 15..19 can hit it
    windows = [(TS[10], TS[19])]
    assert score_file(TS, detect(10), windows, STANDARD) == pytest.approx(-1.0)
    # row 15: position = -(19 - 15 + 1) / 10 = -0.5 -> S(-0.5) / S(-1) = 0.859793
    assert score_file(TS, detect(15), windows, STANDARD) == pytest.approx(s(-0.5) / S_MINUS_1)


def test_file_without_windows() -> None:
    # no windows: nothing to miss; each scored detection is an FP with no preceding window
    assert score_file(TS, detect(), [], STANDARD) == 0.0
    assert score_file(TS, detect(5, 50, 60), [], STANDARD) == pytest.approx(-0.22)  # 2 * -0.11


def test_window_limits_between_samples() -> None:
    # limits that fall between rows cover the rows inside them: 39:30 .. 49:30 -> rows 40..49
    half = np.timedelta64(30, "s")
    windows = [(TS[39] + half, TS[49] + half)]
    assert score_file(TS, detect(40), windows, STANDARD) == pytest.approx(1.0)
    assert score_file(TS, detect(39), windows, STANDARD) == pytest.approx(-1.11)


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="equal length"):
        score_file(TS, detect(n=N - 1), WINDOW, STANDARD)
    with pytest.raises(ValueError, match="overlap"):
        score_file(TS, detect(), [(TS[10], TS[30]), (TS[25], TS[40])], STANDARD)


def test_normalisation_perfect_null_and_partial() -> None:
    windows_b = [(TS[30], TS[39]), (TS[70], TS[79])]
    perfect = {"a": (TS, detect(40), WINDOW), "b": (TS, detect(30, 70), windows_b)}
    null = {"a": (TS, detect(), WINDOW), "b": (TS, detect(), windows_b)}
    assert nab_scores(perfect) == pytest.approx({k: 100.0 for k in PROFILES})
    assert nab_scores(null) == pytest.approx({k: 0.0 for k in PROFILES})

    # one file, one window, detection at its end (raw 0.248242, see above):
    # standard:      100 * (0.248242 - (-1)) / (1 - (-1)) = 62.412
    # reward_low_fn: 100 * (0.248242 - (-2)) / (1 - (-2)) = 74.941
    tp_end = s(-0.1) / S_MINUS_1
    scores = nab_scores({"a": (TS, detect(49), WINDOW)})
    assert scores["standard"] == pytest.approx(100 * (tp_end + 1) / 2)
    assert scores["standard"] == pytest.approx(62.412, abs=1e-3)
    assert scores["reward_low_fn"] == pytest.approx(100 * (tp_end + 2) / 3)

    # file a perfect, file b missed entirely, standard: raw = 1 - 2 = -1, null = -3,
    # perfect = 3 -> 100 * (-1 + 3) / (3 + 3) = 33.33
    mixed = {"a": (TS, detect(40), WINDOW), "b": (TS, detect(), windows_b)}
    assert nab_scores(mixed)["standard"] == pytest.approx(100 * 2 / 6)


def test_normalisation_without_windows_is_nan() -> None:
    scores = nab_scores({"a": (TS, detect(50), [])})
    assert all(math.isnan(v) for v in scores.values())


def test_load_nab_windows(tmp_path: Path) -> None:
    path = tmp_path / "combined_windows.json"
    path.write_text(
        json.dumps(
            {
                "artificialNoAnomaly/art_flatline.csv": [],
                "artificialWithAnomaly/art_daily_flatmiddle.csv": [
                    ["2014-04-11 00:00:00.000000", "2014-04-12 00:00:00"]
                ],
            }
        )
    )
    windows = load_nab_windows(path)
    assert windows["artificialNoAnomaly/art_flatline.csv"] == []
    ((start, end),) = windows["artificialWithAnomaly/art_daily_flatmiddle.csv"]
    assert start == np.datetime64("2014-04-11T00:00:00")
    assert end == np.datetime64("2014-04-12T00:00:00")


# --------------------------------------------------------------------------- cross-check


def _reference_score(
    n: int, det: np.ndarray, rows: list[tuple[int, int]], profile: dict, p: int
) -> float:
    """Row-by-row statement of NAB's rules, used to cross-check the vectorised scorer."""
    tp_w, fp_w, fn_w = profile["tpWeight"], profile["fpWeight"], profile["fnWeight"]
    total = 0.0
    for left, right in rows:
        if right < p:
            continue
        hits = [i for i in range(max(left, p), right + 1) if det[i]]
        if hits:
            total += tp_w * s(-(right - hits[0] + 1) / (right - left + 1)) / S_MINUS_1
        else:
            total -= fn_w
    for i in range(p, n):
        if not det[i] or any(left <= i <= right for left, right in rows):
            continue
        before = [(left, right) for left, right in rows if right < i]
        if not before:
            total -= fp_w
        else:
            left, right = max(before, key=lambda w: w[1])
            total += fp_w * s((i - right) / (right - left))
    return total


def test_matches_row_by_row_reference_on_random_files() -> None:
    rng = np.random.default_rng(42)
    for _ in range(200):
        n = int(rng.integers(20, 400))
        ts = np.datetime64("2021-01-01") + np.arange(n) * np.timedelta64(5, "m")
        cuts = np.sort(rng.choice(np.arange(1, n), size=2 * int(rng.integers(0, 4)), replace=False))
        rows = [(int(a), int(b)) for a, b in cuts.reshape(-1, 2) if b > a]
        det = rng.random(n) < rng.uniform(0.0, 0.1)
        windows = [(ts[a], ts[b]) for a, b in rows]
        for profile in PROFILES.values():
            expected = _reference_score(n, det, rows, profile, probationary_length(n))
            assert score_file(ts, det, windows, profile) == pytest.approx(expected)


NAB_ROOT = Path("/work/shared/data/nab")


@pytest.mark.slow
@pytest.mark.skipif(not (NAB_ROOT / "labels" / "combined_windows.json").exists(), reason="no NAB")
def test_real_corpus_null_and_perfect() -> None:
    pd = pytest.importorskip("pandas")
    all_windows = load_nab_windows(NAB_ROOT / "labels" / "combined_windows.json")
    assert len(all_windows) == 58
    assert sum(len(w) for w in all_windows.values()) == 116
    rng = np.random.default_rng(0)
    null, perfect, noisy = {}, {}, {}
    raw_perfect = 0.0
    for name, windows in all_windows.items():
        ts = pd.to_datetime(pd.read_csv(NAB_ROOT / "data" / name)["timestamp"]).to_numpy()
        ts_list = list(ts)
        # NAB locates windows by exact timestamp match: the first row equal to each limit
        starts = [ts_list.index(start) for start, _ in windows]
        det = np.zeros(ts.size, dtype=bool)
        det[starts] = True
        raw_perfect += score_file(ts, det, windows, STANDARD)
        null[name] = (ts, np.zeros(ts.size, dtype=bool), windows)
        perfect[name] = (ts, det, windows)
        noisy[name] = (ts, rng.random(ts.size) < 0.01, windows)
        if name == "realKnownCause/nyc_taxi.csv":
            rows = [(ts_list.index(a), ts_list.index(b)) for a, b in windows]
            p = probationary_length(ts.size)
            expected = _reference_score(ts.size, noisy[name][1], rows, STANDARD, p)
            assert score_file(ts, noisy[name][1], windows, STANDARD) == pytest.approx(expected)
    # NAB normalises with perfect = tpCount * tpWeight = 116 windows * 1.0
    assert raw_perfect == pytest.approx(116.0)
    assert nab_scores(null) == pytest.approx({k: 0.0 for k in PROFILES})
    assert nab_scores(perfect) == pytest.approx({k: 100.0 for k in PROFILES})
    assert all(v < 0 for v in nab_scores(noisy).values())  # 1 % random alarms: below null
