# Two commands for a newcomer: `make demo` and `make test`. Each installs what it needs first.
SHELL := /bin/bash
PY := .venv/bin/python
STAMPS := .stamps
REQ_HASH := $(shell cat requirements.txt | sha256sum | cut -c1-12)
ENV_STAMP := $(STAMPS)/env-$(REQ_HASH)
# glibc malloc returns memory to the OS on every large free: ~2x slower batches on CPU (see ENVIRONMENT.md).
export GLIBC_TUNABLES := glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONHASHSEED := 0

.PHONY: install install-mmdet install-browser install-fashion-mnist demo recognition-demo train eval serve test test-one-thread test-all test-mmdet test-browser test-fashion-mnist test-recipes ci clean-outputs

install: $(ENV_STAMP)

$(ENV_STAMP): requirements.txt
	@echo ">> creating .venv and installing pinned dependencies (torch from local disk; ~4 min on a fresh machine)"
	test -x $(PY) || python3.11 -m venv .venv || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip check
	@mkdir -p $(STAMPS) && rm -f $(STAMPS)/env-* && touch $@

# mmdet backend (kept out of the default install): builds mmcv 2.1.0 with ops once (~20 min), cached wheel after.
install-mmdet: $(ENV_STAMP)
	bash scripts/install_mmdet.sh $(PY)

# Debian's chromium for the service's browser test (no browser download).
install-browser:
	bash scripts/install_browser.sh

# Real clothing photos (Fashion-MNIST) from Debian's dataset-fashion-mnist package.
install-fashion-mnist:
	bash scripts/install_fashion_mnist.sh

# Open-set retrieval on the embedded retail world, the pretrained path: ImageNet Lite0 fine-tuned on the training
# products, recall@1 on never-seen ones next to zero-shot features and a linear probe (experiments/finetune).
demo: $(ENV_STAMP)
	$(PY) -m src.train experiment=lite0_retail $(ARGS)

# The recognition system end to end (experiments/recognition_demo): trains the checkout embedder, its FCOS detector
# and the live step's Faster R-CNN unless their runs exist (~33 min on 2 idle CPU cores), then gallery -> receipt ->
# a new product added without retraining -> receipts of all val photos -> live-stream matching.
RECOG := outputs/recognition_demo
recognition-demo: $(ENV_STAMP)
	test -f $(RECOG)/embedder/train_summary.json || $(PY) -m src.train experiment=recognition_embedder logger=csv hydra.run.dir=$(RECOG)/embedder
	test -f $(RECOG)/detector_fcos/train_summary.json || $(PY) -m src.train experiment=fcos_lite0_mainbody logger=csv hydra.run.dir=$(RECOG)/detector_fcos
	test -f $(RECOG)/detector/train_summary.json || $(PY) -m src.train experiment=recognition_detector logger=csv hydra.run.dir=$(RECOG)/detector
	$(PY) scripts/recognition_demo.py --embedder $(RECOG)/embedder --detector $(RECOG)/detector_fcos --live-detector $(RECOG)/detector $(ARGS)

train: $(ENV_STAMP)
	$(PY) -m src.train $(ARGS)

# make eval [CKPT=path/to.ckpt]: without CKPT, the best checkpoint of the latest finished run.
eval: $(ENV_STAMP)
	$(PY) -m src.eval ckpt_path=$(if $(CKPT),$(CKPT),latest) $(ARGS)

test: $(ENV_STAMP)
	$(PY) -m pytest -m "not slow and not mmdet and not browser" $(ARGS)

# The learning and floating-point tests again on one thread (the fast suite runs on two): a result tuned to
# one machine's thread count fails here.
test-one-thread: $(ENV_STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "numeric and not slow and not mmdet and not browser" $(ARGS)

test-all: $(ENV_STAMP)
	$(PY) -m pytest -m "not mmdet and not browser" $(ARGS)

test-mmdet: install-mmdet
	REQUIRE_MMDET=1 $(PY) -m pytest -m mmdet $(ARGS)

test-browser: $(ENV_STAMP) install-browser
	REQUIRE_BROWSER=1 $(PY) -m pytest -m browser $(ARGS)

# make serve EMBEDDER=<ckpt> [INDEX=outputs/gallery] [DETECTOR=<ckpt>] [PORT=8000] [ARGS="--workers 2"]: service+page
serve: $(ENV_STAMP)
	$(PY) -m src.service --index $(or $(INDEX),outputs/gallery) --embedder $(EMBEDDER) $(if $(DETECTOR),--detector $(DETECTOR)) --port $(or $(PORT),8000) --threads 1 $(ARGS)

# Real photos: brief training beats the measured accuracy and src.eval writes the report with the confusion
# matrix. Installs the data first; REQUIRE_FASHION_MNIST=1 makes missing data a failure, not a skip.
test-fashion-mnist: $(ENV_STAMP) install-fashion-mnist
	REQUIRE_FASHION_MNIST=1 $(PY) -m pytest -m fashion_mnist $(ARGS)

# Full-size recipes on CPU, as their acceptance commands (effb5_arcface fast_dev_run: ~2.5 min idle, ~18 GB RSS).
test-recipes: $(ENV_STAMP)
	$(PY) -m pytest -m recipe_smoke $(ARGS)

# What CI runs: the fast suite, then the mmdet backend, the browser test, the real-data test (must run, not
# skip) and the full-size recipe smoke test.
ci: test test-one-thread test-mmdet test-browser test-fashion-mnist test-recipes

clean-outputs:
	rm -rf outputs
