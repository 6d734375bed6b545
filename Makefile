# hetadam: every target sets up .venv on first use (PyPI only).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test bench lint clean


setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all]'
	touch $@

demo: $(STAMP)
	$(PY) -m hetadam train --backend all --model mlp --epochs 30 --report build/demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

# Throughput against torch.optim.Adam measured in the same run; the split across
# cpu + opencl (skipped where opencl is unusable); the opencl kernel on resident state;
# training iterations of a 12.6M-parameter model, with and without overlap.
bench: $(STAMP)
	$(PY) -m hetadam bench --json build/bench/bench.json
	-$(PY) -m hetadam bench --split cpu,opencl --sizes 16777216 --json build/bench/split.json
	-$(PY) scripts/bench_opencl.py --json build/bench/opencl.json
	$(PY) -m hetadam bench --host-model --json build/bench/host_model.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(MAKE) lint-rtl
	$(PY) -m hetadam.regmap --check
	$(PY) -m hetadam.formats_render --check

clean:
	rm -rf build .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

# Each part of the toolkit adds its targets (sim, resources, csim, bitstream, deploy) in mk/.
-include mk/*.mk
