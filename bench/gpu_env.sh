# Sourced by bench/gpu_run.sh and bench/gpu_quality.sh: a lent GPU machine made ready, with nothing from
# the network. Moves to the repository root and sets PY, PYTHONPATH and, where carried, TORCH_HOME.
#
# The device image has torch, torchvision, numpy, pillow, pyyaml and tqdm, but not Hydra or sacrebleu.
# Their wheels travel in .whl/ (git-ignored; lxml is compiled, one wheel per Python version, pip takes
# the one that fits). Training an ImageNet-initialised encoder also needs the MobileNetV2 file in
# .weights/ (git-ignored). Fetch both here once, then carry .whl and .weights with the call:
#
#   python3 -m pip wheel --no-deps -w .whl hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 \
#       packaging==26.2 sacrebleu==2.6.0 portalocker==4.4.2 colorama==0.4.6 tabulate==0.10.0
#   for v in 3.10 3.11 3.12 3.13; do python3 -m pip download --no-deps --only-binary=:all: -d .whl \
#       --python-version $v --platform manylinux2014_x86_64 lxml==6.2.0; done
#   mkdir -p .weights && cp ../shared/weights/mobilenet_v2-b0353104.pth .weights/
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY=${PY:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  # by name from .whl, not by file: pip then skips the lxml wheels built for other Pythons
  names=$(for f in .whl/*.whl; do basename "$f" | cut -d- -f1; done | sort -u)
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --no-index --no-deps --no-compile --find-links .whl --target /tmp/gpu_run_site $names \
    || exit 2
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
