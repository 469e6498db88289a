"""Threshold rules fitted once on held-out normal calibration scores.

Higher scores are more anomalous; a point is flagged when ``score > threshold``. Every rule
keeps its sorted calibration scores, so conformal p-values
``p(s) = (1 + #{cal >= s}) / (n + 1)`` are available after a save/load round trip
(:meth:`ThresholdRule.to_dict` / :meth:`ThresholdRule.from_dict`).

Rules, registered by name:

* ``conformal`` (default): split-conformal order statistic with a finite-sample guarantee.
* ``pot``: peaks-over-threshold (generalised Pareto tail), for alphas below ``1 / n``.
* ``quantile``: plain empirical quantile, without the finite-sample guarantee.
* ``k_sigma``: mean + k standard deviations, without any guarantee.
* ``best_f1``: the F1-maximising threshold on a labelled validation set.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import numpy as np
from scipy import stats

from ae_anomaly.config import CalibrationConfig

logger = logging.getLogger(__name__)

# Below this |shape| the GPD quantile uses its exponential limit (avoids 0/0 cancellation).
_GAMMA_EPS = 1e-6
# Tolerance for float noise in ceil((n + 1)(1 - alpha)), e.g. 1000 * 0.999 = 999.0000000000001.
_RANK_EPS = 1e-9


# --------------------------------------------------------------------------- helpers
def conformal_rank(n: int, alpha: float) -> int:
    """The 1-based rank ``k = ceil((n + 1)(1 - alpha))`` of the split-conformal threshold.

    Args:
        n: number of calibration scores.
        alpha: target false-alarm probability.

    Returns:
        The rank; it may exceed ``n``, in which case the guarantee cannot be met.
    """
    return max(1, math.ceil((n + 1) * (1.0 - alpha) - _RANK_EPS))


def min_calibration_size(alpha: float) -> int:
    """The smallest calibration set considered adequate for ``alpha`` (``10 / alpha``)."""
    return math.ceil(10.0 / alpha - _RANK_EPS)


def _validate_scores(cal_scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(cal_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("cannot fit a threshold on an empty calibration set")
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise ValueError(f"calibration scores contain {bad} non-finite values (NaN or inf)")
    return scores


def _validate_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha}")
    return alpha


# --------------------------------------------------------------------------- base class
class ThresholdRule:
    """A threshold fitted on calibration scores; subclasses implement :meth:`_fit_threshold`.

    Args:
        alpha: target point-wise false-alarm probability on normal data.

    Attributes:
        name: the registered name of the rule.
        uses_labels: whether fitting needs labels.
        alpha: the target false-alarm probability.
        threshold_: the fitted threshold (a point is flagged when ``score > threshold_``).
        calibration_scores_: the sorted calibration scores (the normal ones, for ``best_f1``).
    """

    name: ClassVar[str] = ""
    uses_labels: ClassVar[bool] = False

    def __init__(self, alpha: float = 0.001) -> None:
        self.alpha = _validate_alpha(alpha)
        self.threshold_: float | None = None
        self.calibration_scores_: np.ndarray | None = None

    # ---------------------------------------------------------------- fitting
    def fit(self, cal_scores: np.ndarray, labels: np.ndarray | None = None) -> ThresholdRule:
        """Fit the threshold on calibration scores.

        Args:
            cal_scores: calibration scores, shape (n,); held-out normal data except for
                ``best_f1``, which takes a labelled validation set.
            labels: 1 for anomalous, 0 for normal points; only ``best_f1`` uses them.

        Returns:
            self, fitted.

        Raises:
            ValueError: empty or non-finite scores, or labels missing where needed.
        """
        scores = _validate_scores(cal_scores)
        y = None
        if labels is not None:
            y = np.asarray(labels).ravel().astype(bool)
            if y.shape != scores.shape:
                raise ValueError(f"labels have {y.size} entries but there are {scores.size} scores")
        self.threshold_ = float(self._fit_threshold(scores, y))
        if self.uses_labels and y is not None and np.any(~y):
            # p-values are relative to normal data
            self.calibration_scores_ = np.sort(scores[~y])
        else:
            self.calibration_scores_ = np.sort(scores)
        logger.info(
            "fitted %s threshold %.6g on %d calibration scores (alpha=%g)",
            self.name,
            self.threshold_,
            scores.size,
            self.alpha,
        )
        return self

    def _fit_threshold(self, scores: np.ndarray, labels: np.ndarray | None) -> float:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable."""
        return {"alpha": self.alpha}

    def _state(self) -> dict[str, Any]:
        """Extra fitted state beyond the threshold, JSON-serialisable."""
        return {}

    def _set_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def _check_fitted(self) -> None:
        if self.threshold_ is None or self.calibration_scores_ is None:
            raise RuntimeError(f"the {self.name} threshold rule is not fitted yet; call fit()")

    @property
    def n_calibration(self) -> int:
        """Number of stored calibration scores."""
        self._check_fitted()
        assert self.calibration_scores_ is not None
        return int(self.calibration_scores_.size)

    # ---------------------------------------------------------------- applying
    def flag(self, scores: np.ndarray) -> np.ndarray:
        """Boolean mask of flagged points (``score > threshold``)."""
        self._check_fitted()
        return np.asarray(scores, dtype=np.float64) > self.threshold_

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values ``(1 + #{cal >= s}) / (n + 1)`` against the calibration scores.

        Args:
            scores: scores of any shape.

        Returns:
            p-values in ``[1 / (n + 1), 1]``, same shape as ``scores``; NaN scores give NaN.
        """
        self._check_fitted()
        cal = self.calibration_scores_
        assert cal is not None
        s = np.asarray(scores, dtype=np.float64)
        n = cal.size
        n_ge = n - np.searchsorted(cal, s, side="left")
        p = (1.0 + n_ge) / (n + 1.0)
        return np.where(np.isnan(s), np.nan, p)

    # ---------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description: name, parameters and fitted state.

        Returns:
            A dict with ``name``, ``params``, ``uses_labels``, ``threshold``, ``state`` and
            ``calibration_scores`` (the sorted calibration scores as a list of floats).
        """
        self._check_fitted()
        assert self.calibration_scores_ is not None
        return {
            "name": self.name,
            "params": self._params(),
            "uses_labels": self.uses_labels,
            "threshold": float(self.threshold_),  # type: ignore[arg-type]
            "state": self._state(),
            "calibration_scores": self.calibration_scores_.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ThresholdRule:
        """Rebuild a fitted rule from :meth:`to_dict` output, dispatching on ``d["name"]``.

        Raises:
            ValueError: unknown rule name.
        """
        rule_cls = get_rule_class(d["name"])
        rule = rule_cls(**d.get("params", {}))
        rule.threshold_ = float(d["threshold"])
        rule.calibration_scores_ = np.asarray(d["calibration_scores"], dtype=np.float64)
        rule._set_state(d.get("state", {}))
        return rule

    # ---------------------------------------------------------------- reporting
    def report(self) -> dict[str, Any]:
        """Summary of the fitted threshold and what false-alarm rate to expect.

        ``far_interval_90`` is the 5%-95% interval of the realised false-alarm rate of a
        split-conformal threshold with ``n`` calibration points: the coverage of the k-th
        order statistic (``k = ceil((n + 1)(1 - alpha))``, at most ``n``) is
        ``Beta(k, n + 1 - k)``, so the false-alarm rate is ``Beta(n + 1 - k, k)``. It
        describes the uncertainty that a calibration set of this size leaves, whatever rule.

        Returns:
            ``method``, ``alpha``, ``n_calibration``, ``threshold``, ``calibration_alarm_rate``
            (share of calibration scores above the threshold), ``conformal_rank``,
            ``far_interval_90`` (a ``[low, high]`` list) and ``warning`` (a string when the
            calibration set has fewer than ``10 / alpha`` points, else None).
        """
        self._check_fitted()
        cal = self.calibration_scores_
        assert cal is not None
        n = cal.size
        k = min(conformal_rank(n, self.alpha), n)
        far_low, far_high = stats.beta.ppf([0.05, 0.95], n + 1 - k, k)
        n_above = n - np.searchsorted(cal, self.threshold_, side="right")
        need = min_calibration_size(self.alpha)
        warning = None
        if n < need:
            warning = (
                f"calibration set of {n} points is too small for alpha={self.alpha:g}: "
                f"need at least {need}"
            )
        return {
            "method": self.name,
            "alpha": self.alpha,
            "n_calibration": int(n),
            "threshold": float(self.threshold_),  # type: ignore[arg-type]
            "calibration_alarm_rate": float(n_above / n),
            "conformal_rank": int(k),
            "far_interval_90": [float(far_low), float(far_high)],
            "warning": warning,
        }

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params}, threshold_={self.threshold_!r})"


