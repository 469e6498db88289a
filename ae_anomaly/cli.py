"""The ``ae-anomaly`` command.

One small function per command (``cmd_train``, ``cmd_score``, ...), registered with its
subparser through ``set_defaults(func=...)``; :func:`main` parses, sets up logging and turns
user errors into one line. The CLI is the application's entry point, so it may start the
Prefect flows of the package ``ae_anomaly_flows`` (the repository's ``flows/`` folder),
imported lazily inside the commands, as torch and MLflow are: ``ae-anomaly --help`` stays
fast. The library modules below it never import Prefect.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ae_anomaly.errors import AeAnomalyError

if TYPE_CHECKING:
    from ae_anomaly.config import AppConfig

Command = Callable[[argparse.Namespace], int]
FLOWS_PACKAGE = "ae_anomaly_flows"

EPILOG = textwrap.dedent("""\
    Every command reads a YAML config (--config, default: built-in defaults) and takes
    --set KEY=VALUE overrides, e.g. --set training.epochs=5 --set calibration.alpha=0.01.
    Everything is written under the state folder ./.ae_anomaly (AE_ANOMALY_HOME to move it).

    First time?  ae-anomaly demo        (about a minute on 2 idle CPU cores)
    Your data:   ae-anomaly train -c configs/demo.yaml --input metrics.csv
                 ae-anomaly score -c configs/demo.yaml --input new_metrics.csv
    See README.md and docs/ for the configuration reference.
""")


# ------------------------------------------------------------------------- the parser
def _common(p: argparse.ArgumentParser) -> None:
    # -v works before or after the command (SUPPRESS: absent here keeps the top level's)
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log progress details (and tracebacks on errors)")
    p.add_argument("-c", "--config", metavar="FILE",
                   help="YAML configuration file (see configs/); default: built-in defaults")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override one config key, dotted (repeatable): "
                        "--set training.epochs=5")


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps prose paragraphs; keeps indented lines (the examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in text.split("\n\n"):
            lines = para.splitlines()
            if any(line.startswith("  ") for line in lines):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(textwrap.fill(" ".join(para.split()), width,
                                         initial_indent=indent, subsequent_indent=indent))
        return "\n\n".join(out)


#: worked examples shown at the end of each command's --help
EXAMPLES: dict[str, str] = {
    "demo": """\
  ae-anomaly demo                        # metrics and network flows, about a minute
  ae-anomaly demo --no-netflow           # server metrics only""",
    "train": """\
  ae-anomaly train -c configs/demo.yaml --input history.csv
  ae-anomaly train -c configs/demo.yaml --input history/ --set model.name=vae
  ae-anomaly train -c configs/demo.yaml --set calibration.alpha=0.01 --set training.epochs=5""",
    "score": """\
  ae-anomaly score -c configs/demo.yaml --input new_data.csv
  ae-anomaly score -c configs/ops.yaml        # one scheduled run from the watermarks""",
    "events": """\
  ae-anomaly events -c configs/demo.yaml --since 6h --min-severity 2
  ae-anomaly events -c configs/demo.yaml --entity server-01 --open
  ae-anomaly events -c configs/demo.yaml --json -n 100 > events.json""",
    "calibrate": """\
  ae-anomaly calibrate -c configs/demo.yaml
  ae-anomaly calibrate -c configs/demo.yaml --alias challenger""",
    "sample": """\
  ae-anomaly sample -c configs/demo.yaml --set model.name=rae -n 10 -o windows.csv""",
    "config": """\
  ae-anomaly config -c configs/demo.yaml                  # the resolved configuration
  ae-anomaly config -c configs/demo.yaml --set calibration.alpha=0.01""",
    "serve": """\
  prefect server start --host 127.0.0.1 --port 4200 &
  PREFECT_API_URL=http://127.0.0.1:4200/api ae-anomaly serve -c configs/ops.yaml""",
    "backfill": """\
  ae-anomaly backfill -c configs/ops.yaml --from 2026-11-30 --to 2026-12-01""",
    "promote": """\
  ae-anomaly promote -c configs/demo.yaml                 # challenger vs champion
  ae-anomaly promote -c configs/demo.yaml --challenger 3""",
    "rollback": """\
  ae-anomaly rollback -c configs/demo.yaml                # champion back to 'previous'""",
    "dashboard": """\
  ae-anomaly dashboard -c configs/demo.yaml               # http://127.0.0.1:8050/
  ae-anomaly dashboard -c configs/ops.yaml --port 8080""",
    "benchmark": """\
  ae-anomaly benchmark --dataset smd --data-dir ../shared/data/smd --entities machine-1-2 \\
      --models conv_ae,pca,random --seeds 0 --output results.json""",
    "replay": """\
  ae-anomaly replay --dataset smd --data-dir ../shared/data/smd --entities machine-1-2 \\
      --models conv_ae,pca,random --variants static,aci --output replay.json \\
      --report replay.md""",
    "alerts": """\
  ae-anomaly alerts -c configs/demo.yaml                        # what was sent or parked
  ae-anomaly alerts test -c configs/demo.yaml --set alerts.webhook_url=http://127.0.0.1:9000/
  ae-anomaly alerts silence -c configs/demo.yaml --entity 'web-*' --hours 2 --comment deploy""",
}


def _command(sub: Any, name: str, func: Command, **kwargs: Any) -> argparse.ArgumentParser:
    """Add subcommand ``name`` run by ``func``, with the options every command takes and
    its examples."""
    if name in EXAMPLES:
        kwargs.setdefault("epilog", "examples:\n" + EXAMPLES[name])
    kwargs.setdefault("formatter_class", _HelpFormatter)
    p: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    _common(p)
    p.set_defaults(func=func)
    return p


def _add_demo(sub: Any) -> None:
    p = _command(
        sub, "demo", cmd_demo, help="run the whole pipeline on generated server metrics",
        description="Generate a realistic multi-server metrics data set with injected "
                    "anomalies, train a 1D-conv autoencoder (Prefect flow, MLflow-tracked), "
                    "calibrate its threshold, register it as 'champion', score the fresh "
                    "period and write flagged events to the anomaly table. Then the same for "
                    "network flows: generated NetFlow records with port scans, DoS bursts, "
                    "exfiltration and new services, aggregated into per-host series "
                    "(--netflow-config). Safe to re-run: events are upserted, never duplicated.")
    p.add_argument("--netflow-config", metavar="FILE", default="configs/netflow_demo.yaml",
                   help="network-flow part's config (default configs/netflow_demo.yaml)")
    p.add_argument("--no-netflow", action="store_true", help="skip the network-flow part")


