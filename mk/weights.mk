# `make weights`: put the offline MobileNetV2 ImageNet weights where torchvision looks for them.
# Included by the top-level Makefile; SHARED and TORCH_HOME default here too so the file stands alone.
SHARED ?= ../shared
TORCH_HOME ?= $(HOME)/.cache/torch
WEIGHTS_FILE := mobilenet_v2-b0353104.pth

.PHONY: weights
weights:  ## copy ../shared MobileNetV2 weights into TORCH_HOME/hub/checkpoints (SHA-256 checked)
	@test -f $(SHARED)/weights/$(WEIGHTS_FILE) || { echo "weights: $(SHARED)/weights/$(WEIGHTS_FILE) not found; clone ../shared beside the repo or set SHARED=..." >&2; exit 2; }
	@cd $(SHARED)/weights && grep " $(WEIGHTS_FILE)$$" SHA256SUMS | sha256sum --check --quiet - || { echo "weights: $(WEIGHTS_FILE) fails its SHA-256 in $(SHARED)/weights/SHA256SUMS; re-copy it" >&2; exit 2; }
	@mkdir -p "$(TORCH_HOME)/hub/checkpoints"
	install -m 644 $(SHARED)/weights/$(WEIGHTS_FILE) "$(TORCH_HOME)/hub/checkpoints/$(WEIGHTS_FILE)"