# --------------------------------------------------------------------------- rules
class ConformalThreshold(ThresholdRule):
    """Split-conformal threshold: the ``ceil((n + 1)(1 - alpha))``-th smallest score.

    For exchangeable data, a new normal score exceeds it with probability at most alpha. When
    ``(n + 1)(1 - alpha) > n`` the guarantee cannot be met; the maximum score is used and a
    warning logged.
    """

    name = "conformal"

    def _fit_threshold(self, scores: np.ndarray, labels: np.ndarray | None) -> float:
        n = scores.size
        k = conformal_rank(n, self.alpha)
        if k > n:
            logger.warning(
                "conformal: %d calibration points cannot guarantee alpha=%g "
                "(needs at least %d); using the maximum score",
                n,
                self.alpha,
                math.ceil(1.0 / self.alpha - 1.0 - _RANK_EPS),
            )
            return float(scores.max())
        return float(np.partition(scores, k - 1)[k - 1])


class POTThreshold(ThresholdRule):
    """Peaks-over-threshold (Siffer et al. 2017, SPOT in batch form).

    An initial threshold ``t`` is the empirical ``initial_quantile`` of the calibration
    scores; a generalised Pareto distribution (shape ``gamma``, scale ``sigma``, location 0)
    is fitted to the excesses above ``t``; the threshold is the GPD extrapolation
    ``t + sigma / gamma * ((alpha * n / N_t) ** -gamma - 1)`` (``t - sigma * log(alpha * n /
    N_t)`` when ``gamma`` is ~0). Unlike the order-statistic rules it works for
    ``alpha < 1 / n``.

    With fewer than ``min_excess`` (10) scores above the initial quantile (a small
    calibration set), the initial threshold is lowered to the ``min_excess + 1``-th largest
    score so that the tail fit has ``min_excess`` points; the quantile actually used is kept
    in ``initial_quantile_used_`` and a warning is logged. Fewer than ``2 * min_excess``
    calibration scores are refused.

    Args:
        alpha: target false-alarm probability.
        initial_quantile: quantile of the calibration scores used as the initial threshold.
    """

    name = "pot"
    min_excess: ClassVar[int] = 10

    def __init__(self, alpha: float = 0.001, initial_quantile: float = 0.98) -> None:
        super().__init__(alpha)
        if not 0.0 < initial_quantile < 1.0:
            raise ValueError(f"initial_quantile must lie in (0, 1), got {initial_quantile}")
        self.initial_quantile = float(initial_quantile)
        self.initial_threshold_: float | None = None
        self.gamma_: float | None = None
        self.sigma_: float | None = None
        self.n_excess_: int | None = None
        self.initial_quantile_used_: float | None = None

    def _params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "initial_quantile": self.initial_quantile}

    def _state(self) -> dict[str, Any]:
        return {
            "initial_quantile_used_": self.initial_quantile_used_,
            "initial_threshold_": self.initial_threshold_,
            "gamma_": self.gamma_,
            "sigma_": self.sigma_,
            "n_excess_": self.n_excess_,
        }

    def _fit_threshold(self, scores: np.ndarray, labels: np.ndarray | None) -> float:
        n, m = scores.size, self.min_excess
        if n < 2 * m:
            raise ValueError(
                f"pot: {n} calibration scores are too few for a tail fit; need at least "
                f"{2 * m} (use more calibration data or another method)"
            )
        q = self.initial_quantile
        t = float(np.quantile(scores, q))
        if np.count_nonzero(scores > t) < m:
            # Small set (or ties): the largest value with at least m scores above it.
            ordered = np.sort(scores)
            values = np.unique(ordered)
            above = n - np.searchsorted(ordered, values, side="right")
            ok = values[above >= m]
            if not ok.size:
                raise ValueError(
                    f"pot: fewer than {m} distinct tail scores among {n} calibration scores "
                    "(tied scores); use another method")
            t = float(ok.max())
            q = float(np.searchsorted(ordered, t, side="right") / n)
            logger.warning(
                "pot: fewer than %d of %d calibration scores exceed the initial quantile "
                "%g; the tail is fitted above the %.3g quantile instead",
                m, n, self.initial_quantile, q)
        excess = scores[scores > t] - t
        n_t = int(excess.size)
        self.initial_threshold_ = t
        self.initial_quantile_used_ = q
        self.n_excess_ = n_t
        if np.ptp(excess) == 0:
            raise ValueError(f"pot: the {n_t} scores above the initial threshold are all "
                             "equal (tied scores): no tail to fit; use another method")
        gamma, _, sigma = stats.genpareto.fit(excess, floc=0)
        self.gamma_, self.sigma_ = float(gamma), float(sigma)
        ratio = self.alpha * n / n_t
        if ratio >= 1.0:
            logger.warning(
                "pot: alpha=%g is not in the fitted tail (only %.3g of the scores exceed the "
                "initial threshold); the extrapolated threshold lies below it",
                self.alpha,
                n_t / n,
            )
        if abs(gamma) < _GAMMA_EPS:
            return t - sigma * math.log(ratio)
        return t + sigma / gamma * (ratio ** (-gamma) - 1.0)


