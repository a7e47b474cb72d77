# quantlens: `make html` builds the book, `make test` runs every test, `make lab` opens the
# chapters in JupyterLab. All create the virtual environment .venv on first use, with the
# versions pinned in requirements.lock (`make lock` refreshes it).
PYTHON ?= python3
VENV ?= .venv
# The local CPU wheel; elsewhere use e.g. `make TORCH_SPEC=torch env` for the default build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.quantlens-installed
KERNEL := $(VENV)/share/jupyter/kernels/quantlens/kernel.json
CHAPTERS := $(filter-out book/intro.ipynb,$(wildcard book/*.ipynb))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# Pinned numerics (quantlens/numerics.py is their one definition; it runs on the standard
# library alone): one thread, ATen's default kernels, MKL's COMPATIBLE branch, NumPy's
# baseline SIMD, OpenBLAS's Haswell kernels. Every command that executes a chapter runs
# under them; the chapters' kernel spec sets them too.
PINNED = env $(shell $(PYTHON) quantlens/numerics.py)
# A different machine, simulated: one core instead of two, MKL and oneDNN limited to AVX2,
# glibc's libm without AVX-512/AVX2/FMA code paths. Pinned numerics must make no difference.
PERTURBED = taskset -c 0 env MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
	GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX2,-FMA
NBVAL = $(BIN)/pytest --nbval $(CHAPTERS) --nbval-sanitize-with nbval_sanitize.cfg

.PHONY: env kernel html render test unit unit-perturbed nbval nbval-perturbed lint \
	notebooks lab lock clean bench sweep

env: $(STAMP) $(KERNEL)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade "pip>=23"
	$(BIN)/python -m pip install -c requirements.lock "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -c requirements.lock -e ".[dev]"
	touch $@

kernel: $(KERNEL)

$(KERNEL): $(STAMP) quantlens/numerics.py
	$(BIN)/python quantlens/numerics.py install-kernel

# The reader's book: every chapter executed now, with the current package (no cache, no
# reused doctrees), under pinned numerics.
html: env
	rm -rf _build
	$(PINNED) $(BIN)/jupyter-book build . -W --keep-going

# The -W build inside `make test`: renders the committed .ipynb outputs that nbval has just
# verified against the current code, instead of executing every chapter a third time.
render: env
	rm -rf _build
	$(BIN)/python -c "import yaml, sys; c = yaml.safe_load(open('_config.yml')); \
	c['execute']['execute_notebooks'] = 'off'; \
	c['exclude_patterns'] = [p for p in c['exclude_patterns'] if p != 'book/*.ipynb'] \
	+ [n[:-6] + '.md' for n in sys.argv[1:]]; \
	yaml.safe_dump(c, open('_build_render_config.yml', 'w'))" $(CHAPTERS)
	$(BIN)/jupyter-book build . -W --keep-going --config _build_render_config.yml; \
	status=$$?; rm -f _build_render_config.yml; exit $$status

# Chapters' code is linted at 78 columns: the width of the code box in the rendered book.
lint: env
	$(BIN)/ruff check quantlens tests benchmarks experiments
	$(BIN)/ruff check --line-length 78 book/*.ipynb

unit: env
	$(BIN)/pytest tests

# The unit tests must not depend on one machine's rounding: run them again as another machine.
unit-perturbed: env
	$(PERTURBED) $(BIN)/pytest tests -q

# Chapters, two at a time (each kernel is single-threaded), then again as another machine;
# both passes compare against the same committed outputs.
nbval: env
	$(PINNED) $(NBVAL) -n 2 --dist loadfile

nbval-perturbed: env
	$(PERTURBED) $(PINNED) $(NBVAL)

test: lint unit nbval nbval-perturbed render

# JupyterLab with pinned numerics (the chapters' `quantlens` kernel sets them as well).
# JupyterLab on the chapters: book/*.md open as notebooks (Jupytext) on the pinned
# `quantlens` kernel. Autosave is off (lab/overrides.json), so running a chapter never
# rewrites its .ipynb, which is nbval's reference; only an explicit save does.
lab: env
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp lab/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	$(PINNED) $(BIN)/jupyter lab book $(LAB_ARGS)

# Re-execute every chapter in place (after changing quantlens or a chapter's .md):
# the .ipynb outputs are the nbval reference, so they must come from a real run.
notebooks: env
	for md in book/*.md; do \
	  grep -q '^jupytext:' $$md || continue; \
	  $(BIN)/jupytext --to ipynb --update $$md && \
	  $(PINNED) $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=300 $${md%.md}.ipynb || exit 1; \
	done

# Refresh requirements.lock: resolve the newest versions in a scratch environment.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --upgrade "pip>=23"
	.venv-lock/bin/python -m pip install "$(TORCH_SPEC)"
	.venv-lock/bin/python -m pip install -e ".[dev]"
	( echo "# Exact versions for make env (pip install -c requirements.lock)."; \
	  echo "# Refresh with: make lock   (then run make test and commit)."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | sed -e 's/+cpu$$//' ) \
	  > requirements.lock
	rm -rf .venv-lock

# The larger experiments whose committed tables chapters read (experiments/*.csv); the
# chapters rerun a subset of each, which must agree bitwise. About 35 minutes on one core
# (the verdict sweep: 4 min for 10 digits networks, 15 min for MiniLM's 12 Hessians).
sweep: env
	$(PINNED) $(BIN)/python experiments/bit_collapse_sweep.py
	$(PINNED) $(BIN)/python experiments/mixed_precision_sweep.py
	$(PINNED) $(BIN)/python experiments/verdict_sweep.py

bench: env
	$(BIN)/python -m pip install -c requirements.lock -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf _build .pytest_cache
