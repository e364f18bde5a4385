# Two commands on a fresh machine with Python 3.11+ and pip:
#   make demo   set up .venv, fine-tune the embedded model on the PRD dataset, compare answers before/after
#   make test   set up .venv with test extras and run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERIAL := tests/e2e/test_wizard.py

.PHONY: demo test install clean

$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh $(VENV) qlora,serve,test
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/prd-assistant/demo.py

test: $(STAMP)
	@# the web UI's browser test drives Debian's chromium (Playwright cannot download its own offline); without root
	@# or apt the test is skipped and says why
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || true
	$(BIN)/tunesmith doctor --output-dir runs
	@# the package's bytecode once: with PYTHONDONTWRITEBYTECODE set (as on these machines) every process the tests
	@# start compiled its ~80 imported modules anew (~1-2 s each)
	$(BIN)/python -m compileall -q tunesmith > /dev/null
	@# two workers (pytest-xdist), a test file each at a time: the e2e tests wait on subprocesses and servers; then
	@# the tests marked serial (terminal-driven) in one process, collected from their own files only (collecting
	@# the whole suite again costs a process ~50 s; tests/test_serial_files.py keeps SERIAL complete)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not serial" --durations=40 tests
	$(BIN)/python -m pytest -q -m serial $(SERIAL)

clean:
	rm -rf $(VENV) runs
