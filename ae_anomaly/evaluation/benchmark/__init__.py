"""The benchmark harness behind ``ae-anomaly benchmark``.

One *cell* is one (model, entity, seed): fit on the entity's training data only, fit the
threshold on a held-out slice of that training data with the configured calibration rules,
score the test data, turn flagged points into events with the configured event rules (the
same code production scoring uses) and compare the predicted points with the test labels.

Protocol (time series: ``smd``, ``nab``):

* Each entity's training period is split in time into *fit* / *calibration* / *check*
  slices (``bench.calibration_fraction`` and ``bench.check_fraction`` of the period, the
  rest is fit). The model (and, for autoencoders, early stopping on the tail of the fit
  slice) sees only the fit slice; the threshold is fitted on the calibration slice; the
  check slice is never used for anything but measuring the realised alarm rate
  (``far_check``), which tells whether the threshold keeps its false-alarm promise on later
  normal data.
* Scores: what production writes. An autoencoder scores through
  :meth:`ae_anomaly.detectors.BaseDetector.score_values`, i.e. the config's ``postprocess``
  section (:mod:`ae_anomaly.postprocess`: ``errors: overlap`` or ``causal`` step errors,
  per-channel smoothing of ``smooth`` steps, per-channel thresholds with
  ``calibration.per_channel``, then the channel reduction). Baselines give per-step,
  per-channel errors (``causal_errors`` with ``postprocess.errors: causal``) that go
  through the same :class:`~ae_anomaly.postprocess.Postprocessor` (without per-channel
  thresholds), on the calibration, check and test scores alike.
* Predicted points are the points inside events (:func:`ae_anomaly.calibration.find_events`
  with the config's ``events`` rules). Point-wise precision / recall / F1 are computed on
  them without point-adjust; ``f1_pa`` (point-adjusted) and ``best_f1`` (oracle threshold
  chosen with the test labels: an upper bound, not a result) are reported beside them.
* ``far_normal`` / ``far_check``: share of label-0 test points / check-slice points that are
  predicted (inside events); ``flag_rate_normal`` / ``flag_rate_check``: the same for the raw
  flags ``score > threshold``, which is what a conformal threshold controls.

NAB: each file is an entity; the first 15% (NAB's probationary period,
:func:`ae_anomaly.evaluation.nab.probationary_length`) is the training period, the whole
series is scored and the metrics use the rows after it. NAB is a streaming benchmark, so
its defaults score causally (``postprocess.errors: causal``, trailing smoothing) and give events
a cool-down of 100 steps (one alert per incident). NAB detections are the first point of
each event (``bench.nab_detections: start``; ``mask`` uses every predicted point), scored
per profile by :func:`ae_anomaly.evaluation.nab.nab_scores` into ``summary.<model>``
(headline calibration) and ``summary.<model>.calibrations.<rule>@<alpha>`` (the others).

Seed ensembles (``bench.ensemble: true``): once every seed of a model has run on an entity,
the record ``<model>+ens`` (seed -1) scores the mean of the seeds' scores, each divided by
the median of its calibration scores, calibrated like any model; the per-seed scores are
kept in ``<output stem>.scores/`` so a resumed run can still form the ensemble.

Tabular (``nsl-kdd``, ``netflow``): one entity; row detectors
(:class:`ae_anomaly.detectors.RowAutoencoder`, or a row baseline) are trained on the normal
rows of the train split (threshold on a held-out random share of them);
rows are scored independently (no smoothing, no events), so no point-adjusted figure is
computed (``f1_pa`` is left out of their records and summaries). Their headline alpha is
:data:`~.settings.FLOW_ALPHA` (0.01, the README's flow figures), not the global 0.001.
Every requested autoencoder is built once for the data kind (rows or windows) by
:func:`~.settings.resolve_settings`, so a model that cannot run (``vae`` with ``arch: conv``
on rows) fails before any training, with every such model named in one error.

The output JSON is the checkpoint: it is rewritten after every cell, and a rerun with the
same settings skips the (model, entity, seed) cells it already holds.

Modules: :mod:`.settings` (:class:`BenchSettings`, the dataset defaults, override
splitting, :func:`resolve_settings`), :mod:`.datasets` (:class:`Dataset`,
:class:`EntityData`), :mod:`.cells` (building and scoring one cell, :func:`evaluate_cell`,
seed ensembles) and :mod:`.run` (:func:`run_benchmark`, the results file,
:func:`summarize`). The report is :mod:`ae_anomaly.evaluation.report`.
"""

from ae_anomaly.evaluation.benchmark.cells import CellScores, ensemble_name, evaluate_cell
from ae_anomaly.evaluation.benchmark.datasets import Dataset, EntityData
from ae_anomaly.evaluation.benchmark.run import (
    FAR_BOUNDS,
    FORMAT,
    FORMAT_VERSION,
    RECORD_KEYS,
    TIME_SERIES_ONLY,
    load_results,
    run_benchmark,
    summarize,
)
from ae_anomaly.evaluation.benchmark.settings import (
    ALWAYS_DEFAULTS,
    DATASET_DEFAULTS,
    DATASETS,
    FLOW_ALPHA,
    TABULAR,
    BenchConfig,
    BenchSettings,
    resolve_settings,
    split_overrides,
)

__all__ = [
    "ALWAYS_DEFAULTS",
    "DATASETS",
    "DATASET_DEFAULTS",
    "FAR_BOUNDS",
    "FLOW_ALPHA",
    "FORMAT",
    "FORMAT_VERSION",
    "RECORD_KEYS",
    "TABULAR",
    "TIME_SERIES_ONLY",
    "BenchConfig",
    "BenchSettings",
    "CellScores",
    "Dataset",
    "EntityData",
    "ensemble_name",
    "evaluate_cell",
    "load_results",
    "resolve_settings",
    "run_benchmark",
    "split_overrides",
    "summarize",
]
