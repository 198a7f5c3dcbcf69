# The two set-up commands of the README: `make demo` (main job) and `make test` (tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-all bench-quick browser

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch/torchvision pinned and installed first, alone, so pip never resolves other versions
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[test,plot,dicom]"
	touch $@

demo: install
	$(BIN)/python examples/demo.py

test: install browser
	$(BIN)/python -m pytest -q

# tests/test_report.py renders the HTML report in headless chromium (Debian's package);
# installed here when missing and we are root, otherwise that one test skips, saying why
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	      >/dev/null || echo "could not install chromium: the browser test will skip"; \
	  else echo "chromium missing and not root: the browser test will skip"; fi; }

test-all: install browser
	$(BIN)/python -m pytest -q -m ""

bench-quick: install
	$(BIN)/python -m benchmarks.run_all --quick
