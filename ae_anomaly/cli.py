"""The ``ae-anomaly`` command.

The CLI is the application's entry point, so it may start the Prefect flows in ``flows/``
(imported lazily, inside the commands); the library modules below it never import Prefect.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from typing import Any

from ae_anomaly.errors import AeAnomalyError

EPILOG = textwrap.dedent("""\
    Every command reads a YAML config (--config, default: built-in defaults) and takes
    --set KEY=VALUE overrides, e.g. --set training.epochs=5 --set calibration.alpha=0.01.
    Everything is written under the state folder ./.ae_anomaly (AE_ANOMALY_HOME to move it).

    First time?  ae-anomaly demo        (about two minutes on a laptop CPU)
    Your data:   ae-anomaly train -c configs/demo.yaml --input metrics.csv
                 ae-anomaly score -c configs/demo.yaml --input new_metrics.csv
    See README.md and docs/ for the configuration reference.
""")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE",
                   help="YAML configuration file (see configs/); default: built-in defaults")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override one config key, dotted (repeatable): "
                        "--set training.epochs=5")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="ae-anomaly",
        description="Autoencoder anomaly detection for server metrics and network flows: "
                    "train on normal behaviour, calibrate the alarm threshold to a "
                    "false-alarm budget, register in MLflow, score on a schedule and write "
                    "flagged events to a database table.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress details (and tracebacks on errors)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo", help="run the whole pipeline on generated server metrics",
        description="Generate a realistic multi-server metrics data set with injected "
                    "anomalies, train a 1D-conv autoencoder (Prefect flow, MLflow-tracked), "
                    "calibrate its threshold, register it as 'champion', score the fresh "
                    "period and write flagged events to the anomaly table. Safe to re-run: "
                    "events are upserted, never duplicated.")
    _common(p)

    p = sub.add_parser(
        "train", help="train, calibrate, log and register a detector",
        description="Train a detector on normal history, fit its threshold on a held-out "
                    "slice, log the run to MLflow and register a new model version. The "
                    "first version of a model gets the alias 'champion'.")
    _common(p)
    p.add_argument("-i", "--input", metavar="PATH",
                   help="training data file or folder (overrides data.train)")

    p = sub.add_parser(
        "score", help="score data with the champion model and write events",
        description="Load models:/<name>@champion, score files in chunks, group flagged steps "
                    "into events and upsert them into the anomaly table. Re-running on the "
                    "same data leaves the table unchanged.")
    _common(p)
    p.add_argument("-i", "--input", metavar="PATH", action="append",
                   help="file or folder to score (repeatable; default data.score)")

    p = sub.add_parser("events", help="show the events in the anomaly table",
                       description="Print the newest events of the anomaly table.")
    _common(p)
    p.add_argument("-n", "--limit", type=int, default=20, help="rows to show (default 20)")

    p = sub.add_parser("config", help="print the resolved configuration",
                       description="Print the configuration after defaults, the file and "
                                   "overrides are applied, as JSON.")
    _common(p)

    p = sub.add_parser(
        "serve", help="serve the cron deployments against a Prefect server",
        description="Register the 'score' and 'train' deployments (schedules from the "
                    "config's deployment section) with the Prefect API at PREFECT_API_URL "
                    "and run them as they come due. Stop with Ctrl-C.")
    _common(p)
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # Prefect logs a failed task's traceback; for errors the user can act on, the one-line
    # message printed by main() is the whole story.
    if not verbose:
        # MLflow announces table creation, registration and signature checks at INFO.
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
        logging.getLogger("prefect").addFilter(_DropUserErrorTracebacks())
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(_DropUserErrorTracebacks())


class _DropUserErrorTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, AeAnomalyError):
            return False
        return "AeAnomalyError" not in record.getMessage() and not _is_user_error_message(
            record.getMessage())


def _is_user_error_message(msg: str) -> bool:
    return any(f"ae_anomaly.errors.{n}" in msg for n in ("DataError", "ConfigError",
                                                           "ModelNotFoundError"))


def _print_demo_summary(out: dict[str, Any]) -> None:
    from ae_anomaly.config import expand_path, load_config, state_home
    from ae_anomaly.pipeline import read_events

    cfg = load_config(None, out["overrides"])
    tr, sc = out["train"], out["score"]
    events = read_events(cfg)
    events = events[(events.model_name == sc["model_name"])
                     & (events.model_version == sc["model_version"])]
    store = expand_path(cfg.tracking.tracking_uri)
    print()
    print(f"Trained {cfg.model.name} in {tr['train_seconds']:.0f}s ({tr['epochs']} epochs); "
          f"threshold {tr['threshold']:.4g} ({cfg.calibration.method}, "
          f"alpha={cfg.calibration.alpha:g}).")
    print(f"Registered {tr['model_name']} v{tr['model_version']}; scored with the champion, "
          f"v{sc['model_version']}.")
    print(f"Scored {sc['steps']:,} steps: {sc['flagged_steps']} flagged, {len(events)} events "
          f"in the table ({sc['rows_written']} rows inserted or changed by this run).")
    if len(events):
        print("\nTop 5 events by severity (peak score / threshold):")
        top = events.sort_values("severity", ascending=False).head(5)
        for r in top.itertuples():
            chans = ", ".join(f"{k} {v:.0%}" for k, v in list(r.top_channels.items())[:3])
            print(f"  {r.entity:<10} {r.start_ts:%Y-%m-%d %H:%M} -> {r.end_ts:%H:%M}  "
                  f"severity {r.severity:6.1f}  driven by {chans}")
    print(f"\nInjected anomalies (ground truth): {out['data'].anomalies}")
    print(f"Anomaly table:   {expand_path(cfg.sink.url)}  (table {cfg.sink.table})")
    print(f"MLflow store:    {store}")
    print(f"MLflow UI:       mlflow ui --backend-store-uri {store} --port 5000")
    print(f"State folder:    {state_home()}")


def _run(args: argparse.Namespace) -> int:
    from ae_anomaly.environment import apply_quiet_defaults

    apply_quiet_defaults()
    from ae_anomaly.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "input", None):
        if args.command == "train":
            overrides.append(f"data.train={args.input}")
    cfg = load_config(args.config, overrides)  # fail fast on config errors, before Prefect

    if args.command == "config":
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0
    if args.command == "events":
        from ae_anomaly.pipeline import read_events

        df = read_events(cfg)
        if df.empty:
            print("no events in the table")
            return 0
        cols = ["entity", "start_ts", "end_ts", "severity", "peak_score", "model_version"]
        print(df[cols].head(args.limit).to_string(index=False))
        print(f"({len(df)} events in {cfg.sink.table})")
        return 0
    if args.command == "demo":
        from flows.demo import demo_flow

        _print_demo_summary(demo_flow(args.config, overrides))
        return 0
    if args.command == "train":
        from flows.train import train_flow

        out = train_flow(args.config, overrides)
        print(f"registered {out['model_name']} v{out['model_version']} "
              f"(run {out['run_id']}); threshold {out['threshold']:.4g}"
              + ("; alias 'champion' set" if out["champion_set"] else ""))
        warning = out["calibration"].get("warning")
        if warning:
            print(f"warning: {warning}")
        return 0
    if args.command == "score":
        from flows.score import score_flow

        out = score_flow(args.config, overrides, args.input)
        print(f"{out['model_name']} v{out['model_version']}: scored {out['steps']:,} steps, "
              f"{out['events']} events, {out['rows_written']} rows inserted or changed")
        return 0
    if args.command == "serve":
        from flows.serve import serve_deployments

        serve_deployments(args.config, overrides)
        return 0
    raise AssertionError(args.command)  # pragma: no cover


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a command; user errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return _run(args)
    except AeAnomalyError as exc:
        if args.verbose:
            raise
        print(f"ae-anomaly: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ae-anomaly: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
