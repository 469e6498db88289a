#!/usr/bin/env bash
# `make bench`: run the real benchmarks on ../shared/data and regenerate docs/benchmarks.md.
#
# Each run writes one results JSON under bench-results/ (git-ignored). A results file is
# also the checkpoint: re-running this script skips every finished (model, entity, seed)
# cell, so an interrupted `make bench` resumes and a finished one only re-renders the doc.
# Delete bench-results/ to measure from scratch.
#
#   BENCH_DATA=DIR        data folder (default ../shared/data)
#   BENCH_OUT=DIR         results folder (default bench-results)
#   BENCH_SEEDS=0,1,2     seeds of every run
#   BENCH_VARIANTS=1      also run the "what we tried" variants on SMD and NAB (about 1.5 h)
#   BENCH_ONLY="smd nab"  run only these datasets (smd nab nsl-kdd), then render
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=${BENCH_DATA:-../shared/data}
OUT=${BENCH_OUT:-bench-results}
SEEDS=${BENCH_SEEDS:-0,1,2}
ONLY=${BENCH_ONLY:-smd nab nsl-kdd}
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true
# One thread per process: on a shared 2-core machine more threads only contend.
CORES=$(getconf _NPROCESSORS_ONLN)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
mkdir -p "$OUT/variants"

if [ ! -d "$DATA/smd" ]; then
  echo "bench: no benchmark data at $DATA (set BENCH_DATA)" >&2
  exit 2
fi
echo "bench: $CORES cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

bench() {  # bench NAME ARGS...: one benchmark run, timed
  local name=$1; shift
  local t0=$SECONDS
  "$BIN/ae-anomaly" benchmark "$@" --output "$OUT/$name.json"
  echo "bench: $name done in $((SECONDS - t0)) s"
}

# SMD: the seven shared machines, conv_ae against PCA / IsolationForest / random, and the
# calibration comparison of issue 4 (conformal vs k_sigma at alpha 0.01 and 0.001).
SMD_SET=(--set window.train_stride=4)
if [[ " $ONLY " == *" smd "* ]]; then
  bench smd --dataset smd --data-dir "$DATA/smd" --models conv_ae,pca,iforest,random \
    --seeds "$SEEDS" --calibration conformal,k_sigma --alphas 0.01,0.001 "${SMD_SET[@]}" \
    --set bench.ensemble=true
  # Issue 4's calibration bar: the same models with the last 30% of each training period
  # held out for calibration (fit / calibration / check = 60 / 30 / 10).
  bench smd-cal30 --dataset smd --data-dir "$DATA/smd" --models conv_ae,pca,iforest,random \
    --seeds "$SEEDS" --calibration conformal,k_sigma --alphas 0.01,0.001 "${SMD_SET[@]}" \
    --set bench.calibration_fraction=0.3
fi

if [[ " $ONLY " == *" nab "* ]]; then
  # every time-series autoencoder family: the bar is "the best of our models"
  bench nab --dataset nab --data-dir "$DATA/nab" \
    --models conv_ae,dense_ae,denoising,vae,rae,cvae,pca,iforest,random \
    --seeds "$SEEDS" --calibration conformal,k_sigma --alphas 0.001,0.01
fi

if [[ " $ONLY " == *" nsl-kdd "* ]]; then
  bench nsl-kdd --dataset nsl-kdd --data-dir "$DATA/nsl_kdd" \
    --models dense_ae,vae,pca,iforest,random --seeds "$SEEDS" \
    --calibration conformal,k_sigma --alphas 0.01,0.001 \
    --set models.vae.arch=dense --set models.vae.score=latent
fi

if [ "${BENCH_VARIANTS:-0}" = 1 ]; then
  # One setting changed at a time against the headline SMD run, seed 0, conformal at 0.01.
  V=(--dataset smd --data-dir "$DATA/smd" --seeds 0 --calibration conformal --alphas 0.01)
  M=(--models conv_ae,pca,random)
  bench variants/smd-window32 "${V[@]}" "${M[@]}" "${SMD_SET[@]}" --set window.length=32
  bench variants/smd-minmax "${V[@]}" "${M[@]}" "${SMD_SET[@]}" --set preprocess.scaler=minmax
  bench variants/smd-robust "${V[@]}" "${M[@]}" "${SMD_SET[@]}" --set preprocess.scaler=robust
  bench variants/smd-chmax "${V[@]}" "${M[@]}" "${SMD_SET[@]}" --set postprocess.channel_reduce=max
  bench variants/smd-nosmooth "${V[@]}" "${M[@]}" "${SMD_SET[@]}" --set postprocess.smooth=1
  bench variants/smd-causal "${V[@]}" "${M[@]}" "${SMD_SET[@]}" --set postprocess.errors=causal \
    --set postprocess.smooth_mode=trailing
  bench variants/smd-causal-last "${V[@]}" "${M[@]}" "${SMD_SET[@]}" --set postprocess.errors=causal \
    --set postprocess.smooth_mode=trailing --set postprocess.causal_tail=1
  bench variants/smd-denoising "${V[@]}" --models denoising,pca,random "${SMD_SET[@]}"
  bench variants/smd-stride1 "${V[@]}" "${M[@]}" --set window.train_stride=1
  # fit on 98% of the training period (no check slice): the reference PCA protocol
  bench variants/smd-fit98 "${V[@]}" "${M[@]}" "${SMD_SET[@]}" \
    --set bench.check_fraction=0 --set bench.calibration_fraction=0.02
  # issue 4: per-channel thresholds, and a score relative to its trailing one-day median
  bench variants/smd-perchannel "${V[@]}" "${M[@]}" "${SMD_SET[@]}" \
    --set calibration.per_channel=true
  bench variants/smd-baseline1440 "${V[@]}" "${M[@]}" "${SMD_SET[@]}" \
    --set postprocess.baseline_window=1440
  # the calibration slice's share of the training period (the headline is 10%)
  bench variants/smd-cal20 "${V[@]}" "${M[@]}" "${SMD_SET[@]}" --set bench.calibration_fraction=0.2
  bench variants/smd-cal30 "${V[@]}" "${M[@]}" "${SMD_SET[@]}" --set bench.calibration_fraction=0.3
  # NAB, all seeds: the trailing baseline (one day at NAB's usual 5-minute sampling), the
  # extreme-value threshold for alpha below 1/n, and a larger calibration share
  NV=(--dataset nab --data-dir "$DATA/nab" --models conv_ae,pca,random --seeds "$SEEDS")
  bench variants/nab-baseline288 "${NV[@]}" --calibration conformal --alphas 0.001 \
    --set postprocess.baseline_window=288
  bench variants/nab-pot "${NV[@]}" --calibration pot,conformal --alphas 0.001
  bench variants/nab-cal40 "${NV[@]}" --calibration conformal --alphas 0.001 \
    --set bench.calibration_fraction=0.4
  # the best NAB combination of the headline (vae, k_sigma), on seeds it was not chosen on
  bench variants/nab-fresh-seeds --dataset nab --data-dir "$DATA/nab" \
    --models vae,conv_ae,pca,random --seeds 3,4,5 --calibration k_sigma,conformal --alphas 0.001
fi

files=()
for name in smd smd-cal30 nab nsl-kdd; do
  [ -f "$OUT/$name.json" ] && files+=("$OUT/$name.json")
done
shopt -s nullglob
variants=("$OUT"/variants/*.json)
"$BIN/python" -m ae_anomaly.evaluation.report "${files[@]}" --variants "${variants[@]}" \
  -o docs/benchmarks.md
echo "bench: wrote docs/benchmarks.md from ${files[*]} ${variants[*]}"
