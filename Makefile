# quantlens: `make html` builds the book, `make test` runs every test. Both create the
# virtual environment .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The local CPU wheel; elsewhere use e.g. `make TORCH_SPEC=torch env` for the default build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.quantlens-installed
CHAPTERS := $(filter-out book/intro.ipynb,$(wildcard book/*.ipynb))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: env html test unit nbval lint notebooks clean bench

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade "pip>=23"
	$(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

html: env
	rm -rf _build/html
	$(BIN)/jupyter-book build . -W --keep-going

lint: env
	$(BIN)/ruff check quantlens tests benchmarks

unit: env
	$(BIN)/pytest tests

nbval: env
	$(BIN)/pytest --nbval $(CHAPTERS) --nbval-sanitize-with nbval_sanitize.cfg

test: lint unit nbval html

# Re-execute every chapter in place (after changing quantlens or a chapter's .md):
# the .ipynb outputs are the nbval reference, so they must come from a real run.
notebooks: env
	for md in book/*.md; do \
	  grep -q '^jupytext:' $$md || continue; \
	  $(BIN)/jupytext --to ipynb --update $$md && \
	  $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=300 $${md%.md}.ipynb || exit 1; \
	done

bench: env
	$(BIN)/python -m pip install -e ".[bench]"
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf _build .pytest_cache