def _add_train(sub: Any) -> None:
    p = _command(
        sub, "train", cmd_train, help="train, calibrate, log and register a detector",
        description="Train a detector on normal history, fit its threshold on a held-out "
                    "slice, log the run to MLflow and register a new model version. The "
                    "first version of a model gets the alias 'champion'.")
    p.add_argument("-i", "--input", metavar="PATH",
                   help="training data file or folder (overrides data.train)")


def _add_score(sub: Any) -> None:
    p = _command(
        sub, "score", cmd_score, help="score data with the champion model and write events",
        description="Load models:/<name>@champion, score files in chunks, group flagged steps "
                    "into events and upsert them into the anomaly table. Re-running on the "
                    "same data leaves the table unchanged. With source.kind folder or sql "
                    "(configs/ops.yaml) and no --input: one scheduled run: ingest the landing "
                    "folder, then score every entity from its watermark.")
    p.add_argument("-i", "--input", metavar="PATH", action="append",
                   help="file or folder to score (repeatable; default data.score)")


def _add_events(sub: Any) -> None:
    p = _command(sub, "events", cmd_events, help="show the events in the anomaly table",
                 description="Print the newest events of the anomaly table, filtered. Needs "
                             "no model: it reads the table only, and starts fast.")
    p.add_argument("-n", "--limit", type=int, default=20, help="rows to show (default 20)")
    p.add_argument("--entity", help="only this entity")
    p.add_argument("--model", help="only this registered model name")
    p.add_argument("--since", metavar="WHEN",
                   help="only events ending at or after WHEN: a timestamp (2026-12-01T08:00, "
                        "UTC) or a duration back from now (30min, 6h, 2d)")
    p.add_argument("--min-severity", type=float, metavar="X",
                   help="only events whose peak score / threshold is at least X")
    p.add_argument("--open", action="store_true",
                   help="only events that may still grow (is_open: the data ended within "
                        "their merge gap)")
    p.add_argument("--json", action="store_true",
                   help="print JSON (a list of objects, ISO timestamps) instead of a table")


def _add_calibrate(sub: Any) -> None:
    p = _command(
        sub, "calibrate", cmd_calibrate, help="show the champion's calibration report",
        description="Print the calibration report of a registered model (default: the alias "
                    "'champion'): method, target alpha, calibration-set size, threshold, the "
                    "90% interval of the false-alarm rate that this set size implies, and a "
                    "warning when the set is too small for alpha (fewer than 10/alpha "
                    "points). The same report is logged to MLflow with every training run "
                    "(calibration/report.json).")
    p.add_argument("--report", action="store_true", default=True,
                   help="print the report (the default and, for now, only action)")
    p.add_argument("--alias", default=None, help="registry alias to read (default champion)")


def _add_sample(sub: Any) -> None:
    p = _command(
        sub, "sample", cmd_sample,
        help="generate normal-looking windows from a generative model",
        description="Decode draws from the latent model of a registered rae (the Gaussian "
                    "mixture fitted on its training codes) or vae (the prior) into new "
                    "windows in the original units, and write them as a wide CSV "
                    "(window, step, one column per metric). Useful to see what the model "
                    "thinks normal looks like, or to augment tests.")
    p.add_argument("-n", type=int, default=10, help="windows to generate (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--alias", default=None, help="registry alias to read (default champion)")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="CSV file to write")


def _add_config(sub: Any) -> None:
    _command(sub, "config", cmd_config, help="print the resolved configuration",
             description="Print the configuration after defaults, the file and "
                         "overrides are applied, as JSON.")


def _add_serve(sub: Any) -> None:
    _command(
        sub, "serve", cmd_serve, help="serve the cron deployments against a Prefect server",
        description="Register the 'score' and 'train' deployments (schedules from the "
                    "config's deployment section) with the Prefect API at PREFECT_API_URL "
                    "and run them as they come due. Stop with Ctrl-C. Start a server first: "
                    "prefect server start --host 127.0.0.1 (see docs/operations.md).")


def _add_backfill(sub: Any) -> None:
    p = _command(
        sub, "backfill", cmd_backfill, help="re-score a time range of the incremental source",
        description="Re-score [--from, --to] of the scheduled source (source.kind folder or "
                    "sql) with the champion, replacing the model's events in the range "
                    "(widened to where no event is open). Idempotent; watermarks are not "
                    "moved. Use it after late data or a promotion.")
    p.add_argument("--from", dest="start", metavar="TIME",
                   help="start of the range, ISO 8601 UTC (default: the start of the data)")
    p.add_argument("--to", dest="end", metavar="TIME",
                   help="end of the range, ISO 8601 UTC (default: the newest data)")


def _add_promote(sub: Any) -> None:
    p = _command(
        sub, "promote", cmd_promote,
        help="promote the challenger to champion if it passes the gates",
        description="Score the champion and the challenger on the same evaluation window "
                    "(promotion.eval_data, else the newest steps of the source, else "
                    "data.score), apply the gates of the promotion section (feature schema, "
                    "calibration size, alert-rate budget, quality or alert count, score "
                    "shift), move 'champion' only if all pass (the former champion becomes "
                    "'previous'), record the decision as model-version tags and an MLflow "
                    "run, and print the table. Exits 1 when the challenger is rejected.")
    p.add_argument("--name", metavar="NAME",
                   help="registered model name (default tracking.registered_model)")
    p.add_argument("--challenger", metavar="VERSION",
                   help="version to evaluate (default: the 'challenger' alias)")


def _add_rollback(sub: Any) -> None:
    p = _command(
        sub, "rollback", cmd_rollback, help="move champion back to the previous version",
        description="Point 'champion' at the version aliased 'previous' (set by the last "
                    "promotion) and record the rollback; scheduled scoring uses it from its "
                    "next run.")
    p.add_argument("--name", metavar="NAME",
                   help="registered model name (default tracking.registered_model)")


def _add_dashboard(sub: Any) -> None:
    p = _command(
        sub, "dashboard", cmd_dashboard,
        help="serve the ops dashboard of flagged events in a browser",
        description="Serve the built-in dashboard: open events (filterable), each event's "
                    "raw series and scores in context, alarm rate per day against the "
                    "budget, and acknowledge / false-positive feedback (kept in its own "
                    "table, exportable as CSV). Reads the anomaly table of sink.url (or "
                    "--db) and the raw data of data.score. Stop with Ctrl-C. "
                    "Authentication is optional and comes from the environment: "
                    "AE_ANOMALY_DASHBOARD_TOKEN (bearer token) and/or "
                    "AE_ANOMALY_DASHBOARD_USER + AE_ANOMALY_DASHBOARD_PASSWORD (HTTP "
                    "basic); see docs/dashboard.md, Security.")
    p.add_argument("--port", type=int, default=8050, help="port to listen on (default 8050)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--trusted-host", action="append", default=[], metavar="NAME",
                   help="a host name browsers may use to reach the dashboard (repeatable; "
                        "localhost and --host are always trusted; also "
                        "AE_ANOMALY_DASHBOARD_TRUSTED_HOSTS, comma-separated). "
                        "'*.example.com' matches subdomains")
    p.add_argument("--db", metavar="URL",
                   help="SQLAlchemy URL of the anomaly table's database (overrides sink.url)")
    p.add_argument("--no-scores", action="store_true",
                   help="do not load models from MLflow to recompute scores on event pages")
    p.add_argument("--mlflow-url", metavar="URL",
                   help="base URL of the MLflow UI, to link event pages to their run and "
                        "model version (also AE_ANOMALY_DASHBOARD_MLFLOW_URL; default: "
                        "tracking.tracking_uri when it is an http(s) tracking server)")


