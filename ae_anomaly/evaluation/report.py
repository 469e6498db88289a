"""Render benchmark results files as Markdown (docs/benchmarks.md).

Usage::

    python -m ae_anomaly.evaluation.report bench-results/smd.json bench-results/nab.json \\
        [--variants bench-results/variants/*.json] [-o docs/benchmarks.md]

For each results file: the commands that produced it, the machine, the wall time, the
per-model table (PCA and random rows included: the protocol requires them), per-entity
AUC-PR and F1, the calibration comparison and, for NAB, the NAB scores beside the official
scoreboard. ``--variants`` files (runs of the same dataset with one setting changed) become
one "what we tried" table per dataset, each row labelled by what differs from the headline
file of that dataset. With ``-o``, the text between ``<!-- notes -->`` and
``<!-- /notes -->`` in the existing output file is kept (hand-written analysis), so
regenerating the tables never loses it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ae_anomaly.config import AppConfig
from ae_anomaly.evaluation.benchmark import (
    ALWAYS_DEFAULTS,
    DATASET_DEFAULTS,
    FAR_BOUNDS,
    BenchConfig,
    load_results,
    summarize,
)

NOTES_START, NOTES_END = "<!-- notes -->", "<!-- /notes -->"
_NAB_OFFICIAL = {"standard": "standard", "reward_low_fp": "reward_low_FP_rate",
                 "reward_low_fn": "reward_low_FN_rate"}


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return f"{v:.{digits}f}"


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{100 * v:.2f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _models(data: dict[str, Any]) -> list[str]:
    return list(data["summary"])


def summary_table(data: dict[str, Any]) -> str:
    """The per-model table of one results file (Markdown), with ratios to ``pca``."""
    summ = data["summary"]
    pca = summ.get("pca", {})
    tabular = data["meta"]["settings"]["dataset"] in ("nsl-kdd", "netflow")
    # per-row data has no segments in time: no point-adjusted column
    header = ["model", "cells", "AUC-PR", "x pca", "AUC-ROC", "F1", "x pca", "precision",
              "recall", *([] if tabular else ["F1-PA (adjusted)"]), "best F1 (oracle)",
              "event recall" if not tabular else "alarms", "far_normal", "far_check",
              "train s", "score s"]
    rows = []
    for m, s in summ.items():
        def ratio(key: str, s: dict[str, Any] = s) -> str:
            base, v = pca.get(key), s.get(key)
            if not base or v is None or not math.isfinite(base) or not math.isfinite(v):
                return "-"
            return f"{v / base:.2f}"

        rows.append([
            f"`{m}`", str(s["n_cells"]), _f(s["auc_pr"]), ratio("auc_pr"), _f(s["auc_roc"]),
            _f(s["f1"]), ratio("f1"), _f(s["precision"]), _f(s["recall"]),
            *([] if tabular else [_f(s.get("f1_pa"))]), _f(s["best_f1"]),
            _f(s["event_recall"]) if not tabular else _f(s["n_events"], 0),
            _pct(s["far_normal"]), _pct(s["far_check"]), _f(s["train_s"], 1),
            _f(s["score_s"], 2)])
    return _table(header, rows)


def _per_entity(data: dict[str, Any], key: str) -> str:
    recs = data["records"]
    ents = list(dict.fromkeys(r["entity"] for r in recs))
    models = _models(data)
    rows = []
    for m in models:
        row = [f"`{m}`"]
        for e in ents:
            vals = [r[key] for r in recs if r["model"] == m and r["entity"] == e
                    and r.get(key) is not None]
            row.append(_f(sum(vals) / len(vals)) if vals else "-")
        rows.append(row)
    return _table(["model", *[Path(e).stem for e in ents]], rows)


def _calibration_table(data: dict[str, Any]) -> str:
    rows = []
    for m, s in data["summary"].items():
        for key, c in s.get("calibrations", {}).items():
            method, alpha = key.split("@")
            alpha = f"none (bounds: {alpha})" if method == "k_sigma" else alpha
            within = (f"{c['far_check_within']}/{c['far_check_entities']}"
                      if c.get("far_check_entities") else "-")
            rows.append([f"`{m}`", method, alpha, _pct(c["flag_rate_check"]),
                         _pct(c["far_check"]), within, _pct(c["flag_rate_normal"]),
                         _pct(c["far_normal"]), _f(c["f1"]), _f(c["event_recall"]),
                         _f(c["n_events"], 1)])
    lo, hi = FAR_BOUNDS
    return _table(["model", "rule", "alpha", "flag rate check", "far_check (events)",
                   f"entities with far_check in [{lo}, {hi}] x alpha", "flag rate normal",
                   "far_normal (events)", "F1", "event recall", "events / entity"], rows)


def _nab_table(data: dict[str, Any]) -> str:
    rows = []
    head = data["meta"]["settings"]["calibrations"][0]
    head_key = f"{head[0]}@{head[1]:g}"
    for m, s in data["summary"].items():
        for key, c in s.get("calibrations", {}).items():
            if "nab_standard" not in c:
                continue
            method, alpha = key.split("@")
            rule = ("k_sigma, no alpha" if method == "k_sigma"
                    else f"{method} at alpha {alpha}")
            label = f"`{m}` (ours, {rule}"
            label += ", headline)" if key == head_key else ")"
            rows.append([label, _f(c["nab_standard"], 1), _f(c["nab_reward_low_fp"], 1),
                         _f(c["nab_reward_low_fn"], 1)])
    official = Path(data["meta"]["settings"]["data_dir"]) / "final_results.json"
    if official.is_file():
        board = json.loads(official.read_text())
        for name, sc in sorted(board.items(), key=lambda kv: -kv[1].get("standard", 0)):
            rows.append([f"{name} (NAB scoreboard)",
                         *[_f(sc.get(_NAB_OFFICIAL[p]), 1) for p in _NAB_OFFICIAL]])
    return _table(["detector", "standard", "reward_low_FP", "reward_low_FN"], rows)


def _runs(data: dict[str, Any]) -> tuple[list[str], float, int]:
    runs = data["meta"]["runs"]
    cmds = list(dict.fromkeys(r["command"] for r in runs if r.get("command")))
    return cmds, sum(r.get("wall_s", 0.0) for r in runs), sum(
        r.get("cells_computed", 0) for r in runs)


def _settings_line(data: dict[str, Any]) -> str:
    st = data["meta"]["settings"]
    cfg, b = st["config"], st["bench"]
    pp = cfg.get("postprocess") or b  # results files before the postprocess section
    scoring = pp.get("errors", pp.get("scoring", "overlap"))
    per_channel = ", per-channel thresholds" if cfg["calibration"].get("per_channel") else ""
    return (f"window {cfg['window']['length']} (training stride "
            f"{cfg['window']['train_stride']}), scaler {cfg['preprocess']['scaler']}, "
            f"{cfg['training']['epochs']} epochs max (patience {cfg['training']['patience']}), "
            f"{scoring} scoring, "
            f"smoothing {pp['smooth']} ({pp['smooth_mode']}), channel reduce "
            f"{pp['channel_reduce']}{per_channel}, fit/calibration/check = "
            f"{1 - b['calibration_fraction'] - b['check_fraction']:.0%}/"
            f"{b['calibration_fraction']:.0%}/{b['check_fraction']:.0%} of each training "
            f"period, events k={cfg['events']['k']} of n={cfg['events']['n']}, merge gap "
            f"{cfg['events']['merge_gap']}, cool-down {cfg['events']['cooldown']}")


def render_file(path: str | Path, data: dict[str, Any] | None = None) -> str:
    """Markdown section for one results file."""
    data = data or load_results(path)
    st, meta = data["meta"]["settings"], data["meta"]
    ds = st["dataset"]
    cmds, wall, cells = _runs(data)
    mach = meta["machine"]
    seeds = sorted({r["seed"] for r in data["records"] if r["seed"] >= 0})
    ents = list(dict.fromkeys(r["entity"] for r in data["records"]))
    out = [f"### `{ds}`: {len(ents)} entities, seeds {seeds} (`{Path(path).name}`)", ""]
    out.append("Command" + ("s" if len(cmds) > 1 else "") + ":")
    out.append("```")
    out += cmds
    out.append("```")
    n_ens = sum(1 for r in data["records"] if r.get("ensemble_of"))
    ens = f" (+{n_ens} seed-ensemble records)" if n_ens else ""
    out.append(f"Machine: {mach['nproc']} cores ({mach['cpu']}), torch threads "
               f"{mach['torch_threads']}, Python {mach['python']}; wall time "
               f"{wall / 60:.1f} min for {cells} cells{ens}.")
    if ds in ("smd", "nab"):
        out.append(f"Settings: {_settings_line(data)}.")
    cals = st["calibrations"]
    out.append(f"Headline threshold: `{cals[0][0]}` at alpha {cals[0][1]:g}, fitted on the "
               "calibration slice of the training data (no test labels).")
    out += ["", summary_table(data), ""]
    if ds == "nab":
        out += ["NAB score (normalised: 0 = never fires, 100 = perfect), mean over seeds, "
                "beside the official scoreboard:", "", _nab_table(data), ""]
    if ds == "smd":
        out += ["AUC-PR per entity (mean over seeds):", "", _per_entity(data, "auc_pr"), "",
                "Point-wise F1 at the calibrated threshold per entity (mean over seeds):", "",
                _per_entity(data, "f1"), ""]
    if len(cals) > 1 or ds == "smd":
        out += ["Calibration: realised alarm rates on the check slice (end of the training "
                "period, never fitted or calibrated on) and on label-0 test points; "
                "'flag rate' counts points above the threshold, 'far' counts points inside "
                "events:", "", _calibration_table(data), ""]
    return "\n".join(out)


def _differences(base: dict[str, Any], other: dict[str, Any], model: str) -> str:
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        if isinstance(d, dict):
            for k, v in d.items():
                out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix[:-1]] = d
        return out

    a, b = flat(base["meta"]["settings"]), flat(other["meta"]["settings"])
    # a key only one file has was added to the config in between: it differs when it is
    # not at its default
    defaults = flat({"config": AppConfig().model_dump(mode="json"),
                     "bench": BenchConfig().model_dump()})
    for k in set(b) - set(a):
        if k in defaults:
            a[k] = defaults[k]
    diffs = [f"{k.replace('config.', '')}={b.get(k)}"
             for k in sorted(set(a) & set(b))
             if a.get(k) != b.get(k) and not k.startswith(
                 ("data_dir", "calibrations", "bench.ensemble", "bench.save_scores"))]

    def model_cfg(d: dict[str, Any]) -> dict[str, Any]:
        for r in d["records"]:
            if r["model"] == model:
                return flat(r.get("model_config") or {})
        return {}

    ma, mb = model_cfg(base), model_cfg(other)
    diffs += [f"model.{k}={mb.get(k)}" for k in sorted(set(ma) | set(mb))
              if ma and mb and ma.get(k) != mb.get(k)]
    return ", ".join(diffs) or "(same settings)"


def _headline_subset(base: dict[str, Any], seeds: set[int], cal: list[Any]
                     ) -> dict[str, Any]:
    """Per-model means of the headline records of the given seeds, at calibration ``cal``."""
    recs = []
    for r in base["records"]:
        if r["seed"] not in seeds:
            continue
        row = next((c for c in r.get("calibrations", [])
                    if [c["calibration"], c["alpha"]] == list(cal)), None)
        if row is None:
            continue
        recs.append({**r, **{k: v for k, v in row.items() if k != "detections"}})
    return summarize(recs)


def render_variants(base_path: str | Path, variant_paths: Sequence[str | Path]) -> str:
    """A "what we tried" table: each variant's models against the headline file.

    The headline rows are recomputed from the headline records of the variants' seeds at
    the variants' first calibration, so each variant row has a like-for-like reference.
    """
    base = load_results(base_path)
    variants = [(p, load_results(p)) for p in variant_paths]
    seeds = {r["seed"] for _, d in variants for r in d["records"]} or {0}
    cal = (variants[0][1]["meta"]["settings"]["calibrations"][0] if variants
           else base["meta"]["settings"]["calibrations"][0])
    nab = base["meta"]["settings"]["dataset"] == "nab"
    key = f"{cal[0]}@{cal[1]:g}"

    def within(summ: dict[str, Any]) -> str:
        c = summ.get("calibrations", {}).get(key, {})
        n = c.get("far_check_entities") or 0
        return f"{c.get('far_check_within', 0)}/{n}" if n else "-"

    def nab_standard(summ: dict[str, Any], model: str, headline: bool) -> str:
        if not headline:
            return _f(summ.get("nab_standard"), 1)
        # the headline's per-seed NAB scores, at its headline calibration only
        first = base["meta"]["settings"]["calibrations"][0]
        per_seed = base["summary"].get(model, {}).get("nab_per_seed", {})
        vals = [v["standard"] for k, v in per_seed.items() if int(k) in seeds]
        return _f(float(np.mean(vals)), 1) if vals and list(first) == list(cal) else "-"

    def cells(summ: dict[str, Any], model: str, headline: bool) -> list[str]:
        out = [_f(summ["auc_pr"]), _f(summ["f1"]), _f(summ["best_f1"]), _f(summ["auc_roc"]),
               _pct(summ["far_normal"])]
        if nab:
            return [*out, nab_standard(summ, model, headline)]
        return [*out, _pct(summ["far_check"]), within(summ)]

    rows = []
    head = _headline_subset(base, seeds, cal)
    for m, sm in head.items():
        rows.append([f"`{Path(base_path).name}`", f"headline settings ({cal[0]} at {cal[1]:g})",
                     f"`{m}`", str(sm["entities"]), ",".join(map(str, sm["seeds"])),
                     *cells(sm, m, True)])
    for path, data in variants:
        for m, sm in data["summary"].items():
            known = any(r["model"] == m for r in base["records"])
            diff = _differences(base, data, m) + ("" if known else f"; model `{m}`")
            own = data["meta"]["settings"]["calibrations"][0]
            if list(own) != list(cal):  # the variant's figures are at its own calibration
                diff = diff.replace("(same settings)", "").strip("; ")
                diff = (f"{diff}; " if diff else "") + f"threshold `{own[0]}` at {own[1]:g}"
            rows.append([f"`{Path(path).name}`", diff, f"`{m}`", str(sm["entities"]),
                         ",".join(map(str, sm["seeds"])), *cells(sm, m, False)])
    header = ["file", "what differs", "model", "entities", "seeds", "AUC-PR", "F1",
              "best F1 (oracle)", "AUC-ROC", "far_normal"]
    header += (["NAB standard"] if nab else
               ["far_check", f"far_check in [{FAR_BOUNDS[0]}, {FAR_BOUNDS[1]}] x alpha"])
    return _table(header, rows)


HEADER = """# Benchmarks

