# Benchmarks: one target each; every one prints a table and writes bench/results/<name>.json.
# Included by the top-level Makefile; PY defaults here too so the file stands alone.
PY ?= python
BENCH_ARGS ?=

.PHONY: bench bench-train-speed bench-feature-cache bench-loader bench-beam bench-sweep-overhead bench-scale bench-cpu-scale-cost
bench: bench-threads bench-train-speed bench-feature-cache bench-loader bench-beam bench-sweep-overhead bench-probe bench-quality bench-scale bench-cpu-scale-cost  ## run every benchmark

bench-train-speed:  ## decoder train-step FLOP/s vs sgemm, captions/s vs the tutorial reference decoder
	$(PY) bench/train_speed.py $(BENCH_ARGS)

bench-feature-cache:  ## epoch time on cached frozen-encoder features vs encoding images every step
	$(PY) bench/feature_cache.py $(BENCH_ARGS)

bench-loader:  ## train-loader throughput: 224 px images + augmentation vs cached features
	$(PY) bench/loader.py $(BENCH_ARGS)

bench-cpu-scale-cost:  ## a scale=cpu sweep run's train step against the levers on its cost (map, batch, bf16, compile), METEOR's share
	$(PY) bench/cpu_scale_cost.py $(BENCH_ARGS)

bench-scale:  ## synthetic COCO at growing N: prepare, first batch, loader img/s, feature cache (time, tree RSS, growth)
	$(PY) bench/scale.py $(BENCH_ARGS)

bench-beam:  ## batched beam search vs one image at a time
	$(PY) bench/beam.py $(BENCH_ARGS)

# Not in `bench`: at full size it needs a CUDA device (bench/gpu_run.sh is the lent GPU's one command).
.PHONY: bench-gpu
bench-gpu:  ## one GPU, < 8 min: demo + COCO recipes eager vs fast path, reference decoder, beam, data pipeline (CPU: BENCH_ARGS=--quick)
	$(PY) bench/gpu.py $(BENCH_ARGS)

bench-sweep-overhead:  ## per-trial sweep cost besides training: Optuna sweeper, MLflow run, Hydra compose
	$(PY) bench/sweep_overhead.py $(BENCH_ARGS)

.PHONY: bench-flickr8k bench-coco
bench-flickr8k:  ## real photos: train the seed's best setup on Flickr8k, score Karpathy test vs the SAT paper (GPU + photos)
	$(PY) bench/real_photos.py flickr8k $(BENCH_ARGS)

bench-coco:  ## real photos: the same on COCO (Karpathy splits)
	$(PY) bench/real_photos.py coco $(BENCH_ARGS)

# The shapes quality table: trains the benchmark model (conf/experiment/quality.yaml) and its two controls
# (decoder.context=soft|mean|blind, all else equal; a finished run, one with metrics.json, is kept and an
# interrupted one resumes from last.pt), hard attention (decoder.attention=hard, paper Sec. 4.1) and an SCST
# stage from the soft run (experiment=quality_scst, Rennie et al. 2017), then scores each with greedy,
# beam 3 and beam 5 on test and test_novel, beside the frozen vs fine-tuned rows of the cpu-scale
# pretrain_finetune sweep.
QUALITY_DIR ?= runs/quality
QUALITY_ARGS ?=
QUALITY_RUNS := soft mean blind hard scst scst_bleu scst_f1
.PHONY: bench-quality
bench-quality: $(foreach r,$(QUALITY_RUNS),$(QUALITY_DIR)/$(r)/metrics.json)  ## shapes quality: soft vs hard attention, XE vs SCST, mean-context and image-blind controls
	$(PY) bench/quality.py $(foreach r,$(QUALITY_RUNS),--run $(r)=$(QUALITY_DIR)/$(r)) --reuse \
		$(if $(wildcard sweeps/results/pretrain_finetune_cpu.json),--sweep-result sweeps/results/pretrain_finetune_cpu.json) \
		$(BENCH_ARGS)

resume_from = $(if $(wildcard $(QUALITY_DIR)/$(1)/last.pt),trainer.resume=$(QUALITY_DIR)/$(1))

$(QUALITY_DIR)/hard/metrics.json:
	$(PY) train.py experiment=quality decoder.attention=hard hydra.run.dir=$(QUALITY_DIR)/hard $(QUALITY_ARGS) \
		$(call resume_from,hard)

$(QUALITY_DIR)/scst/metrics.json: $(QUALITY_DIR)/soft/metrics.json
	$(PY) train.py experiment=quality_scst trainer.init_from=$(QUALITY_DIR)/soft/best.pt \
		hydra.run.dir=$(QUALITY_DIR)/scst $(QUALITY_ARGS) $(call resume_from,scst)

# SCST with each reward, all from the same soft XE checkpoint: scst = CIDEr-D (Rennie et al.); scst_bleu =
# BLEU-4 alone; scst_f1 = CIDEr-D plus the grounded object F1 (x5: on the scale of CIDEr-D's fraction, ~5
# on shapes, so neither term drowns the other; F1 alone would not reward fluent word order).
$(QUALITY_DIR)/scst_bleu/metrics.json: $(QUALITY_DIR)/soft/metrics.json
	$(PY) train.py experiment=quality_scst trainer.init_from=$(QUALITY_DIR)/soft/best.pt \
		objective.reward.cider_d=0 objective.reward.bleu4=5 trainer.early_stop.metric=bleu4 \
		hydra.run.dir=$(QUALITY_DIR)/scst_bleu $(QUALITY_ARGS) $(call resume_from,scst_bleu)

$(QUALITY_DIR)/scst_f1/metrics.json: $(QUALITY_DIR)/soft/metrics.json
	$(PY) train.py experiment=quality_scst trainer.init_from=$(QUALITY_DIR)/soft/best.pt \
		objective.reward.object_f1=5 trainer.early_stop.metric=object_f1 \
		hydra.run.dir=$(QUALITY_DIR)/scst_f1 $(QUALITY_ARGS) $(call resume_from,scst_f1)

$(QUALITY_DIR)/%/metrics.json:
	$(PY) train.py experiment=quality decoder.context=$* hydra.run.dir=$(QUALITY_DIR)/$* $(QUALITY_ARGS) \
		$(call resume_from,$*)

.PHONY: bench-probe
bench-probe:  ## linear probe: which encoder layer still knows each shapes object's colour and shape
	$(PY) bench/probe_layers.py $(BENCH_ARGS)

.PHONY: bench-threads
bench-threads:  ## CPU threading (count, OpenMP wait policy, auto) alone and beside a busy core: the default's evidence
	$(PY) bench/threads.py $(BENCH_ARGS)
