# Set-up and everyday commands. `make sweep` and `make test` install first when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch: a bare `torch` requirement can pull a multi-GB CUDA build. On machines
# whose package index serves CUDA wheels by default, add the CPU index:
#   make install TORCH_INDEX=--extra-index-url=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: install run sweep compare test test-fast lint bench ui clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt $(TORCH_INDEX) torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

run: install
	$(PY) scripts/run.py

sweep: install
	$(PY) scripts/run.py -m sweep

compare: install
	$(PY) scripts/run.py -m compare

# Two test processes, each file whole on one (its module fixtures are built once): most tests
# wait on subprocesses, servers and heartbeats, so two share this machine's cores well.
test: install
	$(PY) -m pytest -n 2 --dist loadfile

test-fast: install
	$(PY) -m pytest -n 2 --dist loadfile -m "not slow"

lint: install
	$(VENV)/bin/ruff check src tests scripts tools
	$(VENV)/bin/ruff format --check src tests scripts tools
	$(VENV)/bin/mypy

bench: install
	$(PY) tools/bench.py

ui: install
	$(PY) scripts/ui.py

clean:
	rm -rf $(VENV) outputs multirun
