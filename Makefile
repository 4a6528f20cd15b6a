# Two commands do all the set-up on a fresh clone:
#   make demo   - create .venv, install, run the main job on the synthetic catalogue
#   make test   - create .venv, install, run ruff, mypy and pytest
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test lint typecheck mypy-path pytest bench-faiss bench-encode clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	# torch and torchvision are pinned in pyproject to the builds that install from local disk.
	$(BIN)/python -m pip install --quiet -e ".[dev,bench,export]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/newarrivals demo --workdir $(DEMO_DIR)

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

test: lint typecheck pytest

bench-faiss: install
	$(BIN)/python benchmarks/faiss_bench.py

bench-encode: install
	$(BIN)/python benchmarks/rebuild_bench.py

clean:
	rm -rf $(VENV) .mypy-path .mypy_cache .ruff_cache .pytest_cache build *.egg-info
