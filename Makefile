# `make tutorial` runs every lesson notebook into outputs/; `make test` runs the test suite.
# Both create (or reuse) the virtual environment .venv and install requirements.txt first; `make test`
# also installs requirements-materials.txt (the export formats' libraries), `make materials` alone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MATERIALS_STAMP := $(VENV)/.installed-materials

.PHONY: tutorial test lab install materials clean-outputs

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

materials: $(MATERIALS_STAMP)

$(MATERIALS_STAMP): $(STAMP) requirements-materials.txt
	$(PY) -m pip install -r requirements.txt -r requirements-materials.txt
	touch $(MATERIALS_STAMP)

tutorial: $(STAMP)
	$(PY) -m helpers tutorial --out outputs

test: $(STAMP) $(MATERIALS_STAMP)
	$(PY) -m pytest

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-outputs:
	rm -rf outputs
