# Two commands do everything on a fresh machine (README):
#   make test   set up .venv (torch pinned first, then the project with test extras), run pytest
#   make demo   same set-up, then run the main job
# Re-running reuses .venv: each install step is redone only when its inputs change.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

BIN := $(VENV)/bin
# The torch stamp carries a hash of the spec, so `make test TORCH=...` reinstalls torch once.
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s' '$(TORCH)' | md5sum | cut -c1-12)
BASE_STAMP  := $(VENV)/.installed-base
TEST_STAMP  := $(VENV)/.installed-test

.PHONY: test demo venv clean lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(TORCH_STAMP): | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q "$(TORCH)"
	rm -f $(VENV)/.torch-* && touch $@

$(BASE_STAMP): setup.cfg pyproject.toml $(TORCH_STAMP)
	$(BIN)/pip install --disable-pip-version-check -q -e .
	touch $@

$(TEST_STAMP): setup.cfg pyproject.toml $(TORCH_STAMP)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test]"
	touch $@ $(BASE_STAMP)

venv: $(BASE_STAMP)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(BASE_STAMP)
	$(BIN)/python -m crossmodal.demo

lint: $(BASE_STAMP)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[lint]"
	$(BIN)/python -m flake8 crossmodal tests docs benchmarks datasets

clean:
	rm -rf $(VENV) build *.egg-info