Generated by `make bench` (scripts/bench.sh) with
`python -m ae_anomaly.evaluation.report`, from the results files named in each section;
edit the notes between the `notes` markers, not the tables.

Protocol (docs: `ae-anomaly benchmark --help`, ae_anomaly/evaluation/benchmark/): every
model is fitted on each entity's training data only; its threshold comes from the
configured calibration rule on a held-out slice of the *training* data (never from test
labels); predicted points are the points inside events built by the production event rules.
**F1 is point-wise, without point-adjust, at that calibrated threshold**; F1-PA
(point-adjusted) is shown only beside it, to make its inflation visible, and only for time
series (per-row flow data has no segments in time to adjust); *best F1* picks the
threshold with the test labels and is an **oracle upper bound**, not a result. AUC-PR and
AUC-ROC are of the raw (smoothed) scores. `far_normal` is the realised alarm rate on label-0
test points, `far_check` on the last slice of the training period. Every table has a PCA
and a random row from the same run.
"""


def render(paths: Sequence[str | Path], variants: Sequence[str | Path] = (),
           notes: str | None = None) -> str:
    """The whole Markdown document."""
    loaded = [(p, load_results(p)) for p in paths]
    out = [HEADER]
    out += ["Defaults the benchmark applies per dataset (below the config file and `--set`; "
            f"always: `{' '.join(ALWAYS_DEFAULTS)}`):", ""]
    out += [f"- `{ds}`: `{' '.join(d)}`" for ds, d in DATASET_DEFAULTS.items()]
    out += [""]
    out += [NOTES_START, (notes or "").strip("\n"), NOTES_END, "", "## Results", ""]
    for p, d in loaded:
        if d["meta"].get("kind") == "replay":  # ae-anomaly replay: its own tables too
            from ae_anomaly.evaluation.replay import render_replay

            out += [render_replay(p, d), ""]
        else:
            out += [render_file(p, d), ""]
    by_ds: dict[str, list[str | Path]] = {}
    for v in variants:
        by_ds.setdefault(load_results(v)["meta"]["settings"]["dataset"], []).append(v)
    for ds, vs in by_ds.items():
        base = next((p for p, d in loaded if d["meta"]["settings"]["dataset"] == ds), None)
        if base is None:
            continue
        out += [f"### What we tried on `{ds}` (variants of the headline run)", "",
                render_variants(base, vs), ""]
    return "\n".join(out).rstrip() + "\n"


def _existing_notes(path: Path) -> str | None:
    if not path.is_file():
        return None
    text = path.read_text()
    if NOTES_START in text and NOTES_END in text:
        return text.split(NOTES_START, 1)[1].split(NOTES_END, 1)[0]
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m ae_anomaly.evaluation.report FILES [--variants FILES] [-o OUT]``."""
    ap = argparse.ArgumentParser(prog="python -m ae_anomaly.evaluation.report",
                                 description="Render benchmark results JSON as Markdown.")
    ap.add_argument("files", nargs="+", help="headline results files (one per dataset)")
    ap.add_argument("--variants", nargs="*", default=[],
                    help="results files of variant runs (the 'what we tried' tables)")
    ap.add_argument("-o", "--output", help="write here, keeping its notes block; "
                                           "default: stdout")
    args = ap.parse_args(argv)
    notes = _existing_notes(Path(args.output)) if args.output else None
    text = render(args.files, args.variants, notes)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
