# Two commands do all the set-up on a fresh clone:
#   make demo   - create .venv, install, run the main job on the synthetic catalogue
#   make test   - create .venv, install, find or install Chromium, run ruff, mypy and pytest
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test browser lint typecheck mypy-path pytest bench bench-faiss bench-encode bench-load clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	# torch and torchvision are pinned in pyproject to the builds that install from local disk.
	$(BIN)/python -m pip install --quiet -e ".[dev,bench,export]"
	touch $(STAMP)

install: $(STAMP)

# DATA=path runs the demo on a generic-schema or H&M-layout catalogue; CUTOFF=YYYY-MM-DD
# sets the first day of the new arrivals.
demo: install
	$(BIN)/newarrivals demo --workdir $(DEMO_DIR) $(if $(DATA),--data $(DATA)) \
		$(if $(CUTOFF),--cutoff $(CUTOFF))

# mypy cannot follow setuptools' editable-install import hook, so it reads the packages
# through a folder of symlinks that spells out the installed namespace.
mypy-path:
	mkdir -p .mypy-path/newarrivals
	for pkg in indexer ranker service; do ln -sfn ../../$$pkg .mypy-path/newarrivals/$$pkg; done

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install mypy-path
	MYPYPATH=.mypy-path $(BIN)/mypy -p newarrivals.indexer -p newarrivals.ranker -p newarrivals.service
	MYPYPATH=.mypy-path $(BIN)/mypy benchmarks tests

pytest: install
	$(BIN)/pytest $(PYTEST_ARGS)

# The browser test (tests/service/test_web.py) drives Debian's Chromium; Playwright never
# downloads a browser here. `make browser` does nothing when it finds one: the executable that
# NEWARRIVALS_CHROMIUM names, else `chromium` on PATH (CHROMIUM=NAME looks for another name).
# Otherwise it installs Debian's package with apt-get (as root, or through sudo; the package
# lists are refreshed and the install retried when the first try fails), or, with neither,
# stops and prints the command to run.
CHROMIUM ?= $(if $(NEWARRIVALS_CHROMIUM),$(NEWARRIVALS_CHROMIUM),chromium)
CHROMIUM_PACKAGE ?= chromium
APT_GET ?= apt-get

browser:
	@if command -v "$(CHROMIUM)" >/dev/null 2>&1; then \
		echo "browser: $$(command -v "$(CHROMIUM)")"; \
	elif [ -n "$$NEWARRIVALS_CHROMIUM" ]; then \
		echo "browser: NEWARRIVALS_CHROMIUM=$$NEWARRIVALS_CHROMIUM is not an executable;" \
			"point it at a Chromium, or unset it to use Debian's $(CHROMIUM_PACKAGE)" >&2; \
		exit 1; \
	else \
		if [ "$$(id -u)" = 0 ]; then as_root=; \
		elif command -v sudo >/dev/null 2>&1; then as_root=sudo; \
		else \
			echo "browser: no $(CHROMIUM) found, and installing it needs root (no sudo);" \
				"run as root: apt-get update && apt-get install -y --no-install-recommends" \
				"$(CHROMIUM_PACKAGE) (or set NEWARRIVALS_CHROMIUM to a Chromium executable)" >&2; \
			exit 1; \
		fi; \
		echo "browser: no $(CHROMIUM) found; installing Debian's $(CHROMIUM_PACKAGE)"; \
		apt="$$as_root env DEBIAN_FRONTEND=noninteractive $(APT_GET)"; \
		$$apt install -y -q --no-install-recommends $(CHROMIUM_PACKAGE) \
			|| { $$apt update -q && $$apt install -y -q --no-install-recommends $(CHROMIUM_PACKAGE); } \
			|| { echo "browser: installing $(CHROMIUM_PACKAGE) failed; run:" \
				"apt-get update && apt-get install -y --no-install-recommends" \
				"$(CHROMIUM_PACKAGE) as root" >&2; exit 1; }; \
		command -v $(CHROMIUM_PACKAGE) >/dev/null 2>&1 \
			|| { echo "browser: $(CHROMIUM_PACKAGE) installed but not on PATH" >&2; exit 1; }; \
	fi

test: browser lint typecheck pytest

