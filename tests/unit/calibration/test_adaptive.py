"""Adaptive conformal inference: the long-run rate bound, determinism, state round trip,
chunk invariance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ae_anomaly.calibration import AciState, AdaptiveConformal, ConformalThreshold

ALPHA, GAMMA = 0.01, 0.005


def _cal(n: int = 4000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).exponential(1.0, n)


def _shifted_stream(seed: int = 1) -> np.ndarray:
    """Normal scores, then a level shift (a server changing regime), then a milder one."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.exponential(1.0, 10_000),
                           rng.exponential(1.0, 30_000) + 3.0,
                           rng.exponential(1.0, 20_000) * 2.0 + 1.0])


@pytest.mark.parametrize("window", [None, 2000])
def test_long_run_rate_within_the_bound_under_a_level_shift(window: int | None) -> None:
    cal, stream = _cal(), _shifted_stream()
    aci = AdaptiveConformal(ALPHA, GAMMA, cal, window=window)
    thr, state = aci.thresholds(stream)
    flags = stream > thr
    assert state.steps == stream.size and state.alarms == int(flags.sum())
    # The bound holds after every prefix, not just at the end.
    t = np.arange(1, stream.size + 1)
    rate = np.cumsum(flags) / t
    bound = (max(ALPHA, 1 - ALPHA) + GAMMA) / (GAMMA * t)
    assert np.all(np.abs(rate - ALPHA) <= bound + 1e-12)
    assert np.all(np.cumsum(flags) <= aci.max_alarms(t) + 1e-9)
    assert abs(rate[-1] - ALPHA) <= aci.bound(stream.size)
    # The frozen conformal threshold on the same stream is far outside the bound.
    static = ConformalThreshold(ALPHA).fit(cal)
    static_rate = float(np.mean(static.flag(stream)))
    assert static_rate - ALPHA > 20 * aci.bound(stream.size)
    assert static_rate > 0.1


def test_bound_holds_for_an_adversarial_sequence() -> None:
    """Whatever the scores (here all above every calibration score), the count is kept."""
    cal = _cal()
    aci = AdaptiveConformal(ALPHA, GAMMA, cal)
    stream = np.full(20_000, 1e6)
    thr, state = aci.thresholds(stream)
    assert abs(state.alarms / state.steps - ALPHA) <= aci.bound(state.steps)
    assert state.alarms <= aci.max_alarms(state.steps)
    assert -GAMMA <= state.alpha_t <= 1 + GAMMA


def test_window_follows_the_new_regime() -> None:
    """With a window the threshold moves to the shifted level's own (1 - alpha) quantile;
    without one it can only move along the calibration scores (or to infinity)."""
    cal, stream = _cal(), _shifted_stream()
    shifted_q = 3.0 + np.log(1 / ALPHA)  # the 0.99 quantile of exponential(1) + 3
    thr, _ = AdaptiveConformal(ALPHA, GAMMA, cal, window=2000).thresholds(stream)
    assert abs(np.median(thr[25_000:40_000]) - shifted_q) < 0.5
    thr, _ = AdaptiveConformal(ALPHA, GAMMA, cal).thresholds(stream)
    finite = thr[25_000:40_000][np.isfinite(thr[25_000:40_000])]
    assert np.all(finite <= cal.max())


def test_deterministic_and_the_state_round_trips_through_json() -> None:
    cal, stream = _cal(), _shifted_stream()[:15_000]
    aci = AdaptiveConformal(ALPHA, GAMMA, cal, window=500)
    thr1, s1 = aci.thresholds(stream)
    thr2, s2 = AdaptiveConformal(ALPHA, GAMMA, cal.copy(), window=500).thresholds(stream)
    assert np.array_equal(thr1, thr2) and s1 == s2
    back = AciState.from_dict(json.loads(json.dumps(s1.to_dict())))
    assert back == s1
    more = _shifted_stream(seed=5)[:3000]
    assert np.array_equal(aci.thresholds(more, s1)[0], aci.thresholds(more, back)[0])


@pytest.mark.parametrize("window", [None, 300])
def test_any_cut_into_blocks_gives_one_pass(window: int | None) -> None:
    cal, stream = _cal(1000), _shifted_stream()[5_000:20_000]
    aci = AdaptiveConformal(ALPHA, GAMMA, cal, window=window)
    whole, final = aci.thresholds(stream)
    rng = np.random.default_rng(3)
    cuts = np.sort(rng.choice(np.arange(1, stream.size), 40, replace=False))
    state, parts = aci.initial_state(), []
    for block in np.split(stream, cuts):
        thr, state = aci.thresholds(block, AciState.from_dict(state.to_dict()))
        parts.append(thr)
    assert np.array_equal(np.concatenate(parts), whole)
    assert state == final


def test_nan_scores_change_nothing() -> None:
    cal = _cal(1000)
    aci = AdaptiveConformal(ALPHA, GAMMA, cal, window=100)
    s = np.array([0.5, np.nan, 9.0, np.nan, 0.1])
    thr, state = aci.thresholds(s)
    ref_thr, ref_state = aci.thresholds(s[~np.isnan(s)])
    assert state == ref_state
    assert np.array_equal(thr[~np.isnan(s)], ref_thr)
    assert state.steps == 3


def test_quantile_edges_and_validation() -> None:
    ref = [1.0, 2.0, 3.0]
    assert AdaptiveConformal.quantile(ref, 0.0) == np.inf
    assert AdaptiveConformal.quantile(ref, -0.01) == np.inf
    assert AdaptiveConformal.quantile(ref, 1.0) == -np.inf
    assert AdaptiveConformal.quantile(ref, 0.5) == 2.0
    with pytest.raises(ValueError):
        AdaptiveConformal(0.0, GAMMA, ref)
    with pytest.raises(ValueError):
        AdaptiveConformal(ALPHA, 0.0, ref)
    with pytest.raises(ValueError):
        AdaptiveConformal(ALPHA, GAMMA, [])
    with pytest.raises(ValueError):
        AdaptiveConformal(ALPHA, GAMMA, ref, window=0)
