# encseg: the two commands the README names are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.installed
NODE_STAMP = tests/browser/node_modules/.installed

.PHONY: setup demo test clean

$(STAMP): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, from the pinned CPU build, so nothing reaches for a CUDA wheel
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev,onnx]'
	touch $(STAMP)

# playwright-core drives Debian's chromium in the browser tests (no browser download)
$(NODE_STAMP): tests/browser/package.json tests/browser/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: browser tests will be skipped"; fi

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/encseg demo --out demo-out

test: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo-out tests/browser/node_modules
