# Benchmarks: one target each; every one prints a table and writes bench/results/<name>.json.
# Included by the top-level Makefile; PY defaults here too so the file stands alone.
PY ?= python
BENCH_ARGS ?=

.PHONY: bench bench-train-speed bench-feature-cache bench-loader bench-beam bench-sweep-overhead
bench: bench-train-speed bench-feature-cache bench-loader bench-beam bench-sweep-overhead  ## run every benchmark

bench-train-speed:  ## decoder train-step FLOP/s vs sgemm, captions/s vs the tutorial reference decoder
	$(PY) bench/train_speed.py $(BENCH_ARGS)

bench-feature-cache:  ## epoch time on cached frozen-encoder features vs encoding images every step
	$(PY) bench/feature_cache.py $(BENCH_ARGS)

bench-loader:  ## train-loader throughput: 224 px images + augmentation vs cached features
	$(PY) bench/loader.py $(BENCH_ARGS)

bench-beam:  ## batched beam search vs one image at a time
	$(PY) bench/beam.py $(BENCH_ARGS)

bench-sweep-overhead:  ## per-trial sweep cost besides training: Optuna sweeper, MLflow run, Hydra compose
	$(PY) bench/sweep_overhead.py $(BENCH_ARGS)

.PHONY: bench-flickr8k bench-coco
bench-flickr8k:  ## real photos: train the seed's best setup on Flickr8k, score Karpathy test vs the SAT paper (GPU + photos)
	$(PY) bench/real_photos.py flickr8k $(BENCH_ARGS)

bench-coco:  ## real photos: the same on COCO (Karpathy splits)
	$(PY) bench/real_photos.py coco $(BENCH_ARGS)
