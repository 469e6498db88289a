"""Adaptive conformal inference (ACI): an online threshold that keeps the alarm rate.

Gibbs and Candès (2021, "Adaptive conformal inference under distribution shift") update the
level of a conformal quantile after every step::

    q_t     = the conformal (1 - alpha_t) quantile of the reference scores
    err_t   = 1 if s_t > q_t else 0                       (the step is flagged)
    alpha_{t+1} = alpha_t + gamma * (alpha - err_t)

with ``q_t = +inf`` when ``alpha_t <= 0`` (nothing is flagged) and ``q_t = -inf`` when
``alpha_t >= 1`` (everything is). Then ``alpha_t`` stays in ``[-gamma, 1 + gamma]`` and, for
*any* sequence of scores (no exchangeability, no stationarity), after ``T`` steps::

    alpha_{T+1} - alpha_1 = gamma * (alpha * T - alarms_T)

so ``|alarms_T / T - alpha| <= (max(alpha_1, 1 - alpha_1) + gamma) / (gamma * T)``
(their Proposition 4.1), and one-sided, ``alarms_T <= alpha * T + alpha_1 / gamma + 1``:
the count of flagged steps never exceeds the budget by more than ``alpha_1 / gamma + 1``.
See docs/thresholds.md for what this does not promise.

The reference scores are the detector's calibration scores, or, with a ``window``, a
rolling window of ``window`` scores that starts as the calibration scores (in a fixed
shuffled order) and takes in each *unflagged* scored step, dropping the oldest, so the
quantile follows the entity's recent normal regime. The guarantee above holds for any
reference; the window only makes the flagged steps the ones that stand out now.

:class:`AdaptiveConformal` is pure and deterministic: ``(state, scores) -> (thresholds,
state)``, the state a small JSON-serialisable :class:`AciState`; cutting a stream into
blocks anywhere gives the same thresholds as one pass.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Tolerance for float noise in ceil((m + 1)(1 - alpha_t)), as in thresholds.conformal_rank.
_RANK_EPS = 1e-9
# Seed of the fixed order in which calibration scores leave a rolling window.
_WINDOW_SEED = 0


@dataclass
class AciState:
    """Where an :class:`AdaptiveConformal` rule stands after some steps.

    Attributes:
        alpha_t: the current level (the next step's quantile is ``1 - alpha_t``).
        steps: scored steps seen (NaN scores are not counted).
        alarms: steps flagged among them.
        window: the rolling reference scores, oldest first (empty without a window).
    """

    alpha_t: float
    steps: int = 0
    alarms: int = 0
    window: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable mapping (floats round-trip exactly through JSON)."""
        return {"alpha_t": float(self.alpha_t), "steps": int(self.steps),
                "alarms": int(self.alarms), "window": [float(v) for v in self.window]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AciState:
        """Rebuild a state from :meth:`to_dict` output."""
        return cls(alpha_t=float(d["alpha_t"]), steps=int(d["steps"]),
                   alarms=int(d["alarms"]), window=[float(v) for v in d.get("window", [])])


class AdaptiveConformal:
    """ACI over a frozen calibration set, optionally with a rolling window of recent scores.

    Args:
        alpha: the target long-run alarm rate (the calibration rule's alpha).
        gamma: the step size; larger adapts faster and tightens the long-run bound, smaller
            lets more alarms cluster (an anomaly of ``L`` steps lowers ``alpha_t`` by about
            ``gamma * L``).
        calibration_scores: the held-out normal scores the rule was calibrated on.
        window: reference size for the rolling window; None keeps the calibration scores.

    Raises:
        ValueError: alpha outside (0, 1), gamma not positive, empty calibration scores, or a
            window smaller than 1.
    """

    def __init__(self, alpha: float, gamma: float, calibration_scores: np.ndarray,
                 window: int | None = None) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
        if not gamma > 0.0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        if window is not None and window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        cal = np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel())
        if cal.size == 0:
            raise ValueError("adaptive conformal needs calibration scores")
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.window = window
        self.calibration_scores = cal

    def params(self) -> dict[str, Any]:
        """The frozen settings (stored with each state to detect a change of settings)."""
        return {"alpha": self.alpha, "gamma": self.gamma, "window": self.window}

    def initial_state(self) -> AciState:
        """The state before the first step: ``alpha_1 = alpha``; a window holds the last
        ``window`` calibration scores of a fixed (seeded) shuffle."""
        if self.window is None:
            return AciState(alpha_t=self.alpha)
        order = np.random.default_rng(_WINDOW_SEED).permutation(self.calibration_scores.size)
        start = self.calibration_scores[order][-self.window:]
        return AciState(alpha_t=self.alpha, window=start.tolist())

    # ------------------------------------------------------------------ the guarantee
    def bound(self, steps: int, alpha_1: float | None = None) -> float:
        """``(max(alpha_1, 1 - alpha_1) + gamma) / (gamma * T)``: the largest possible gap
        between the alarm rate over ``T = steps`` steps and alpha (any scores)."""
        a1 = self.alpha if alpha_1 is None else alpha_1
        return (max(a1, 1.0 - a1) + self.gamma) / (self.gamma * max(steps, 1))

    def max_alarms(self, steps: int, alpha_1: float | None = None) -> float:
        """``alpha * T + alpha_1 / gamma + 1``: the most steps that can be flagged in ``T``."""
        a1 = self.alpha if alpha_1 is None else alpha_1
        return self.alpha * steps + a1 / self.gamma + 1.0

    # ------------------------------------------------------------------ applying
    @staticmethod
    def quantile(sorted_ref: list[float] | np.ndarray, alpha_t: float) -> float:
        """The conformal ``1 - alpha_t`` quantile: the ``ceil((m + 1)(1 - alpha_t))``-th
        smallest of ``m`` reference scores; ``+inf`` past the largest, ``-inf`` below rank 1."""
        m = len(sorted_ref)
        k = math.ceil((m + 1) * (1.0 - alpha_t) - _RANK_EPS)
        if k > m:
            return math.inf
        if k < 1:
            return -math.inf
        return float(sorted_ref[k - 1])

    def thresholds(self, scores: np.ndarray, state: AciState | None = None
                   ) -> tuple[np.ndarray, AciState]:
        """Per-step thresholds of a block of consecutive scores, and the state after it.

        A step is flagged when ``score > threshold``. NaN scores get the current threshold
        but change nothing (they are not steps of the guarantee).

        Args:
            scores: the next scores, shape (T,).
            state: where the rule stands (None: :meth:`initial_state`); not modified.

        Returns:
            ``(thresholds (T,), new_state)``.
        """
        s = np.asarray(scores, dtype=np.float64).ravel()
        st = self.initial_state() if state is None else state
        alpha, gamma, alpha_t = self.alpha, self.gamma, st.alpha_t
        steps, alarms = st.steps, st.alarms
        out = np.empty(s.size, dtype=np.float64)
        quantile = self.quantile
        if self.window is None:
            ref: list[float] | np.ndarray = self.calibration_scores
            fifo: deque[float] | None = None
        else:
            fifo = deque(st.window)
            ref = sorted(fifo)
        for i, v in enumerate(s.tolist()):
            q = quantile(ref, alpha_t)
            out[i] = q
            if v != v:  # NaN
                continue
            flagged = v > q
            steps += 1
            if flagged:
                alarms += 1
                alpha_t += gamma * (alpha - 1.0)
            else:
                alpha_t += gamma * alpha
                if fifo is not None:
                    assert isinstance(ref, list)
                    fifo.append(v)
                    bisect.insort(ref, v)
                    if len(fifo) > self.window:  # type: ignore[operator]
                        old = fifo.popleft()
                        del ref[bisect.bisect_left(ref, old)]
        window = list(fifo) if fifo is not None else []
        return out, AciState(alpha_t=alpha_t, steps=steps, alarms=alarms, window=window)