BENCHMARK_DESCRIPTION = textwrap.dedent("""\
    Fit each model on each entity's training data only, fit its threshold on a
    held-out slice of that training data (never on test labels), score the test
    data, turn flagged points into events with the config's event rules, and write
    one record per (model, entity, seed) to --output: AUC-ROC, AUC-PR, point-wise
    precision / recall / F1 at the calibrated threshold (no point-adjust), f1_pa
    (point-adjusted, for comparison only), best_f1 (oracle threshold from the test
    labels: an upper bound, not a result), event recall, the target alpha, the
    realised alarm rate on normal test points (far_normal) and on a check slice at
    the end of the training period (far_check), and timings; plus per-model means
    in 'summary' (and NAB scores per profile for --dataset nab).

    The output file is the checkpoint: it is rewritten after every cell, and running
    the same command again skips the cells it holds (so an interrupted run resumes).

    Datasets (--data-dir):
      smd      SMD folder: train/, test/, test_label/ (machine-1-2.txt ...)
      nab      NAB folder: data/<category>/<file>.csv, labels/combined_windows.json;
               fitted on each file's first 15% (probationary period)
      nsl-kdd  folder with KDDTrain+.txt / KDDTest+.txt (configs/datasets/nsl_kdd.yaml)
      flows    any flow CSV/Parquet described by --dataset-config FILE

    Models: registered autoencoders (conv_ae, dense_ae, vae, ...) and the baselines
    pca (reconstruction error), iforest (IsolationForest on windows) and random.

    --set takes config keys (training.epochs=10, window.length=32, model.latent_dim=8
    for every autoencoder; the scoring keys production uses too: postprocess.smooth=10,
    postprocess.smooth_mode=center, postprocess.channel_reduce=max,
    postprocess.errors=causal, calibration.per_channel=true), benchmark keys
    (bench.check_fraction=0.1, bench.calibration_fraction=0.1, bench.ensemble=true)
    and per-model keys (models.pca.variance=0.95, models.vae.beta=2). Settings per
    dataset and their defaults: docs/benchmarks.md.

    Example, the SMD headline of docs/benchmarks.md (about 17 minutes on 2 shared
    CPU cores):
      ae-anomaly benchmark --dataset smd --data-dir ../shared/data/smd \\
          --models conv_ae,pca,iforest,random --seeds 0,1,2 \\
          --calibration conformal,k_sigma --alphas 0.01,0.001 \\
          --set window.train_stride=4 --set bench.ensemble=true \\
          --output bench-results/smd.json
    Then: python -m ae_anomaly.evaluation.report bench-results/smd.json
    (or make bench, which runs every benchmark and rewrites docs/benchmarks.md)""")


def _add_benchmark(sub: Any) -> None:
    p = _command(
        sub, "benchmark", cmd_benchmark,
        help="measure models and baselines on a labelled benchmark dataset",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=BENCHMARK_DESCRIPTION)
    p.add_argument("--dataset", required=True, choices=["smd", "nab", "nsl-kdd", "netflow"],
                   help="benchmark format of --data-dir")
    p.add_argument("--data-dir", required=True, metavar="DIR",
                   help="the dataset folder, e.g. ../shared/data/smd")
    p.add_argument("--entities", metavar="A,B,...",
                   help="entities to run (SMD machines, NAB files, stems or categories); "
                        "default all found")
    p.add_argument("--dataset-config", metavar="FILE",
                   help="flow dataset YAML for --dataset netflow (nsl-kdd defaults to "
                        "configs/datasets/nsl_kdd.yaml)")
    p.add_argument("--models", default="conv_ae,pca,iforest,random", metavar="M1,M2,...",
                   help="models to compare (default conv_ae,pca,iforest,random)")
    p.add_argument("--seeds", default="0", metavar="0,1,2",
                   help="seeds; every model runs once per entity and seed (default 0)")
    p.add_argument("--calibration", metavar="METHODS",
                   help="threshold rules to evaluate, e.g. conformal,k_sigma (default: the "
                        "config's calibration.method); the first is the headline")
    p.add_argument("--alphas", metavar="A1,A2",
                   help="target false-alarm rates, e.g. 0.01,0.001 (default: the config's "
                        "calibration.alpha)")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="results JSON (also the checkpoint for resuming)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_alerts(sub: Any) -> None:
    p = _command(
        sub, "alerts", cmd_alerts, help="list, send and silence alert notifications",
        description="Alert notifications (docs/alerting.md). 'list' (default): the newest "
                    "outbox rows with their state per channel (pending, sent, suppressed, "
                    "parked with the reason). 'dispatch': send what is pending to the "
                    "configured channels (alerts.alertmanager_url, alerts.webhook_url, "
                    "alerts.slack_webhook_url), every alerts.dispatch_interval_seconds until "
                    "Ctrl-C, or one pass with --once. 'test': queue and send a test alert. "
                    "'silence': hold back alerts of an entity or model (glob patterns) for "
                    "a while; the events are still recorded. 'silences': the active "
                    "silences. 'unsilence ID': end one now.")
    p.add_argument("action", nargs="?", default="list",
                   choices=["list", "dispatch", "test", "silence", "silences", "unsilence"])
    p.add_argument("silence_id", nargs="?", type=int, help="unsilence: the silence's id")
    p.add_argument("--status", choices=["pending", "retry", "sent", "parked", "suppressed",
                                        "expired"], help="list: only rows in this state")
    p.add_argument("-n", "--limit", type=int, default=20, help="list: rows (default 20)")
    p.add_argument("--once", action="store_true", help="dispatch: one pass, then exit")
    p.add_argument("--entity", help="silence: entity glob pattern (web-*)")
    p.add_argument("--model", help="silence: model name glob pattern")
    p.add_argument("--start", help="silence: start (ISO 8601, UTC; default now)")
    p.add_argument("--end", help="silence: end (ISO 8601, UTC)")
    p.add_argument("--hours", type=float, default=2.0,
                   help="silence: length when --end is not given (default 2)")
    p.add_argument("--by", default=None, help="silence: who (default $USER)")
    p.add_argument("--comment", default="", help="silence: why")


