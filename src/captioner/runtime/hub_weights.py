"""The encoders' ImageNet weights: which torchvision entry each arch loads, and its file in the hub cache.

The authority is torchvision's weights enum (``pretrained_weights``); ``ensure_weights`` puts its file
in the torch hub cache (or fails in one line) before any data is generated. Importing torch and
torchvision takes ~5 s of CPU on the 2-core machine (torchvision's ops import torch._dynamo), so an
offline `python train.py encoder=shufflenet` learned of a missing weights file only after ~8 s: the
entry point first asks ``unreachable_weights`` (`captioner.cli.check_offline_weights`), which reads
the file table below and imports neither; `tests/test_hub_weights.py` checks the table against the
installed torchvision. This module imports torch and torchvision only inside the functions that need them.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.errors import DataError, require

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

DOWNLOAD_URL = "https://download.pytorch.org/models/"

# The torchvision zoo the seed project supports (its README list, same names as torchvision), each with
# the file `ensure_weights` needs: the weights entry `pretrained_weights` picks (its PINNED_WEIGHTS
# name, else DEFAULT) in torchvision 0.29.
WEIGHT_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-11ad3fa6.pth",
    "resnet101": "resnet101-cd907fc2.pth",
    "resnet152": "resnet152-f82ba261.pth",
    "resnext50_32x4d": "resnext50_32x4d-1a0047aa.pth",
    "resnext101_32x8d": "resnext101_32x8d-110c445d.pth",
    "wide_resnet50_2": "wide_resnet50_2-9ba9bcbe.pth",
    "wide_resnet101_2": "wide_resnet101_2-d733dc28.pth",
    "squeezenet1_0": "squeezenet1_0-b66bff10.pth",
    "squeezenet1_1": "squeezenet1_1-b8a52dc0.pth",
    "densenet121": "densenet121-a639ec97.pth",
    "densenet169": "densenet169-b2777c0a.pth",
    "densenet201": "densenet201-c1103571.pth",
    "densenet161": "densenet161-8d451a50.pth",
    "shufflenet_v2_x0_5": "shufflenetv2_x0.5-f707e7126e.pth",
    "shufflenet_v2_x1_0": "shufflenetv2_x1-5666bf0f80.pth",
    "shufflenet_v2_x1_5": "shufflenetv2_x1_5-3c479a10.pth",
    "shufflenet_v2_x2_0": "shufflenetv2_x2_0-8be3c8ee.pth",
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
    "mobilenet_v3_large": "mobilenet_v3_large-5c1a4163.pth",
    "mobilenet_v3_small": "mobilenet_v3_small-047dcff4.pth",
    "mnasnet0_5": "mnasnet0.5_top1_67.823-3ffadce67e.pth",
    "mnasnet0_75": "mnasnet0_75-7090bc5f.pth",
    "mnasnet1_0": "mnasnet1.0_top1_73.512-f206786ef8.pth",
    "mnasnet1_3": "mnasnet1_3-a4c69d6f.pth",
}
ARCHS = tuple(WEIGHT_FILES)

# Pinned weights where DEFAULT is not the file we ship offline: ../shared/weights holds
# mobilenet_v2-b0353104.pth (IMAGENET1K_V1), while torchvision's DEFAULT is V2 (another file).
PINNED_WEIGHTS = {"mobilenet_v2": "IMAGENET1K_V1"}


def hub_checkpoints_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints`` as torch computes it (TORCH_HOME, XDG_CACHE_HOME, ~/.cache)."""
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    torch_home = os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))
    return Path(torch_home) / "hub" / "checkpoints"


def missing_weights_message(arch: str, file: str, folder: Path, reason: str) -> str:
    """The one line for a weights file that is neither in the hub cache nor downloadable."""
    shipped = (
        "run `make weights`, or "
        if arch == "mobilenet_v2"
        else "use encoder=mobilenet_v2 (`make weights` installs its file offline), "
    )
    return (
        f"encoder.arch={arch}: ImageNet weights file {file} is not in {folder}/ and could not be "
        f"downloaded ({reason}); {shipped}put the file there, or train this encoder from "
        "scratch with encoder.pretrained=false encoder.finetune=true"
    )


def unreachable_weights(arch: str, timeout: float = 3.0) -> str | None:
    """The one-line error when ``arch``'s file is missing and its URL cannot be reached, else None.

    None also whenever this cannot be sure (an arch not in the table, a server that answers): then
    ``ensure_weights`` decides later, with torchvision's own entry.
    """
    file = WEIGHT_FILES.get(arch)
    folder = hub_checkpoints_dir()
    if file is None or (folder / file).exists():
        return None
    try:
        request = urllib.request.Request(DOWNLOAD_URL + file, method="HEAD")
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # the server answered: the download may work, let torchvision try
    except OSError as err:  # URLError, DNS and socket errors, timeouts
        return missing_weights_message(arch, file, folder, type(err).__name__)
    return None


def pretrained_weights(arch: str) -> WeightsEnum:
    """The torchvision weights entry `pretrained=true` loads for ``arch`` (ConfigError if none)."""
    from torchvision import models

    require(arch in ARCHS, f"encoder.arch={arch!r} is unknown; valid: {', '.join(ARCHS)}")
    try:
        enum = models.get_model_weights(arch)
    except ValueError:
        enum = None
    name = PINNED_WEIGHTS.get(arch, "DEFAULT")
    require(
        enum is not None and hasattr(enum, name),
        f"encoder.arch={arch} has no pretrained ImageNet weights in this torchvision; "
        "set encoder.pretrained=false or pick another arch",
    )
    return getattr(enum, name)


def ensure_weights(arch: str) -> None:
    """Make sure ``arch``'s ImageNet weights file is in the torch hub cache (download it if we can).

    Called before any data is generated, so an offline machine learns of a missing file in seconds.
    """
    import torch

    weights = pretrained_weights(arch)
    file = weights.url.rsplit("/", 1)[-1]
    folder = Path(torch.hub.get_dir()) / "checkpoints"  # torch's, so torch.hub.set_dir applies too
    if (folder / file).exists():
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(folder / file), progress=False)
    except OSError as err:  # urllib.error.URLError and socket errors are OSErrors
        raise DataError(missing_weights_message(arch, file, folder, type(err).__name__)) from None
