# maskloop developer commands. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: help install frontend frontend-check openapi demo serve test lint typecheck importlint unit bench services chromium clean

help:
	@echo "make demo   - install, migrate an SQLite database under data/, load demo phantoms, serve on :8000"
	@echo "make test   - lint, type-check, import contracts, the frontend's checks, and the whole pytest suite (PostgreSQL + Redis)"
	@echo "make bench  - run the benchmarks and write bench/results.json"
	@echo "make frontend - build the browser workspace into frontend/dist (npm ci + vite)"
	@echo "make frontend-check - ESLint, tsc, Vitest and the OpenAPI drift check of the frontend (part of make test)"
	@echo "make openapi - regenerate frontend/src/api/schema.d.ts from the backend's OpenAPI document"

# The real MONAI Label client for the compatibility tests is installed with --no-deps and is not a pyproject pin: its
# wheel depends on the whole MONAI Label server stack, while the client module needs only requests.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	$(BIN)/pip install -q -e '.[ml,dev]'
	$(BIN)/pip install -q --no-deps monailabel==0.8.5
	touch $(STAMP)

install: $(STAMP)

# The browser workspace: rebuilt from package-lock.json only when a source, the lock or the config is newer.
FRONTEND_DIST := frontend/dist/index.html
FRONTEND_SRC := $(shell find frontend/src -type f 2>/dev/null) frontend/index.html frontend/package.json \
	frontend/package-lock.json frontend/vite.config.ts frontend/tsconfig.json

$(FRONTEND_DIST): $(FRONTEND_SRC)
	cd frontend && npm ci --no-audit --no-fund && npm run typecheck && npm run build
	touch $(FRONTEND_DIST)

frontend: $(FRONTEND_DIST)

# The frontend's dev tools (ESLint, Vitest, openapi-typescript), installed from the lock when it changes.
FRONTEND_DEPS := frontend/node_modules/.package-lock.json
OPENAPI_OUT := frontend/node_modules/.cache/maskloop-openapi

$(FRONTEND_DEPS): frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund
	touch $(FRONTEND_DEPS)

# API types generated from the backend's OpenAPI document (no server started): run after changing an API schema.
openapi: install $(FRONTEND_DEPS)
	$(BIN)/python scripts/openapi.py $(OPENAPI_OUT)/openapi.json
	cd frontend && node_modules/.bin/openapi-typescript node_modules/.cache/maskloop-openapi/openapi.json -o src/api/schema.d.ts

# Lint (typescript-eslint, no import cycles, a pure src/core), type-check, unit tests, and the drift check: the
# committed src/api/schema.d.ts must equal a fresh generation from the backend's OpenAPI document.
frontend-check: install $(FRONTEND_DEPS)
	cd frontend && node_modules/.bin/eslint --cache --cache-location node_modules/.cache/eslint/ . && node_modules/.bin/tsc --noEmit && node_modules/.bin/vitest run
	$(BIN)/python scripts/openapi.py $(OPENAPI_OUT)/openapi.json
	cd frontend && node_modules/.bin/openapi-typescript node_modules/.cache/maskloop-openapi/openapi.json -o node_modules/.cache/maskloop-openapi/schema.d.ts
	@diff -u frontend/src/api/schema.d.ts $(OPENAPI_OUT)/schema.d.ts > $(OPENAPI_OUT)/drift.diff || \
	  { head -60 $(OPENAPI_OUT)/drift.diff; echo "frontend/src/api/schema.d.ts is out of date with the backend's OpenAPI: run 'make openapi' and commit it" >&2; exit 1; }

demo: install frontend
	$(BIN)/maskloop migrate
	$(BIN)/maskloop demo-data
	$(BIN)/maskloop serve

serve: install
	$(BIN)/maskloop serve

# The browser tests drive Debian's Chromium (Playwright cannot download a browser here): installed through apt when
# this runs as root, otherwise a message naming the command.
chromium:
	@command -v chromium >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "installing Chromium for the browser tests (apt-get install -y chromium)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
	  echo "the browser tests need Chromium: run 'sudo apt-get install -y chromium' first" >&2; exit 1; \
	fi

# dciodvfy (Debian's dicom3tools) validates the exported DICOM SEG and CT in the tests: installed through apt when
# this runs as root, otherwise a message naming the command.
.PHONY: dicom3tools
dicom3tools:
	@command -v dciodvfy >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "installing dicom3tools for the DICOM checks (apt-get install -y dicom3tools)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dicom3tools; \
	else \
	  echo "the DICOM checks need dciodvfy: run 'sudo apt-get install -y dicom3tools' first" >&2; exit 1; \
	fi

# Orthanc with its DICOMweb plugin (Debian's orthanc + orthanc-dicomweb) is the PACS of the PACS tests and bench:
# installed through apt when this runs as root, otherwise a message naming the command. The tests start their own.
.PHONY: orthanc
orthanc:
	@test -x /usr/sbin/Orthanc && test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so && exit 0; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "installing Orthanc for the PACS tests (apt-get install -y orthanc orthanc-dicomweb)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q orthanc orthanc-dicomweb; \
	else \
	  echo "the PACS tests need Orthanc: run 'sudo apt-get install -y orthanc orthanc-dicomweb' first" >&2; exit 1; \
	fi

services:
	@bash scripts/services.sh

lint: install
	$(BIN)/ruff check backend worker tests bench migrations
	$(BIN)/ruff format --check backend worker tests bench

typecheck: install
	$(BIN)/mypy

importlint: install
	$(BIN)/lint-imports

test: install frontend chromium dicom3tools orthanc services lint typecheck importlint frontend-check
	$(BIN)/pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

bench: install frontend chromium orthanc services
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
