# Every install step goes through constraints.txt (torch pinned to its CPU wheel).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -c constraints.txt
DATA_DIR ?= $(abspath $(or $(HF_ROBUST_IR_DATA),../shared/data))
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv test test-fast lint demo clean

$(VENV)/.installed: setup.cfg constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) -q --upgrade pip
	$(PIP) -q torch==2.13.0
	$(PIP) -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

test: venv
	HF_ROBUST_IR_DATA=$(DATA_DIR) $(PY) -m pytest -q -ra

test-fast: venv
	HF_ROBUST_IR_DATA=$(DATA_DIR) $(PY) -m pytest -q -m "not integration and not distributed"

lint: venv
	$(VENV)/bin/ruff check hf_robust_ir tests benchmarks

demo: venv
	$(VENV)/bin/hf-robust-ir train --config recipes/scifact_infonce_quick.yaml --data_dir $(DATA_DIR)/scifact

clean:
	rm -rf $(VENV) *.egg-info runs outputs
