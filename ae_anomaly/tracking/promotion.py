"""Registry promotion and rollback with aliases: ``champion``, ``challenger``, ``previous``.

Training registers every new version as ``challenger`` (the first one is also ``champion``).
:func:`run_promotion` scores champion and challenger on the same evaluation window and
applies the gates of the ``promotion`` section:

* ``feature_schema``: the challenger uses the champion's metrics, in the same order;
* ``calibration_size``: the challenger's threshold rests on enough calibration steps;
* ``alert_rate``: the challenger's flagged fraction (of normal steps, when labelled) is
  within the budget;
* ``quality`` (labelled data): the challenger's AUC-PR (or ``promotion.metric``) is not
  worse than the champion's by more than ``tolerance``; without labels ``alert_count``:
  it raises at most ``(1 + max_alert_increase)`` times the champion's events, plus one;
* ``score_shift``: its median score on the window over its median calibration score stays
  below ``max_score_shift`` (a model that finds recent normal data unusual is refused).

Only when all pass does ``champion`` move; the former champion keeps alias ``previous``
and :func:`rollback` moves ``champion`` back to it. Every decision is recorded as tags on
the challenger's model version and as an MLflow run with the numbers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from ae_anomaly.config import AppConfig, EventsConfig, PromotionConfig
from ae_anomaly.data.timeseries import ENTITY, TS
from ae_anomaly.detectors import BaseDetector
from ae_anomaly.errors import AeAnomalyError, ModelNotFoundError
from ae_anomaly.evaluation.metrics import auc_pr, auc_roc, precision_recall_f1
from ae_anomaly.events import find_events
from ae_anomaly.records import ModelRef
from ae_anomaly.tracking.store import Tracker

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
PREVIOUS = "previous"


def load_version(tracker: Tracker, name: str, version: str) -> tuple[BaseDetector, ModelRef]:
    """Load one registered version's detector (:meth:`Tracker.load_version`: hashes
    checked, nothing unpickled).

    Raises:
        ModelNotFoundError: no such model or version.
        ModelIntegrityError: the version's files differ from those registered.
    """
    return tracker.load_version(name, str(version))


# ------------------------------------------------------------------------- evaluation
@dataclass
class ModelEval:
    """One model version's numbers on the evaluation window."""

    version: str
    features: list[str]
    n_steps: int
    n_flagged: int
    alert_rate: float
    n_events: int
    events_per_day: float
    score_median: float
    calibration_median: float
    score_shift: float
    n_calibration: int
    quality: float | None = None


def evaluate_detector(det: BaseDetector, version: str, frame: pd.DataFrame,
                      labels: np.ndarray | None, events_cfg: EventsConfig,
                      metric: str = "auc_pr") -> ModelEval:
    """Score the window with one detector and summarise alerts, events and quality.

    Entities shorter than the detector's window (its ``min_samples``) are left out.
    """
    scores = np.full(len(frame), np.nan)
    thresholds = np.full(len(frame), np.nan)
    n_events, days = 0, 0.0
    for ent, idx in frame.groupby(ENTITY, sort=False).indices.items():
        if len(idx) < det.min_samples:
            continue
        part = frame.iloc[idx]
        s = det.score(part)
        thr = det.threshold_for(str(ent))
        scores[idx], thresholds[idx] = s, thr
        ts = part[TS].to_numpy()
        n_events += len(find_events(str(ent), ts, s, s.reshape(-1, 1), thr, events_cfg))
        if len(ts) > 1:
            days += (pd.Timestamp(ts[-1]) - pd.Timestamp(ts[0])) / pd.Timedelta("1D")
    valid = ~np.isnan(scores)
    if not valid.any():
        raise AeAnomalyError(f"evaluation window too short: no entity has "
                             f"{det.min_samples} steps (the window length)")
    s = scores[valid]
    flagged = s > thresholds[valid]
    normal = np.ones(len(s), dtype=bool) if labels is None else ~labels[valid]
    rate = float(flagged[normal].mean()) if normal.any() else float(flagged.mean())
    cal = np.asarray(det.rule_.calibration_scores_, dtype=np.float64)
    cal_median = float(np.median(cal)) if cal.size else float("nan")
    median = float(np.median(s[normal])) if normal.any() else float(np.median(s))
    quality = None
    if labels is not None:
        y = labels[valid].astype(bool)
        if y.any() and (~y).any():
            quality = {"auc_pr": lambda: auc_pr(y, s), "auc_roc": lambda: auc_roc(y, s),
                       "f1": lambda: precision_recall_f1(y, flagged)[2]}[metric]()
    return ModelEval(
        version=str(version), features=list(det.feature_names_), n_steps=int(valid.sum()),
        n_flagged=int(flagged.sum()), alert_rate=rate, n_events=n_events,
        events_per_day=n_events / days if days > 0 else float("nan"),
        score_median=median, calibration_median=cal_median,
        score_shift=median / cal_median if cal_median > 0 else float("inf"),
        n_calibration=int(cal.size), quality=None if quality is None else float(quality))