REPLAY_DESCRIPTION = textwrap.dedent("""\
    Simulate a deployment over a labelled data set on a simulated clock, through the
    production code paths: per (model, entity, seed, variant) a temporary state
    folder with an MLflow SQLite store and registry, a SQLite source table that the
    replay appends rows to, and a SQLite anomaly table. The first model is trained
    on the initial history (default: the data set's training part) and becomes
    champion; every replay.score_every steps the new rows are appended and the
    champion scores them incrementally (watermarks, event rules, adaptive threshold
    state); every replay.retrain_every steps (0: never) a challenger is trained on
    the last replay.train_window steps and judged by the promotion gates on the
    newest promotion.eval_steps steps of the source (no labels), or promoted
    outright with replay.promotion=always. Labels are read only afterwards, to
    score the anomaly table.

    Records (benchmark format, one per cell): point-wise precision / recall / F1 of
    the steps inside events (no point-adjust), AUC-PR of the champions' scores,
    events per entity-day against the budget, event recall and precision,
    detection delay, far_normal overall and per day, NAB scores (nab), and every
    retrain / promotion decision. The output file is the checkpoint: a rerun skips
    the cells it holds.

    --variants static,aci runs every cell with calibration.adaptive=none and =aci
    (records named model/variant). --set takes the benchmark's keys plus
    replay.initial_steps, replay.score_every, replay.retrain_every,
    replay.train_window, replay.promotion (gates|always), replay.keep_state.

    Example (docs/replay.md):
      ae-anomaly replay --dataset smd --data-dir ../shared/data/smd \\
          --entities machine-1-2 --models pca,random --variants static,aci \\
          --output replay-results/smd.json --report replay-results/smd.md""")


def _add_replay(sub: Any) -> None:
    p = _command(
        sub, "replay", cmd_replay,
        help="simulate a deployment (train, promote, score on a clock) over labelled data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=REPLAY_DESCRIPTION)
    p.add_argument("--dataset", required=True, choices=["smd", "nab"],
                   help="benchmark format of --data-dir")
    p.add_argument("--data-dir", required=True, metavar="DIR",
                   help="the dataset folder, e.g. ../shared/data/smd")
    p.add_argument("--entities", metavar="A,B,...",
                   help="entities to replay (SMD machines, NAB files, stems or categories); "
                        "default all found")
    p.add_argument("--models", default="conv_ae,pca,random", metavar="M1,M2,...",
                   help="models (default conv_ae,pca,random)")
    p.add_argument("--seeds", default="0", metavar="0,1,2", help="seeds (default 0)")
    p.add_argument("--variants", metavar="V1,V2",
                   help="threshold variants: static, aci (default: the config's "
                        "calibration.adaptive)")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="results JSON (also the checkpoint for resuming)")
    p.add_argument("--report", metavar="FILE.md",
                   help="also write the Markdown report and, beside it, the alarm-rate plot")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

SUBCOMMANDS = (_add_demo, _add_train, _add_score, _add_events, _add_calibrate, _add_sample,
               _add_config, _add_serve, _add_backfill, _add_promote, _add_rollback,
               _add_dashboard, _add_benchmark, _add_replay, _add_alerts)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from ae_anomaly import __version__

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
    parser.add_argument("--version", action="version", version=f"ae-anomaly {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


# ------------------------------------------------------------------------- logging
def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_MASK_SECRETS)
    # Prefect's run loggers write to their own handlers and to Prefect's database.
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_MASK_SECRETS)
    # Prefect logs a failed task's traceback; for errors the user can act on, the one-line
    # message printed by main() is the whole story.
    if not verbose:
        # MLflow announces table creation, registration and signature checks at INFO.
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # urllib3 warns at every retry of an unreachable tracking server; main() prints the
        # outcome as one line.
        logging.getLogger("urllib3").setLevel(logging.ERROR)
        logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
        logging.getLogger("prefect").addFilter(_DropUserErrorTracebacks())
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(_DropUserErrorTracebacks())


