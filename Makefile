# Two commands do everything on a fresh machine: `make demo` and `make test`.
# They install everything (the torch-free core + the train, video and dev extras); a device that
# only runs models installs the core alone (docs/deployment.md, "Installing on a device").
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build of torch; an unpinned torch pulls a multi-GB CUDA build. Override for a GPU box:
#   make TORCH_SPEC="torch==2.13.0 --index-url ..." demo
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[train,video,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/hbl-edge demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs build *.egg-info
