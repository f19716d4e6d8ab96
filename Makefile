# Two commands do all the set-up on a fresh machine (Python >= 3.11 and pip, nothing else):
#   make study   runs the default study (config/config.yaml) end to end
#   make test    runs the test suite
# Both create the virtual environment .venv on first use. TORCH selects the PyTorch build
# (the default is the CPU wheel; use e.g. TORCH=torch for a CUDA build on a GPU workstation).

VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
CORES ?= all
BIN := $(VENV)/bin

.PHONY: study test env clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

study: env
	PATH="$(CURDIR)/$(BIN):$$PATH" snakemake --cores $(CORES)

# One pytest worker per core (pytest-xdist). A test module runs whole in one worker, so its
# fixtures (a Snakemake run, the Slurm cluster) are made once; modules go out in collection order,
# the Slurm and Snakemake ones first (tests/conftest.py).
test: env
	PATH="$(CURDIR)/$(BIN):$$PATH" pytest -ra -n auto --dist loadfile --no-loadscope-reorder

clean:
	rm -rf results/*/ .snakemake