# ------------------------------------------------------------------------- gates
@dataclass
class Gate:
    """One promotion check."""

    name: str
    passed: bool
    champion: str
    challenger: str
    limit: str


@dataclass
class PromotionDecision:
    """The outcome of a promotion, with every number it rests on."""

    name: str
    challenger_version: str
    champion_version: str | None
    promoted: bool
    labelled: bool
    metric: str
    gates: list[Gate] = field(default_factory=list)
    challenger: ModelEval | None = None
    champion: ModelEval | None = None
    run_id: str = ""

    def table(self) -> str:
        """The gates as a plain-text table."""
        head = (f"{self.name}: challenger v{self.challenger_version} vs champion "
                + (f"v{self.champion_version}" if self.champion_version else "(none)")
                + f" on {self.challenger.n_steps if self.challenger else 0:,} steps "
                + ("(labelled)" if self.labelled else "(unlabelled)"))
        rows = [("check", "champion", "challenger", "limit", "result")]
        rows += [(g.name, g.champion, g.challenger, g.limit, "pass" if g.passed else "FAIL")
                 for g in self.gates]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [head]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        verdict = ("PROMOTED: champion -> v" + self.challenger_version
                   + (f" (previous: v{self.champion_version})" if self.champion_version else "")
                   if self.promoted else "REJECTED: champion unchanged")
        lines.append(verdict)
        return "\n".join(lines)


def _fmt(x: float | int | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if pct:
        return f"{x:.3%}"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.4g}"