class _MaskSecrets(logging.Filter):
    """Mask passwords (URLs, ``password=``) in every line the console handler writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ae_anomaly.secrets import has_secret, mask_text

        message = record.getMessage()
        if has_secret(message):
            record.msg, record.args = mask_text(message), None
        return True


_MASK_SECRETS = _MaskSecrets()  # one instance: adding it again is a no-op


class _DropUserErrorTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, AeAnomalyError):
            return False
        if exc is not None:
            from ae_anomaly.sources import is_transient

            if is_transient(exc):  # a retried outage: the one-line message says it all
                record.exc_info, record.exc_text = None, None
            elif describe_error(exc) is not None:
                return False  # main() prints it as one line
        message = record.getMessage()
        return ("AeAnomalyError" not in message and not _is_user_error_message(message)
                and not _is_described_failure(message))


def _user_error_names() -> set[str]:
    found, todo = set(), [AeAnomalyError]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.add(sub.__name__)
            todo.append(sub)
    return found


def _is_described_failure(msg: str) -> bool:
    # Prefect's "Finished in state Failed('Task run encountered an exception
    # NotADirectoryError: ...')" for the errors describe_error() turns into one line.
    return "Finished in state Failed" in msg and any(
        f"exception {n}:" in msg or f"exception: {n}:" in msg
        for n in ("MemoryError", "FileNotFoundError", "PermissionError", "NotADirectoryError",
                  "IsADirectoryError", "FileExistsError", "MlflowException"))


def _is_user_error_message(msg: str) -> bool:
    # Prefect's "Finished in state Failed(... exception FeatureSchemaError: ...)" lines
    # repeat the one-line error main() prints.
    return any(f"ae_anomaly.errors.{n}" in msg or f"exception {n}:" in msg
               or f"exception: {n}:" in msg for n in _user_error_names())


# ------------------------------------------------------------------------- helpers
def bind_flows_package() -> None:
    """Bind ``ae_anomaly_flows`` to the source checkout's ``flows/`` folder, if any.

    The wheel (and an editable install) provide the repository's ``flows/`` folder as the
    package ``ae_anomaly_flows``. When ``ae_anomaly`` is imported from a source checkout,
    that checkout's folder is bound to the name, so the flows always match the library they
    call, installed or not. Does nothing once the package is imported, or outside a checkout.
    """
    if FLOWS_PACKAGE in sys.modules:
        return
    root = Path(__file__).resolve().parents[1]
    init = root / "flows" / "__init__.py"
    if not ((root / "pyproject.toml").is_file() and init.is_file()):
        return
    spec = importlib.util.spec_from_file_location(
        FLOWS_PACKAGE, init, submodule_search_locations=[str(init.parent)])
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[FLOWS_PACKAGE] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules[FLOWS_PACKAGE]
        raise


def flows_module(name: str) -> ModuleType:
    """The module ``ae_anomaly_flows.<name>`` of the Prefect flows (see
    :func:`bind_flows_package`)."""
    bind_flows_package()
    return importlib.import_module(f"{FLOWS_PACKAGE}.{name}")


def _load_config(args: argparse.Namespace) -> tuple[AppConfig, list[str]]:
    """The command's configuration and its overrides (``train --input`` is one); loaded
    before any flow starts, so a config error fails fast, without Prefect."""
    from ae_anomaly.config import load_config
    from ae_anomaly.secrets import stash_secrets

    overrides = list(args.overrides)
    if args.command == "train" and args.input:
        overrides.append(f"data.train={args.input}")
    cfg = load_config(args.config, overrides)
    # The overrides become Prefect flow-run parameters (stored in Prefect's database): the
    # passwords in them travel as ${AE_ANOMALY_SECRET_<n>} references to this environment.
    return cfg, stash_secrets(overrides)


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


class _Stage:
    """Prints ``[i/n] what ...`` when entered and ``done in Xs`` when left (demo stages)."""

    def __init__(self, i: int, n: int, text: str) -> None:
        self.i, self.n, self.text = i, n, text

    def __enter__(self) -> _Stage:
        import time

        self.t0 = time.perf_counter()
        print(f"\n[{self.i}/{self.n}] {self.text}", flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        import time

        if exc[0] is None:
            print(f"      done in {time.perf_counter() - self.t0:.0f}s", flush=True)


def _top_events(events: Any, n: int, channels: int) -> None:
    for r in events.sort_values("severity", ascending=False).head(n).itertuples():
        chans = ", ".join(f"{k} {v:.0%}" for k, v in list(r.top_channels.items())[:channels])
        print(f"  {r.entity:<10} {r.start_ts:%Y-%m-%d %H:%M} -> {r.end_ts:%H:%M}  "
              f"severity {r.severity:6.1f}  driven by {chans}")


def _self_score(label: str, events: Any, truth: Any, slack: Any) -> None:
    """Print how the demo's events match its injected ground truth."""
    from ae_anomaly.evaluation.metrics import event_overlap

    rep = event_overlap(events, truth, slack)
    kinds = ", ".join(f"{k} {v:.0%}" for k, v in sorted(rep["recall_by_kind"].items()))
    print(f"  {label}: found {rep['found']} of {rep['n_truth']} injected ({kinds}); "
          f"{rep['n_events'] - rep['true_events']} of {rep['n_events']} events match "
          "nothing injected (false alarms)")


def _alarm_budget(cfg: AppConfig, fresh: Path, labels: Any, version: str) -> None:
    """Explain the flagged-step count against the budget: inside vs outside the injected
    anomalies, with the scores of the model version that scored."""
    import numpy as np
    import pandas as pd

    from ae_anomaly.tracking import Tracker
    from ae_anomaly.tracking.promotion import load_version

    det, _ = load_version(Tracker(cfg.tracking), cfg.tracking.registered_model, version)
    frame = pd.read_csv(fresh, parse_dates=["timestamp"])
    flagged = det.predict(frame)
    y = np.asarray(labels, dtype=bool)
    normal = ~y
    rate = float(flagged[normal].mean()) if normal.any() else float("nan")
    alpha = det.rule_.alpha
    print(f"  {int(flagged.sum()):,} of {len(frame):,} steps flagged: "
          f"{int(flagged[y].sum()):,} inside the injected anomalies "
          f"({int(y.sum()):,} steps), {int(flagged[normal].sum()):,} of {int(normal.sum()):,} "
          f"normal steps ({rate:.2%}) against the budget alpha = {alpha:.2%}.")
    if rate > 3 * alpha:
        print("  The normal-step rate is above the budget: the calibration slice (the end of "
              "the history) is shorter than the guarantee needs (see `ae-anomaly calibrate`), "
              "and the fresh period drifts; events group the flagged steps, so few reach "
              "you.")


def _print_next_steps(cfg_path: str | None) -> None:
    c = f" -c {cfg_path}" if cfg_path else ""
    print("\nnext:")
    print(f"  ae-anomaly dashboard{c}          # browse the events: http://127.0.0.1:8050/")
    print(f"  ae-anomaly events{c} --since 7d --min-severity 3")
    print(f"  ae-anomaly calibrate{c}          # the champion's threshold and its guarantee")
    print("  ae-anomaly serve -c configs/ops.yaml   # scheduled scoring (docs/operations.md)")


def _print_increment_notes(out: dict[str, Any]) -> None:
    for name, reason in out.get("quarantined", []):
        print(f"quarantined {name}: {reason}")
    if out.get("skipped"):
        print(f"left to a concurrent run: {', '.join(out['skipped'])}")


