# Two commands: `make demo` and `make test`. Both build .venv once (reused when present).
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.ifss-installed
# torch and torchvision must come as a matched pair from the package index, installed before
# anything else so no other requirement resolves torch on its own. Pip config files are ignored
# for this one command: a local find-links folder may hold a torch build without torchvision's ops.
TORCH := torch==2.13.0 torchvision==0.28.0
CORES ?= all

.PHONY: demo test install clean-results

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torchvision" 2>/dev/null || \
	  PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(VENV)/bin/pip install $(TORCH)
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" snakemake --workflow-profile workflow/profiles/default --cores $(CORES)

test: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" pytest

clean-results:
	rm -rf results