# make bench: every benchmark at a moderate size into $(BENCH_DIR), then one report,
# $(BENCH_DIR)/REPORT.md with PNG charts (benchmarks/report.py, which also runs alone on
# earlier results). About 14 minutes on an idle 2-core CPU, plus the API load test's 14
# (measured 2026-11-28: 27 min 51 s in all), and, the first time, 1-1.5 hours to build the
# load test's 100,000-product index (see bench-load). At the scale of the 1M-vector FAISS
# table (reports/published/2026-11-28-faiss-1m.md): `make bench BENCH_SCALE=1000000` (about
# 15 minutes more and 5 GiB of RAM).
BENCH_DIR ?= reports/bench
BENCH_WORK ?= $(BENCH_DIR)/work
BENCH_SCALE ?= 200000
BENCH_PRODUCTS ?= 10000
BENCH_USERS ?= 2000
BENCH_EVAL_PRODUCTS ?= 3000
BENCH_EVAL_USERS ?= 600
BENCH_TOWER_MINUTES ?= 3

bench: install
	mkdir -p $(BENCH_WORK)
	$(BIN)/python benchmarks/report.py --in $(BENCH_DIR) --record-machine
	@echo "== bench [1/5] FAISS index types, $(BENCH_SCALE) vectors"
	$(BIN)/python benchmarks/faiss_bench.py --n $(BENCH_SCALE) --queries 1000 \
		--single-budget 5 --batch-budget 10 --out $(BENCH_DIR)/faiss.json > $(BENCH_DIR)/faiss.md
	@echo "== bench [2/5] bulk rebuild: full, unchanged, 1% changed ($(BENCH_PRODUCTS) products)"
	$(BIN)/python benchmarks/rebuild_bench.py --products $(BENCH_PRODUCTS) --users $(BENCH_USERS) \
		--workdir $(BENCH_WORK)/rebuild --out $(BENCH_DIR)/rebuild.json > $(BENCH_DIR)/rebuild.md
	@echo "== bench [3/5] ranker latency"
	$(BIN)/python benchmarks/ranker_latency.py --json $(BENCH_DIR)/ranker_latency.json
	@echo "== bench [4/5] cold-start evaluation ($(BENCH_EVAL_PRODUCTS) products, image tower $(BENCH_TOWER_MINUTES) min)"
	$(BIN)/newarrivals synth --out $(BENCH_WORK)/synth --products $(BENCH_EVAL_PRODUCTS) \
		--users $(BENCH_EVAL_USERS)
	$(BIN)/newarrivals align-images --catalog $(BENCH_WORK)/synth --out $(BENCH_WORK)/tower \
		--minutes $(BENCH_TOWER_MINUTES) --image-size 96 --launched-before 2024-03-31 \
		--cache-dir $(BENCH_WORK)/cache --no-progress --report-json $(BENCH_DIR)/image_tower_synth.json
	$(BIN)/newarrivals evaluate --data $(BENCH_WORK)/synth --image-tower $(BENCH_WORK)/tower \
		--tower-minutes 1 --cache-dir $(BENCH_WORK)/cache --reports $(BENCH_WORK)/evaluation \
		--json $(BENCH_DIR)/evaluation.json --no-progress
	@echo "== bench [5/5] API load test"
	@if [ -f benchmarks/load_test.py ]; then \
		$(BIN)/python benchmarks/load_test.py --json $(BENCH_DIR)/load_test.json; \
	else echo "benchmarks/load_test.py does not exist yet; the report says so"; fi
	$(BIN)/python benchmarks/report.py --in $(BENCH_DIR) --out $(BENCH_DIR)/REPORT.md

bench-faiss: install
	$(BIN)/python benchmarks/faiss_bench.py

bench-encode: install
	$(BIN)/python benchmarks/rebuild_bench.py

# make bench-load: the API load test alone (issue #5): `newarrivals serve` on a synthetic
# index (default 100,000 products; LOAD_PRODUCTS=N), prepared once under $(LOAD_WORKDIR)
# (the first 100,000 build takes 1-1.5 hours on 2 cores), then 5,000 requests
# (LOAD_REQUESTS=N) per scenario and concurrency (about 15 minutes).
# `make bench-load LOAD_ARGS=--smoke` (2,000 products, 200 requests) checks the plumbing in
# two minutes once prepared (about half an hour the first time, mostly the ranker).
LOAD_WORKDIR ?= /tmp/newarrivals-load
LOAD_PRODUCTS ?=
LOAD_REQUESTS ?=
LOAD_ARGS ?=

bench-load: install
	mkdir -p $(BENCH_DIR)
	$(BIN)/python benchmarks/load_test.py --workdir $(LOAD_WORKDIR) \
		$(if $(LOAD_PRODUCTS),--products $(LOAD_PRODUCTS)) \
		$(if $(LOAD_REQUESTS),--requests $(LOAD_REQUESTS)) \
		--json $(BENCH_DIR)/load_test.json $(LOAD_ARGS)

clean:
	rm -rf $(VENV) .mypy-path .mypy_cache .ruff_cache .pytest_cache build *.egg-info