# ------------------------------------------------------------------------- the commands
def cmd_demo(args: argparse.Namespace) -> int:
    """``ae-anomaly demo``: the whole pipeline on generated data, stage by stage, then how it
    did against its own ground truth and what to try next."""
    import pandas as pd

    from ae_anomaly import pipeline
    from ae_anomaly.config import expand_path, load_config, resolve_config_path, state_home
    from ae_anomaly.data.synthetic_netflow import write_netflow_demo_data
    from ae_anomaly.secrets import mask_url
    from ae_anomaly.sinks import EventQuery, open_sink
    from ae_anomaly.tracking import Tracker

    cfg, overrides = _load_config(args)
    netflow_config = None if args.no_netflow else resolve_config_path(args.netflow_config)
    train_flow = flows_module("train").train_flow
    score_flow = flows_module("score").score_flow
    n = 6 if netflow_config else 5
    syn = cfg.data.synthetic
    print(f"ae-anomaly demo: generated data through the whole pipeline (state folder "
          f"{state_home()})", flush=True)

    with _Stage(1, n, f"Generating {syn.n_entities} servers x {syn.n_metrics} metrics: "
                      f"{syn.train_days:g} days of normal history, then {syn.score_days:g} "
                      "days with injected anomalies"):
        data = pipeline.write_demo_data(cfg)
    ov = overrides + pipeline.demo_overrides(data)
    cfg = load_config(args.config, ov)
    with _Stage(2, n, f"Training {cfg.model.name} (Prefect flow ae-anomaly-train, tracked in "
                      f"MLflow), calibrating its threshold at alpha = "
                      f"{cfg.calibration.alpha:g}, registering it"):
        tr = train_flow(args.config, ov)
    print(f"      {tr['model_name']} v{tr['model_version']}: {tr['epochs']} epochs, threshold "
          f"{tr['threshold']:.4g}" + ("; alias 'champion' set" if tr["champion_set"] else ""))
    with _Stage(3, n, f"Scoring the fresh period with models:/{cfg.tracking.registered_model}"
                      "@champion (Prefect flow ae-anomaly-score) into the anomaly table"):
        sc = score_flow(args.config, ov)
    sink = open_sink(cfg)
    events = sink.read(EventQuery(model=sc["model_name"]))
    events = events[events.model_version == sc["model_version"]]
    print(f"      {sc['steps']:,} steps scored: {len(events)} events "
          f"({sc['rows_written']} rows inserted or changed by this run)")

    # One promotion: a PCA challenger (the baseline, trained in seconds) against the
    # champion, judged by the gates on the fresh period with its injected labels.
    labelled = data.score.parent / "fresh_labelled.csv"
    frame = pd.read_csv(data.score)
    frame["label"] = data.labels
    frame.to_csv(labelled, index=False)
    pov = [*ov, f"promotion.eval_data={labelled}"]
    with _Stage(4, n, "Promotion: a PCA challenger against the champion, on the labelled "
                      "fresh period (ae-anomaly promote)"):
        train_flow(args.config, [*pov, "model={name: pca}"])
        pcfg = load_config(args.config, pov)
        decision = pipeline.promote(pcfg, Tracker(pcfg.tracking))
    print("\n".join("      " + line for line in decision.table().splitlines()))

    fsc, fdata, fcfg = None, None, None
    if netflow_config:
        fcfg0 = load_config(netflow_config)
        fs = fcfg0.data.synthetic
        with _Stage(5, n, f"Network flows: NetFlow records of {fs.n_entities} hosts (a clean "
                          "day, then port scans, DoS bursts, exfiltration, new services) -> "
                          "per-host 1-minute series -> the same train and score flows"):
            fdata = write_netflow_demo_data(fcfg0)
            fov = fdata.overrides()
            train_flow(netflow_config, fov)
            fsc = score_flow(netflow_config, fov)
            fcfg = load_config(netflow_config, fov)

    with _Stage(n, n, "How the demo did against its own ground truth"):
        step = pd.Timedelta(cfg.data.synthetic.freq)
        truth = pd.read_csv(data.anomalies)
        _self_score("server metrics", events, truth, step * cfg.events.merge_gap)
        _alarm_budget(cfg, data.score, data.labels, sc["model_version"])
        if fsc is not None and fdata is not None and fcfg is not None:
            fev = open_sink(fcfg).read(EventQuery(model=fsc["model_name"]))
            fev = fev[fev.model_version == fsc["model_version"]]
            _self_score("network flows", fev, pd.read_csv(fdata.attacks),
                        pd.Timedelta(minutes=1))

    if len(events):
        print("\nTop 5 events by severity (peak score / threshold):")
        _top_events(events, 5, 3)
    print(f"\nInjected anomalies (ground truth): {data.anomalies}")
    if fdata is not None:
        print(f"Injected attacks (ground truth):   {fdata.attacks}")
    store = mask_url(expand_path(cfg.tracking.tracking_uri))
    print(f"Anomaly table:   {mask_url(expand_path(cfg.sink.url))}  (table {cfg.sink.table})")
    print(f"MLflow store:    {store}")
    print(f"MLflow UI:       mlflow ui --backend-store-uri {store} --port 5000")
    _print_next_steps(args.config)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``ae-anomaly train``: train, calibrate, log and register (the train flow)."""
    _, overrides = _load_config(args)
    out = flows_module("train").train_flow(args.config, overrides)
    print(f"registered {out['model_name']} v{out['model_version']} "
          f"(run {out['run_id']}); threshold {out['threshold']:.4g}"
          + ("; alias 'champion' set" if out["champion_set"] else ""))
    warning = out["calibration"].get("warning")
    if warning:
        print(f"warning: {warning}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """``ae-anomaly score``: score with the champion and write events (the score flow)."""
    _, overrides = _load_config(args)
    out = flows_module("score").score_flow(args.config, overrides, args.input)
    print(f"{out['model_name']} v{out['model_version']}: scored {out['steps']:,} steps, "
          f"{out['events']} events, {out['rows_written']} rows inserted or changed")
    _print_increment_notes(out)
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    """``ae-anomaly backfill``: re-score a time range of the incremental source."""
    _, overrides = _load_config(args)
    # "" is an open end; both open re-scores everything.
    out = flows_module("score").score_flow(args.config, overrides,
                                           backfill_from=args.start or "",
                                           backfill_to=args.end or "")
    print(f"{out['model_name']} v{out['model_version']}: re-scored {out['steps']:,} steps "
          f"of {out['entities']} entities, {out['events']} events; {out['inserted']} "
          f"inserted, {out['updated']} updated, {out['deleted']} deleted")
    return 0


def _since(text: str | None) -> Any:
    """``--since``: a timestamp (UTC) or a duration back from now; None when not given."""
    if not text:
        return None
    import pandas as pd

    try:
        delta = pd.Timedelta(text)
    except ValueError:
        delta = None
    try:
        if delta is not None:
            return (pd.Timestamp.now(tz="UTC") - delta).tz_localize(None).to_pydatetime()
        ts = pd.Timestamp(text)
    except ValueError:
        raise AeAnomalyError(f"--since: '{text}' is neither a timestamp nor a duration "
                             "(e.g. 2026-12-01T08:00, 6h, 2d)") from None
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.to_pydatetime()


def cmd_events(args: argparse.Namespace) -> int:
    """``ae-anomaly events``: the newest rows of the anomaly table, filtered. Imports
    neither torch nor MLflow nor Prefect: it only reads the table."""
    from ae_anomaly.sinks import EventQuery, open_sink

    cfg, _ = _load_config(args)
    query = EventQuery(entity=args.entity, model=args.model, since=_since(args.since),
                       min_severity=args.min_severity, open_only=args.open,
                       limit=args.limit)
    df = open_sink(cfg).read(query)
    if args.json:
        print(df.to_json(orient="records", date_format="iso", indent=1)
              if len(df) else "[]")
        return 0
    if df.empty:
        print("no events match" if query != EventQuery(limit=args.limit)
              else "no events in the table")
        return 0
    cols = ["entity", "start_ts", "end_ts", "severity", "peak_score", "model_name",
            "model_version", "is_open"]
    print(df[cols].to_string(index=False))
    print(f"({len(df)} events shown from {cfg.sink.table}; -n to show more)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``ae-anomaly calibrate``: a registered model's calibration report."""
    cfg, _ = _load_config(args)
    from ae_anomaly.calibration import format_report
    from ae_anomaly.tracking import Tracker

    det, ref = Tracker(cfg.tracking).load(alias=args.alias)
    print(f"{ref.name} v{ref.version} ({det.model.name}, run {ref.run_id})")
    print(format_report(det.rule_.report()))
    per_channel = det.channel_thresholds()
    if per_channel:
        print("per-channel thresholds (a step alarms when any channel's smoothed error "
              "exceeds its own):")
        for name, thr in per_channel.items():
            print(f"  {name}: {thr:.4g}")
    for ent, rule in sorted(det.entity_rules_.items()):
        r = rule.report()
        print(f"  entity {ent}: threshold {r['threshold']:.4g} "
              f"(n={r['n_calibration']})" + (f"  warning: {r['warning']}"
                                             if r["warning"] else ""))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """``ae-anomaly sample``: windows drawn from a generative model, as a wide CSV."""
    cfg, _ = _load_config(args)
    import numpy as np
    import pandas as pd

    from ae_anomaly.tracking import Tracker

    det, ref = Tracker(cfg.tracking).load(alias=args.alias)
    wins = det.sample_windows(args.n, seed=args.seed)  # (n, C, L)
    n, c, length = wins.shape
    frame = pd.DataFrame(wins.transpose(0, 2, 1).reshape(n * length, c),
                         columns=det.feature_names_)
    frame.insert(0, "step", np.tile(np.arange(length), n))
    frame.insert(0, "window", np.repeat(np.arange(n), length))
    frame.to_csv(args.output, index=False)
    print(f"wrote {n} windows of {length} steps from {ref.name} v{ref.version} "
          f"({det.model.name}) to {args.output}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """``ae-anomaly config``: the resolved configuration as JSON."""
    cfg, _ = _load_config(args)
    from ae_anomaly.secrets import mask_values

    print(json.dumps(mask_values(cfg.model_dump(mode="json")), indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``ae-anomaly serve``: run the cron deployments against a Prefect server."""
    _, overrides = _load_config(args)
    flows_module("serve").serve_deployments(args.config, overrides)
    print("ae-anomaly serve: stopped (runs cancelled, schedules paused)", file=sys.stderr)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """``ae-anomaly promote``: exit 0 when the challenger became champion, 1 when not."""
    cfg, _ = _load_config(args)
    from ae_anomaly import pipeline
    from ae_anomaly.tracking import Tracker

    decision = pipeline.promote(cfg, Tracker(cfg.tracking), args.name, args.challenger)
    print(decision.table())
    print(f"decision recorded on v{decision.challenger_version} and in MLflow run "
          f"{decision.run_id}")
    return 0 if decision.promoted else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    """``ae-anomaly rollback``: champion back to the version aliased 'previous'."""
    cfg, _ = _load_config(args)
    from ae_anomaly.tracking import Tracker
    from ae_anomaly.tracking.promotion import rollback

    rb = rollback(Tracker(cfg.tracking), args.name)
    print(f"{rb.name}: champion v{rb.demoted} -> v{rb.restored} (rolled back; "
          f"MLflow run {rb.run_id})")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """``ae-anomaly dashboard``: serve the ops dashboard until Ctrl-C."""
    import os

    cfg, _ = _load_config(args)
    from ae_anomaly.dashboard.app import serve
    from ae_anomaly.dashboard.security import DashboardSecurity

    if args.db:
        cfg.sink.url = args.db
    security = DashboardSecurity.from_env(bind_host=args.host,
                                          trusted_hosts=args.trusted_host)
    warning = security.bind_warning(args.host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    auth = " + ".join(security.auth_methods()) or "none"
    print(f"ae-anomaly dashboard on http://{args.host}:{args.port}/ (authentication: {auth}; "
          f"trusted hosts: {', '.join(security.trusted_hosts)}; Ctrl-C to stop)", flush=True)
    serve(cfg, host=args.host, port=args.port, compute_scores=not args.no_scores,
          security=security,
          mlflow_url=args.mlflow_url or os.environ.get("AE_ANOMALY_DASHBOARD_MLFLOW_URL"))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    """``ae-anomaly benchmark``: models and baselines on a labelled data set."""
    from ae_anomaly.config import resolve_config_path
    from ae_anomaly.errors import ConfigError
    from ae_anomaly.evaluation.benchmark import resolve_settings, run_benchmark
    from ae_anomaly.evaluation.report import summary_table

    try:
        seeds = [int(s) for s in _csv(args.seeds)]
        alphas = [float(a) for a in _csv(args.alphas)] or None
    except ValueError:
        raise ConfigError("--seeds takes integers and --alphas numbers, comma-separated") from None
    models = _csv(args.models)
    if not models or not seeds:
        raise ConfigError("--models and --seeds must not be empty")
    dataset_config = args.dataset_config and resolve_config_path(args.dataset_config)
    settings = resolve_settings(args.dataset, args.data_dir, models, args.config,
                                args.overrides, dataset_config,
                                _csv(args.calibration) or None, alphas)
    data = run_benchmark(settings, args.output, models, seeds, _csv(args.entities) or None,
                         progress=not args.no_progress)
    print(summary_table(data))
    print(f"results: {args.output}")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    """``ae-anomaly alerts``: list, dispatch, test and silence alert notifications."""
    import getpass
    from datetime import timedelta

    from ae_anomaly.alerts.dispatcher import Dispatcher
    from ae_anomaly.alerts.store import AlertStore
    from ae_anomaly.db import utcnow
    from ae_anomaly.errors import ConfigError
    from ae_anomaly.sources import parse_ts

    cfg, _ = _load_config(args)
    channels = list(cfg.alerts.channels())
    store = AlertStore(cfg.sink.url, cfg.sink.table)
    if args.action in ("dispatch", "test") and not channels:
        raise ConfigError("no alert channel configured: set alerts.alertmanager_url, "
                          "alerts.webhook_url or alerts.slack_webhook_url")
    if args.action == "dispatch":
        dispatcher = Dispatcher.from_config(cfg)
        if args.once:
            print(dispatcher.run_once().summary())
            return 0
        print(f"dispatching to {', '.join(channels)} every "
              f"{cfg.alerts.dispatch_interval_seconds:g}s (Ctrl-C to stop)", flush=True)
        dispatcher.run_forever()
        return 0
    if args.action == "test":
        outbox_id = store.enqueue_test()
        report = Dispatcher.from_config(cfg).drain(cfg.alerts.dispatch_seconds or 30.0)
        print(f"test alert #{outbox_id}: {report.summary()}")
        states = store.notifications(channels, limit=200)
        row = next((r for r in states if r["id"] == outbox_id), None)
        ok = row is not None and all(d["status"] == "sent" for d in row["deliveries"].values())
        return 0 if ok else 1
    if args.action == "silence":
        start = parse_ts(args.start) if args.start else utcnow()
        end = parse_ts(args.end) if args.end else start + timedelta(hours=args.hours)
        try:
            sid = store.add_silence(args.entity, args.model, start, end,
                                    args.by or getpass.getuser(), args.comment)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        print(f"silence #{sid}: entity {args.entity or '*'}, model {args.model or '*'}, "
              f"{start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC")
        return 0
    if args.action == "silences":
        rows = store.silences(active_only=True)
        for s in rows:
            print(f"#{s.id}  entity {s.entity or '*'}  model {s.model or '*'}  "
                  f"{s.starts_at:%Y-%m-%d %H:%M} .. {s.ends_at:%Y-%m-%d %H:%M}  "
                  f"{s.created_by}: {s.comment}")
        print(f"({len(rows)} active silences)")
        return 0
    if args.action == "unsilence":
        if args.silence_id is None:
            raise ConfigError("unsilence needs the silence's id (ae-anomaly alerts silences)")
        if not store.expire_silence(args.silence_id):
            raise ConfigError(f"no active silence #{args.silence_id}")
        print(f"silence #{args.silence_id} ended")
        return 0
    rows = store.notifications(channels, status=args.status, limit=args.limit)
    for r in rows:
        what = r["event_id"] or r["payload"].get("alertname", "")
        states = "  ".join(
            f"{ch}:{d['status']}" + (f" ({d['reason']})" if d.get("reason")
                                     and d["status"] in ("parked", "suppressed", "retry")
                                     else "")
            for ch, d in r["deliveries"].items())
        print(f"#{r['id']:<6} {r['created_at']:%Y-%m-%d %H:%M}  {r['kind']:<5} "
              f"{r['action']:<8} {r['change']:<8} {r['entity']:<12} {what}  {states}")
    counts = store.delivery_counts()
    total = ", ".join(f"{ch} {st} {n}" for (ch, st), n in sorted(counts.items()))
    pending = ", ".join(f"{ch} pending {store.pending_count(ch)}" for ch in channels)
    print(f"({len(rows)} shown; {', '.join(x for x in (pending, total) if x) or 'none sent'})")
    return 0




def cmd_replay(args: argparse.Namespace) -> int:
    """``ae-anomaly replay``: a simulated deployment over a labelled data set."""
    from ae_anomaly.errors import ConfigError
    from ae_anomaly.evaluation.replay import render_replay, resolve_replay, run_replay

    try:
        seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError:
        raise ConfigError("--seeds takes integers, comma-separated") from None
    models = _csv(args.models)
    if not models or not seeds:
        raise ConfigError("--models and --seeds must not be empty")
    settings = resolve_replay(args.dataset, args.data_dir, models, args.config,
                              args.overrides, _csv(args.variants))
    run_replay(settings, args.output, models, seeds, _csv(args.entities) or None,
               progress=not args.no_progress)
    if args.report:
        report = Path(args.report)
        report.parent.mkdir(parents=True, exist_ok=True)
        text = render_replay(args.output, plot=report.with_suffix(".png"))
        report.write_text(text + "\n")
        print(text)
        print(f"report: {report}")
    print(f"results: {args.output}")
    return 0

# ------------------------------------------------------------------------- entry point
def _run(args: argparse.Namespace) -> int:
    from ae_anomaly.config import resolve_config_path
    from ae_anomaly.environment import apply_quiet_defaults

    apply_quiet_defaults()
    if args.config:  # configs/... falls back to the copy shipped with the package
        args.config = resolve_config_path(args.config)
    return args.func(args)


# ------------------------------------------------------------------------- errors
#: How long one error line may get: a message naming thousands of columns stays readable.
MAX_ERROR_CHARS = 1000
EXIT_USER_ERROR, EXIT_TRANSIENT, EXIT_BROKEN_PIPE = 2, 3, 141  # 141: 128 + SIGPIPE


def _one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    line = " ".join(text.split())
    if len(line) > limit:
        line = f"{line[:limit]}... ({len(line) - limit:,} more characters)"
    return line


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def describe_error(exc: BaseException) -> tuple[str, int] | None:
    """The one-line message and exit status for an error the user can act on, or None
    for an unexpected one (a bug: its traceback is shown).

    User errors (:class:`AeAnomalyError`: bad data, config, missing model) exit 2, as do
    a missing or unwritable path, exhausted memory and an MLflow store that refuses the
    request; an outage that outlived the retries (database or tracking server
    unreachable) exits 3.
    """
    from ae_anomaly.sources import is_transient

    if isinstance(exc, AeAnomalyError):
        return str(exc), EXIT_TRANSIENT if getattr(exc, "transient", False) else EXIT_USER_ERROR
    if is_transient(exc):
        # Database unreachable (after the retries): nothing was half-written.
        detail = _first_line(getattr(exc, "orig", None) or exc)
        return (f"{type(exc).__name__}: {detail} (transient: the run retried and gave up; "
                "nothing was half-written, run it again later)"), EXIT_TRANSIENT
    if isinstance(exc, MemoryError):
        return ("out of memory reading or scoring the input: lower data.read_chunk_rows or "
                "scoring.chunk_steps, or train on less data (data.max_in_memory_bytes "
                "refuses large training input before reading)"), EXIT_USER_ERROR
    if isinstance(exc, OSError) and exc.filename is not None:
        what = exc.strerror or type(exc).__name__
        return f"{exc.filename}: {what}", EXIT_USER_ERROR
    module = type(exc).__module__
    if module.startswith("mlflow"):
        return f"MLflow: {_first_line(exc)} (-v shows the details)", EXIT_USER_ERROR
    if module.startswith("sqlalchemy") and hasattr(exc, "orig"):
        # Permanent database errors (transient ones are above): a store error, one line.
        return (f"database: {_first_line(exc.orig or exc)} (-v shows the details)",
                EXIT_USER_ERROR)
    return None


def print_error(message: str) -> None:
    """Print an error for the user: one line on stderr, prefixed ``ae-anomaly: error:``,
    with any password in it masked. Every error message of the command goes through here."""
    from ae_anomaly.secrets import mask_text

    print(f"ae-anomaly: error: {_one_line(mask_text(message))}", file=sys.stderr)


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (``ae-anomaly config | head -1``): stop quietly,
    with the status a shell gives a command killed by SIGPIPE."""
    import os

    # Python flushes stdout again at exit; point it at /dev/null so that fails no more.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a command; errors the user can act on print one line
    (:func:`describe_error`) and exit 2, transient ones (database unreachable after the
    retries) exit 3; a closed stdout exits 141 quietly."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        status = _run(args)
        sys.stdout.flush()  # a broken pipe surfaces here, not at exit
        return status
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        print("ae-anomaly: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        described = None if args.verbose else describe_error(exc)
        if described is None:
            raise
        message, status = described
        print_error(message)
        return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