class QuantileThreshold(ThresholdRule):
    """The plain empirical ``(1 - alpha)`` quantile (``np.quantile``, linear interpolation).

    Lacks the finite-sample guarantee of :class:`ConformalThreshold`: with ``n`` points its
    realised false-alarm rate is slightly above alpha on average.
    """

    name = "quantile"

    def _fit_threshold(self, scores: np.ndarray, labels: np.ndarray | None) -> float:
        return float(np.quantile(scores, 1.0 - self.alpha))


class KSigmaThreshold(ThresholdRule):
    """``mean + k * std`` of the calibration scores.

    Carries no false-alarm guarantee (alpha is only reported): reconstruction errors are
    skewed and heavy-tailed, where ``k`` standard deviations can leave far more than the
    Gaussian share of points above the threshold and flood the alarm channel.

    Args:
        k: number of standard deviations above the mean.
        alpha: the nominal false-alarm probability, used for the report only.
    """

    name = "k_sigma"

    def __init__(self, k: float = 3.0, alpha: float = 0.001) -> None:
        super().__init__(alpha)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        self.k = float(k)
        self.mean_: float | None = None
        self.std_: float | None = None

    def _params(self) -> dict[str, Any]:
        return {"k": self.k, "alpha": self.alpha}

    def _state(self) -> dict[str, Any]:
        return {"mean_": self.mean_, "std_": self.std_}

    def _fit_threshold(self, scores: np.ndarray, labels: np.ndarray | None) -> float:
        self.mean_ = float(scores.mean())
        self.std_ = float(scores.std(ddof=1)) if scores.size > 1 else 0.0
        return self.mean_ + self.k * self.std_


