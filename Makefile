# `make tutorial` runs every lesson notebook into outputs/; `make test` runs the test suite.
# Both create (or reuse) the virtual environment .venv and install requirements.txt first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: tutorial test lab install clean-outputs

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

tutorial: $(STAMP)
	$(PY) -m helpers tutorial --out outputs

test: $(STAMP)
	$(PY) -m pytest

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-outputs:
	rm -rf outputs
