# dnncourse: `make book` and `make test` each set up .venv from scratch on a
# machine with only python3, pip and make, then do their work.
PYTHON ?= python3
# Python writes the bytecode of what it imports (some machines set PYTHONDONTWRITEBYTECODE,
# and then every process, each grading kernel included, compiles torch again from source)
unexport PYTHONDONTWRITEBYTECODE
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed
# nbgrader calls `alembic` from PATH, Jupyter finds kernels through it.
RUN    := PATH="$(BIN):$$PATH" MPLBACKEND=Agg PYDEVD_DISABLE_FILE_VALIDATION=1
# The book's build command, flags and environment live in src/dnncourse/bookbuild.py
# (shared with tests/test_book.py and benchmarks/bench_book.py); JBFLAGS replaces its flags.
JBFLAGS ?=

# The Pythons the pinned set installs on: pyproject.toml's requires-python, checked first.
REQUIRES := $(shell sed -n 's/^requires-python = ">=\([0-9.]*\),<\([0-9.]*\)"$$/\1 \2/p' pyproject.toml)

.PHONY: book test lint format exercises venv clean python-version

python-version:
	@$(PYTHON) -c 'import sys; lo, hi = [tuple(map(int, v.split("."))) for v in "$(REQUIRES)".split()]; v = sys.version_info[:len(lo)]; sys.exit(0 if lo <= v and sys.version_info[:len(hi)] < hi else "dnncourse needs Python >=$(word 1,$(REQUIRES)),<$(word 2,$(REQUIRES)) (pyproject.toml); $(PYTHON) is %s: run make PYTHON=python3.12, for example" % sys.version.split()[0])'

venv: python-version $(STAMP)

# The lock and the package, installed by uv (pinned in the lock, bootstrapped with pip;
# pip itself where uv is unavailable) with pip's own configuration: tools/install_lock.py.
$(STAMP): requirements-lock.txt pyproject.toml tools/install_lock.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python tools/install_lock.py
	touch $(STAMP)

book: python-version $(STAMP)
	$(BIN)/python -m dnncourse.bookbuild $(JBFLAGS)
	@test -f _build/html/index.html && echo "Book: $(abspath _build/html/index.html)"

test: python-version $(STAMP)
	$(RUN) $(BIN)/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder

lint: python-version $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: python-version $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Regenerate the student notebooks in exercises/ from solutions/ (never edit them by hand).
exercises: python-version $(STAMP)
	$(RUN) $(BIN)/dnncourse release

clean:
	rm -rf _build