class BestF1Threshold(ThresholdRule):
    """The threshold maximising point-wise F1 on a labelled validation set.

    Candidates are the distinct scores (flagging strictly above each) plus one just below the
    minimum; ties go to the highest threshold. It tunes on labels, so it is an optimistic
    reference for benchmarks rather than a production rule. p-values use the normal-labelled
    scores.
    """

    name = "best_f1"
    uses_labels = True

    def _fit_threshold(self, scores: np.ndarray, labels: np.ndarray | None) -> float:
        if labels is None:
            raise ValueError(
                "best_f1 needs a labelled validation set: pass labels (1 = anomaly) to fit()"
            )
        n_pos = int(labels.sum())
        if n_pos == 0:
            raise ValueError("best_f1 needs at least one anomalous label in the validation set")
        order = np.argsort(scores, kind="stable")
        s, y = scores[order], labels[order]
        uniq, first = np.unique(s, return_index=True)
        # positives / negatives with score <= uniq[j]
        pos_le = np.cumsum(y)[np.r_[first[1:] - 1, s.size - 1]]
        neg_le = np.r_[first[1:], s.size] - pos_le
        tp = n_pos - pos_le
        fp = (s.size - n_pos) - neg_le
        fn = n_pos - tp
        f1 = 2.0 * tp / np.maximum(2.0 * tp + fp + fn, 1.0)
        # candidate below the minimum: flag everything
        f1_all = 2.0 * n_pos / (2.0 * n_pos + (s.size - n_pos))
        j = int(f1.size - 1 - np.argmax(f1[::-1]))  # last (highest) maximiser
        if f1_all > f1[j]:
            return float(np.nextafter(uniq[0], -np.inf))
        return float(uniq[j])


_REGISTRY: dict[str, type[ThresholdRule]] = {
    cls.name: cls
    for cls in (
        ConformalThreshold,
        POTThreshold,
        QuantileThreshold,
        KSigmaThreshold,
        BestF1Threshold,
    )
}

