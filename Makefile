# Two commands: `make demo` and `make test`. Both build .venv once (reused when present).
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.ifss-installed
# torch and torchvision must come as a matched pair from the package index, installed before
# anything else so no other requirement resolves torch on its own. Pip config files are ignored
# for this one command: a local find-links folder may hold a torch build without torchvision's ops.
TORCH := torch==2.13.0 torchvision==0.28.0
# InPlace-ABN (the iabn extra) is compiled here, against that torch, without build isolation. Its
# setup.py builds the CUDA kernels whenever torch was built with CUDA (the index's torch is) and has
# no switch of its own: the sitecustomize.py below, on PYTHONPATH for that one command, sets
# torch.has_cuda = False, so it is the CPU build (1.5 min on 2 cores) with or without nvcc. The pin
# to $(TORCH) keeps pip from resolving another torch; --no-cache-dir keeps the CPU wheel out of
# pip's cache, where a later CUDA build of the same version would pick it up (see README).
IABN_CPU := $(VENV)/iabn-cpu-build
CORES ?= all

.PHONY: demo test install clean-results

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torchvision" 2>/dev/null || \
	  PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(VENV)/bin/pip install $(TORCH)
	$(VENV)/bin/pip install -e '.[test,iabn-build]'
	$(PY) -c "import inplace_abn" 2>/dev/null || { mkdir -p $(IABN_CPU) && \
	  echo "import torch; torch.has_cuda = False" >$(IABN_CPU)/sitecustomize.py && \
	  PYTHONPATH="$(abspath $(IABN_CPU))" $(VENV)/bin/pip install --no-build-isolation --no-cache-dir \
	    -e '.[iabn]' $(TORCH); }
	touch $@

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" snakemake --workflow-profile workflow/profiles/default --cores $(CORES)

test: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" pytest

clean-results:
	rm -rf results
