#!/usr/bin/env bash
# A shapes quality recipe at full size on a lent GPU, as one command: cross-entropy training
# (experiment=NAME), then its SCST stage from that run's best.pt (experiment=NAME_scst, when it exists),
# each under its own time limit so the device's budget holds. Nothing comes from the network.
#
#   bench/gpu_quality.sh quality_searched                  # runs/gpu/quality_searched/{xe,scst}
#   XE_LIMIT_S=330 SCST_LIMIT_S=120 bench/gpu_quality.sh quality_searched
#   DEVICE=cpu bench/gpu_quality.sh quality_searched scale=smoke   # the plumbing, on a CPU (extra args: overrides)
#
# The machine is made ready by bench/gpu_env.sh (carry .whl and .weights; see its header). MLflow is not
# on the device (logger=none); the console goes to docs/gpu/NAME.log. A stage that meets its
# limit is interrupted (SIGINT: the run ends KILLED, its best.pt stays) and the next one goes on. If the
# fast path fails to start (trainer.compile=auto), the stage reruns once with trainer.compile=off.
# With $OUT set, each stage's best.pt comes back as $OUT/NAME_{xe,scst}.pt, and its metrics.json, train.log
# and composed config with the log as $OUT/NAME.tar.gz; score the checkpoints with bench/quality.py.
set -u
name=${1:?usage: bench/gpu_quality.sh EXPERIMENT (e.g. quality_searched)}
shift
# shellcheck source=bench/gpu_env.sh
source "$(dirname "$0")/gpu_env.sh"
if [ ! -f "conf/experiment/$name.yaml" ]; then
  echo "error: conf/experiment/$name.yaml not found; name an experiment config (e.g. quality_searched)"
  exit 2
fi
dir=runs/gpu/$name
LOG=docs/gpu/$name.log
mkdir -p docs/gpu "$dir"
# no Java on the device (METEOR, SPICE) and no figures: bench/quality.py scores the checkpoints
common=(logger=none "trainer.device=${DEVICE:-cuda}" trainer.figures=0 "trainer.test_metrics=[bleu,rouge_l,cider_d]")
{
  date -u +%FT%TZ
  git rev-parse HEAD 2> /dev/null || echo "commit ${BENCH_GIT_COMMIT:-unknown} (no .git)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} > "$LOG" 2>&1
cat "$LOG"

# stage LABEL LIMIT_S OVERRIDES...: one training run into $dir/LABEL, interrupted at LIMIT_S
stage() {
  local label=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $label: python train.py $* (limit ${limit} s)" | tee -a "$LOG"
  timeout -s INT -k 30 "$limit" "$PY" train.py "$@" "${common[@]}" "hydra.run.dir=$dir/$label" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ ! -f "$dir/$label/last.pt" ] && [[ "$*" != *compile=off* ]]; then
    echo "== $label: exit $rc before an epoch ended; again with trainer.compile=off" | tee -a "$LOG"
    rm -rf "${dir:?}/$label"
    limit=$((limit - (SECONDS - start)))
    timeout -s INT -k 30 "$limit" "$PY" train.py "$@" trainer.compile=off "${common[@]}" "hydra.run.dir=$dir/$label" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
  fi
  echo "== $label: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
}

stage xe "${XE_LIMIT_S:-1800}" "experiment=$name" "$@"
if [ -f "conf/experiment/${name}_scst.yaml" ] && [ -f "$dir/xe/best.pt" ]; then
  stage scst "${SCST_LIMIT_S:-900}" "experiment=${name}_scst" "trainer.init_from=$dir/xe/best.pt" "$@"
fi
if [ -n "${OUT:-}" ]; then  # few files come back from a device: a checkpoint per stage and one archive
  for label in xe scst; do
    if [ -f "$dir/$label/best.pt" ]; then cp "$dir/$label/best.pt" "$OUT/${name}_$label.pt"; fi
  done
  tar -czf "$OUT/$name.tar.gz" "$LOG" $(cd "$dir" && for f in {xe,scst}/{metrics.json,train.log,.hydra/config.yaml}; do
    if [ -f "$f" ]; then echo "$dir/$f"; fi
  done)
fi
