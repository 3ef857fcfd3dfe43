# Two promises: `make demo` and `make test` work on a fresh machine with nothing installed by hand.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= data
AS_OF  ?= 2001-02-01
# implicit trains with its own threads; BLAS must stay single-threaded under it and under the web server.
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: demo test install spark java browser redis postgres lint bench clean

$(BIN)/recsys: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/recsys

# Spark (optional: `make demo` never needs it): pyspark from the `spark` extra and Debian's Java 17.
$(VENV)/.spark-installed: $(BIN)/recsys pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,spark]'
	@touch $@

spark: $(VENV)/.spark-installed java

java:
	java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])' || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y openjdk-17-jre-headless)

CONFIG ?= experiments/configs/default.toml
HOST   ?= 127.0.0.1
PORT   ?= 8000

demo: install
	$(BIN)/recsys data fetch tafeng --data-dir $(DATA)
	$(BIN)/recsys data ingest tafeng --data-dir $(DATA)
	$(BIN)/recsys features build --data-dir $(DATA) --dataset tafeng --as-of $(AS_OF) --rules features/rules.toml
	$(BIN)/recsys train --config $(CONFIG)
	$(BIN)/python -m serving.keys demo $(DATA)/demo-keys.toml region=115  # + a staff key: Ta-Feng's largest region
	@echo "serving on http://$(HOST):$(PORT) - console http://$(HOST):$(PORT)/console, API docs /docs, health /health/ready, metrics /metrics"
	$(BIN)/recsys serve --registered-model recsys-tafeng --api-keys-file $(DATA)/demo-keys.toml \
		--events-dir $(DATA)/events --host $(HOST) --port $(PORT) \
		--campaign-db sqlite:///$(DATA)/campaigns.db --purchases $(DATA)/tafeng/canonical

# The console's browser tests drive Debian's Chromium (never a browser downloaded by playwright);
# a CJK font so its screenshots show the Chinese labels.
browser:
	command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	fc-list :lang=zh | grep -q . || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y fonts-wqy-microhei)

# The live-events stream shared by several replicas is Redis (Debian's redis-server); the tests start
# their own on a free port in a temporary folder, never the system service.
redis:
	command -v redis-server >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server)

# The campaign database's tests run against SQLite and a real PostgreSQL (Debian's server, started by the
# tests on a free port in a temporary folder through pytest-postgresql; never the system service).
postgres:
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql)

test: install spark browser redis postgres
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check recsys features training serving experiments tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
