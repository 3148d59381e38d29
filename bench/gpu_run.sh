#!/usr/bin/env bash
# A lent GPU's whole session for issue 29 as one command, run from anywhere in a checkout; it installs
# nothing from the network:
#
#   bench/gpu_run.sh                       # bench/gpu.py at full size, under a timeout
#   bench/gpu_run.sh --legs demo beam      # arguments go to bench/gpu.py
#   LIMIT_S=300 bench/gpu_run.sh ...       # the timeout, seconds (default 510: bench/gpu.py caps its
#                                          # measurements at 450 s, so only a hang meets it)
#
# The device image has torch, torchvision, numpy, pillow, pyyaml and tqdm, but not Hydra. Its pure-Python
# wheels travel in .whl/ (git-ignored); fetch them here once, then carry .whl with the call:
#
#   python3 -m pip wheel --no-deps -w .whl hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
#
# bench/gpu.py rewrites bench/results/gpu.json after every measurement, so a run cut short keeps what
# it measured. The console output, with nvidia-smi and the versions first, goes to docs/gpu/bench_gpu.log.
# With $OUT set (a folder that comes back from the device), both files are copied there as well.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_run_site .whl/*.whl || exit 2
  export PYTHONPATH="$PYTHONPATH:/tmp/gpu_run_site"
fi
if ! "$PY" -c "import hydra, omegaconf, torchvision" 2> /dev/null; then
  echo "error: $PY cannot import hydra, omegaconf or torchvision; put their wheels in .whl/ (see $0's header)"
  exit 2
fi
LOG=docs/gpu/bench_gpu.log
mkdir -p docs/gpu
{
  date -u +%FT%TZ
  git rev-parse HEAD 2> /dev/null || echo "no git"
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