def apply_gates(pc: PromotionConfig, champion: ModelEval | None,
                challenger: ModelEval) -> list[Gate]:
    """The gates of the ``promotion`` section, champion against challenger."""
    ch, cp = challenger, champion
    gates = []
    if cp is None:
        gates.append(Gate("feature_schema", True, "-", f"{len(ch.features)} metrics",
                          "no champion"))
    else:
        same = cp.features == ch.features
        detail = "identical" if same else (
            "same metrics, other order" if sorted(cp.features) == sorted(ch.features)
            else "different metrics")
        gates.append(Gate("feature_schema", same, f"{len(cp.features)} metrics",
                          f"{len(ch.features)} metrics",
                          "identical" if same else f"identical ({detail})"))
    # Every limit is the configured one or, where the champion itself does worse, the
    # champion's (plus a tolerance): a gate that rejects a copy of the champion is wrong.
    min_cal = pc.min_calibration if cp is None else min(pc.min_calibration, cp.n_calibration)
    gates.append(Gate("calibration_size", ch.n_calibration >= min_cal,
                      _fmt(cp.n_calibration) if cp else "-", _fmt(ch.n_calibration),
                      f">= {min_cal:,}"))
    max_rate = pc.max_alert_rate if cp is None else max(
        pc.max_alert_rate, cp.alert_rate + pc.alert_rate_tolerance)
    gates.append(Gate("alert_rate", ch.alert_rate <= max_rate,
                      _fmt(cp.alert_rate, True) if cp else "-", _fmt(ch.alert_rate, True),
                      f"<= {max_rate:.3%}" + ("" if max_rate == pc.max_alert_rate
                                              else " (champion + tolerance)")))
    if ch.quality is not None:
        ok = cp is None or cp.quality is None or ch.quality >= cp.quality - pc.tolerance
        gates.append(Gate(f"quality ({pc.metric})", ok,
                          _fmt(cp.quality) if cp else "-", _fmt(ch.quality),
                          f">= champion - {pc.tolerance:g}"))
    else:
        limit = None if cp is None else (1 + pc.max_alert_increase) * cp.n_events + 1
        gates.append(Gate("alert_count", limit is None or ch.n_events <= limit,
                          _fmt(cp.n_events) if cp else "-", _fmt(ch.n_events),
                          "no champion" if limit is None else f"<= {limit:g}"))
    max_shift = pc.max_score_shift if cp is None or not math.isfinite(cp.score_shift) else max(
        pc.max_score_shift, cp.score_shift * (1 + pc.score_shift_tolerance))
    gates.append(Gate("score_shift", ch.score_shift <= max_shift,
                      _fmt(cp.score_shift) if cp else "-", _fmt(ch.score_shift),
                      f"<= {max_shift:.4g}" + ("" if max_shift == pc.max_score_shift
                                               else " (champion + tolerance)")))
    return gates


# ------------------------------------------------------------------------- decisions
def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_promotion(tracker: Tracker, cfg: AppConfig, name: str, challenger: str,
                  frame: pd.DataFrame, labels: np.ndarray | None) -> PromotionDecision:
    """Evaluate, gate, move the aliases when every gate passes, and record the decision.

    Args:
        tracker: the MLflow store.
        cfg: configuration (``promotion`` gates, ``events`` rules, experiment).
        name: registered model name.
        challenger: the version to evaluate.
        frame: the evaluation window (wide, sorted by entity then time).
        labels: 1 = anomalous per row of ``frame``, or None.

    Raises:
        AeAnomalyError: the challenger is already the champion.
    """
    pc = cfg.promotion
    champion_alias = tracker.cfg.alias
    current = tracker.alias_version(champion_alias, name)
    if current == str(challenger):
        raise AeAnomalyError(f"{name} v{challenger} is already the {champion_alias}")
    det_ch, _ = load_version(tracker, name, challenger)
    ev_ch = evaluate_detector(det_ch, challenger, frame, labels, cfg.events, pc.metric)
    ev_cp = None
    if current is not None:
        det_cp, _ = load_version(tracker, name, current)
        if det_cp.feature_names_ == det_ch.feature_names_:
            ev_cp = evaluate_detector(det_cp, current, frame, labels, cfg.events, pc.metric)
        else:
            # Different schemas: the champion cannot score what the challenger scores; the
            # schema gate fails on the feature lists alone.
            ev_cp = ModelEval(current, list(det_cp.feature_names_), 0, 0, float("nan"), 0,
                              float("nan"), float("nan"), float("nan"), float("nan"),
                              int(np.asarray(det_cp.rule_.calibration_scores_).size))
    gates = apply_gates(pc, ev_cp, ev_ch)
    promoted = all(g.passed for g in gates)
    decision = PromotionDecision(name, str(challenger), current, promoted,
                                 labelled=ev_ch.quality is not None, metric=pc.metric,
                                 gates=gates, challenger=ev_ch, champion=ev_cp)
    if promoted:
        if current is not None:
            tracker.set_alias(PREVIOUS, current, name)
        tracker.set_alias(champion_alias, str(challenger), name)
        if tracker.alias_version(CHALLENGER, name) == str(challenger):
            tracker.client.delete_registered_model_alias(name, CHALLENGER)
    _record(tracker, decision)
    log.info("promotion of %s v%s: %s", name, challenger,
             "promoted" if promoted else "rejected")
    return decision


