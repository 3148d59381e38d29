#!/usr/bin/env bash
# A lent GPU's whole session for issue 29 as one command, run from anywhere in a checkout; it installs
# nothing from the network:
#
#   bench/gpu_run.sh                       # bench/gpu.py at full size, under a timeout
#   bench/gpu_run.sh --legs demo beam      # arguments go to bench/gpu.py
#   LIMIT_S=300 bench/gpu_run.sh ...       # the timeout, seconds (default 510: bench/gpu.py caps its
#                                          # measurements at 450 s, so only a hang meets it)
#
# The machine is made ready by bench/gpu_env.sh (carry .whl; see its header).
#
# bench/gpu.py rewrites bench/results/gpu.json after every measurement, so a run cut short keeps what
# it measured. The console output, with nvidia-smi and the versions first, goes to docs/gpu/bench_gpu.log.
# With $OUT set (a folder that comes back from the device), both files are copied there as well.
set -u
# shellcheck source=bench/gpu_env.sh
source "$(dirname "$0")/gpu_env.sh"
LOG=docs/gpu/bench_gpu.log
mkdir -p docs/gpu
{
  date -u +%FT%TZ
  git rev-parse HEAD 2> /dev/null || echo "commit ${BENCH_GIT_COMMIT:-unknown} (no .git)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import os, torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, 'cores', len(os.sched_getaffinity(0)))"
} > "$LOG" 2>&1
cat "$LOG"
timeout -k 15 "${LIMIT_S:-510}" "$PY" bench/gpu.py "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
echo "bench/gpu.py exit status $rc" | tee -a "$LOG"
if [ -n "${OUT:-}" ]; then
  cp "$LOG" "$OUT/"
  if [ -f bench/results/gpu.json ]; then cp bench/results/gpu.json "$OUT/"; fi
fi
exit "$rc"
