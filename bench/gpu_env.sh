# Sourced by bench/gpu_run.sh and bench/gpu_quality.sh: a lent GPU machine made ready, with nothing from
# the network. Moves to the repository root and sets PY, PYTHONPATH and, where carried, TORCH_HOME.
#
# The device image (python3 3.12 with torch, torchvision, numpy, pillow, sacrebleu, lxml, packaging: the
# library's device/KINDS.md) lacks Hydra and omegaconf. Their pure-Python wheels travel in .whl/
# (git-ignored), and training an ImageNet-initialised encoder needs the MobileNetV2 file in .weights/
# (git-ignored). Fetch both here once, then carry .whl and .weights with the call:
#
#   python3 -m pip wheel --no-deps -w .whl hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
#   mkdir -p .weights && cp ../shared/weights/mobilenet_v2-b0353104.pth .weights/
#
# A copy without .git records BENCH_GIT_COMMIT (the commit the caller sent) as its commit.
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY=${PY:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_run_site .whl/*.whl || exit 2
  export PYTHONPATH="$PYTHONPATH:/tmp/gpu_run_site"
fi
if compgen -G ".weights/*.pth" > /dev/null; then
  export TORCH_HOME=/tmp/gpu_torch_home
  mkdir -p "$TORCH_HOME/hub/checkpoints" && cp .weights/*.pth "$TORCH_HOME/hub/checkpoints/"
fi
if ! "$PY" -c "import hydra, omegaconf, torchvision" 2> /dev/null; then
  echo "error: $PY cannot import hydra, omegaconf or torchvision; put their wheels in .whl/ (see bench/gpu_env.sh)"
  exit 2
fi