def _record(tracker: Tracker, d: PromotionDecision) -> None:
    verdict = "promoted" if d.promoted else "rejected"
    run_id = tracker.start_run(f"promote-{d.name}-v{d.challenger_version}", tags={
        "ae_anomaly.job": "promote", "promotion.decision": verdict,
        "model_name": d.name, "challenger_version": d.challenger_version,
        "champion_version": d.champion_version or ""})
    d.run_id = run_id
    client = tracker.client
    for role, ev in (("challenger", d.challenger), ("champion", d.champion)):
        if ev is None:
            continue
        for k, v in asdict(ev).items():
            if isinstance(v, int | float) and v is not None and math.isfinite(float(v)):
                client.log_metric(run_id, f"{role}.{k}", float(v))
    for g in d.gates:
        key = g.name.split(" ")[0]
        client.log_param(run_id, f"gate.{key}", g.limit)
        client.set_tag(run_id, f"gate.{key}", "pass" if g.passed else "fail")
    client.log_text(run_id, d.table() + "\n", "promotion/decision.txt")
    client.log_dict(run_id, _jsonable(d), "promotion/decision.json")
    tracker.end_run(run_id)
    tags = {"promotion.decision": verdict, "promotion.at": _now(),
            "promotion.compared_to": d.champion_version or "none", "promotion.run_id": run_id,
            "promotion.labelled": str(d.labelled).lower()}
    tags.update({f"promotion.gate.{g.name.split(' ')[0]}": "pass" if g.passed else "fail"
                 for g in d.gates})
    if d.challenger is not None:
        tags.update({"promotion.alert_rate": f"{d.challenger.alert_rate:.6g}",
                     "promotion.n_events": str(d.challenger.n_events),
                     "promotion.score_shift": f"{d.challenger.score_shift:.6g}"})
        if d.challenger.quality is not None:
            tags[f"promotion.{d.metric}"] = f"{d.challenger.quality:.6g}"
    for k, v in tags.items():
        client.set_model_version_tag(d.name, d.challenger_version, k, v)
    if d.promoted and d.champion_version:
        client.set_model_version_tag(d.name, d.champion_version, "promotion.replaced_by",
                                     d.challenger_version)


def _jsonable(d: PromotionDecision) -> dict[str, Any]:
    out = asdict(d)

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return clean(out)


@dataclass
class Rollback:
    """What a rollback did."""

    name: str
    demoted: str | None
    restored: str
    run_id: str


def rollback(tracker: Tracker, name: str | None = None) -> Rollback:
    """Move ``champion`` back to the ``previous`` version and record it.

    The ``previous`` alias is removed (a second rollback has nothing to return to until the
    next promotion); the demoted version is tagged ``rollback.demoted_at``.

    Raises:
        ModelNotFoundError: no ``previous`` alias.
    """
    name = name or tracker.cfg.registered_model
    champion_alias = tracker.cfg.alias
    prev = tracker.alias_version(PREVIOUS, name)
    if prev is None:
        raise ModelNotFoundError(f"model '{name}' has no '{PREVIOUS}' alias: nothing to roll "
                                 "back to (a promotion sets it)")
    cur = tracker.alias_version(champion_alias, name)
    tracker.set_alias(champion_alias, prev, name)
    tracker.client.delete_registered_model_alias(name, PREVIOUS)
    run_id = tracker.start_run(f"rollback-{name}-v{prev}", tags={
        "ae_anomaly.job": "rollback", "model_name": name, "restored_version": prev,
        "demoted_version": cur or ""})
    tracker.end_run(run_id)
    now = _now()
    if cur is not None:
        tracker.client.set_model_version_tag(name, cur, "rollback.demoted_at", now)
    tracker.client.set_model_version_tag(name, prev, "rollback.restored_at", now)
    log.info("rollback of %s: champion v%s -> v%s", name, cur, prev)
    return Rollback(name, cur, prev, run_id)