RULE_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_rule_class(name: str) -> type[ThresholdRule]:
    """The rule class registered under ``name``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown threshold method '{name}'; valid methods: {', '.join(RULE_NAMES)}"
        ) from None


def rule_from_config(
    cfg: CalibrationConfig,
    steps_per_day: float | None = None,
    mean_event_length: float = 1.0,
) -> ThresholdRule:
    """Build an unfitted threshold rule from the calibration config.

    When ``cfg.max_alerts_per_day`` is set, alpha comes from
    :func:`alpha_from_alert_budget` instead of ``cfg.alpha``.

    Args:
        cfg: the calibration section of the config.
        steps_per_day: time steps per day per entity; needed with ``max_alerts_per_day``.
        mean_event_length: expected flagged steps per false alert (see
            :func:`alpha_from_alert_budget`).

    Returns:
        The rule, ready for :meth:`ThresholdRule.fit`.

    Raises:
        ValueError: unknown method, or an alert budget without ``steps_per_day``.
    """
    rule_cls = get_rule_class(cfg.method)
    alpha = cfg.alpha
    if cfg.max_alerts_per_day is not None:
        if steps_per_day is None:
            raise ValueError(
                "calibration.max_alerts_per_day is set, so steps_per_day (the sampling rate) "
                "is needed to turn it into a point-wise alpha"
            )
        alpha = alpha_from_alert_budget(cfg.max_alerts_per_day, steps_per_day, mean_event_length)
        logger.info(
            "alert budget of %g per day at %g steps per day gives alpha=%.3g",
            cfg.max_alerts_per_day,
            steps_per_day,
            alpha,
        )
    if rule_cls is POTThreshold:
        return POTThreshold(alpha=alpha, initial_quantile=cfg.pot_initial_quantile)
    if rule_cls is KSigmaThreshold:
        return KSigmaThreshold(k=cfg.k, alpha=alpha)
    return rule_cls(alpha=alpha)


def alpha_from_alert_budget(
    max_alerts_per_day: float, steps_per_day: float, mean_event_length: float = 1.0
) -> float:
    """Convert a per-entity alert budget into a point-wise false-alarm probability.

    On normal data each step exceeds the threshold with probability alpha, so an entity
    produces about ``alpha * steps_per_day`` flagged steps per day. False alarms group into
    alerts (events) of ``mean_event_length`` flagged steps on average, so the number of
    alerts per day is about ``alpha * steps_per_day / mean_event_length``. Solving for the
    budget gives ``alpha = max_alerts_per_day * mean_event_length / steps_per_day``. With the
    default length 1 every flagged step counts as its own alert, which is conservative (event
    merging only lowers the alert count). The result is clipped into ``(0, 0.5)``.

    Args:
        max_alerts_per_day: tolerated false alerts per entity per day.
        steps_per_day: time steps per entity per day (e.g. 1440 at one-minute sampling).
        mean_event_length: average flagged steps per false alert.

    Returns:
        The point-wise alpha.

    Raises:
        ValueError: a non-positive argument.
    """
    for label, value in (
        ("max_alerts_per_day", max_alerts_per_day),
        ("steps_per_day", steps_per_day),
        ("mean_event_length", mean_event_length),
    ):
        if not value > 0:
            raise ValueError(f"{label} must be positive, got {value}")
    alpha = max_alerts_per_day * mean_event_length / steps_per_day
    clipped = float(np.clip(alpha, np.finfo(np.float64).tiny, np.nextafter(0.5, 0.0)))
    if clipped != alpha:
        logger.warning("alert budget gives alpha=%g; clipped to %g", alpha, clipped)
    return clipped


def format_report(report: dict[str, Any]) -> str:
    """Human-readable multi-line text of :meth:`ThresholdRule.report`."""
    low, high = report["far_interval_90"]
    lines = [
        f"threshold method:        {report['method']}",
        f"target alpha:            {report['alpha']:.4g}",
        f"calibration points:      {report['n_calibration']}",
        f"threshold:               {report['threshold']:.6g}",
        f"alarm rate on cal. set:  {report['calibration_alarm_rate']:.4g}",
        f"false-alarm rate, 90%:   [{low:.3g}, {high:.3g}] (split conformal, n points)",
    ]
    if report.get("warning"):
        lines.append(f"WARNING: {report['warning']}")
    return "\n".join(lines)
