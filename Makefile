# fastproxy - the two commands a newcomer needs: `make run` and `make test`.
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
PIP      := $(VENV)/bin/pip
CC       ?= gcc
SAN      := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
CTESTS   := $(wildcard tests/c/test_*.c)
CSRC     := $(wildcard csrc/*.c)
PYTEST_ARGS ?=

.PHONY: all venv build debug run test test-c test-py bench image image-test clean distclean

all: build

# The venv is rebuilt when the declared dependencies change.
$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "Cython>=3.0" setuptools wheel \
	    uvloop httptools orjson psutil PyYAML \
	    pytest pytest-timeout hypothesis prometheus-client
	touch $@

venv: $(VENV)/.deps

# In-place build: the C is compiled into fastproxy/_native/*.so next to the .pyx
# (only what changed). The editable install, for the `fastproxy` command, once.
build: $(VENV)/.editable
	$(PY) -W ignore setup.py -q build_ext --inplace

$(VENV)/.editable: $(VENV)/.deps
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

debug: $(VENV)/.deps
	FASTPROXY_DEBUG_BUILD=1 $(PY) setup.py -q build_ext --inplace --cython-always

# Runs the sidecar on the embedded default config (15001/15006 capture, admin on 15000).
run: build
	$(PY) -m fastproxy run $(if $(CONFIG),--config $(CONFIG))

# C unit tests under ASan/UBSan: each tests/c/test_*.c links every csrc/*.c.
test-c:
	@mkdir -p build/ctest
	@set -e; for t in $(CTESTS); do \
	    bin=build/ctest/$$(basename $$t .c); \
	    $(CC) -std=gnu99 -g -O1 -Wall -Wextra -Werror -Wno-unused-parameter $(SAN) -Icsrc -o $$bin $$t $(CSRC) -lrt; \
	    echo "== $$bin"; ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ./$$bin; \
	done

test-py: build
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

test: test-c test-py

bench: build
	$(PY) -m bench $(if $(QUICK),--quick) $(BENCH_ARGS)

# The sidecar image. With a Docker engine: docker build. Without one (these
# machines): shared/tools/container-build.sh, beside the repo (podman + debootstrap, root).
IMAGE           ?= localhost/fastproxy:dev
CONTAINER_BUILD ?= $(abspath $(CURDIR)/../shared/tools/container-build.sh)

image:
	@if command -v docker >/dev/null && docker info >/dev/null 2>&1; then \
	    docker build -t $(IMAGE) .; \
	elif [ -f "$(CONTAINER_BUILD)" ]; then \
	    bash "$(CONTAINER_BUILD)" . Dockerfile $(IMAGE); \
	else \
	    echo "make image: no Docker engine answers and $(CONTAINER_BUILD) is missing;" >&2; \
	    echo "  run from a checkout with shared/ beside it, or set CONTAINER_BUILD=/path/to/container-build.sh" >&2; \
	    exit 2; \
	fi

# Runs the built image: --version, init --dry-run, and a relay through `fastproxy run`
# inside one container (its own network namespace, loopback only).
image-test: image
	bash tests/image/check.sh $(IMAGE)

clean:
	rm -rf build fastproxy/_native/*.so fastproxy/_native/*.c fastproxy/_native/*.html *.egg-info

distclean: clean
	rm -rf $(VENV) bench/results
