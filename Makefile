# Two entry points do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATASETS ?= ../shared/datasets
DEMO := amazon_clothing_2014_msl
DEMO_DATA := data/$(DEMO)
MODELS := models
# promtool (and the prometheus binary a deploy test scrapes with) come from Debian's package.
PROMTOOL := /usr/bin/promtool
# The gateway page test drives Debian's chromium through Playwright (`playwright install` needs the internet).
CHROMIUM := /usr/bin/chromium

.PHONY: run test install lint protos compose-check demo-data demo-model lock

## run: set up, prepare the demo data, train the demo model when none exists, start the stack
run: install demo-data demo-model
	$(BIN)/whisperlite up --data $(DEMO_DATA) --model-dir $(MODELS)

## test: set up and run every check and the whole test suite
test: install lint compose-check
	$(BIN)/pytest

install: $(BIN)/.installed node_modules/.installed $(PROMTOOL) $(CHROMIUM)

$(PROMTOOL):
	command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

$(CHROMIUM):
	test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

# constraints.txt pins every transitive dependency (regenerate with `make lock`).
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lock: $(BIN)/.installed
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e' > constraints.txt

lint: install
	node_modules/.bin/buf lint protos

protos: install
	$(BIN)/python scripts/gen_protos.py

compose-check: install
	bash deploy/check.sh

demo-data: $(DEMO_DATA)/items.csv

$(DEMO_DATA)/items.csv: | $(BIN)/.installed
	$(BIN)/whisperlite data prepare --source $(DEMO) --raw $(DATASETS)/$(DEMO)/raw --out $(DEMO_DATA)

demo-model: demo-data
	@if ls $(MODELS)/$(DEMO)-*/manifest.json >/dev/null 2>&1; then \
		echo "demo model present: $$(ls -d $(MODELS)/$(DEMO)-* | tail -1)"; \
	else \
		$(BIN)/whisperlite train --data $(DEMO_DATA) --out $(MODELS); \
	fi
