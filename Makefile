# Set-up and entry points for edgekit. `make demo` runs the main job, `make test` the whole suite;
# both set up a fresh machine first (a virtualenv in .venv, torch's CPU build installed before the
# project so nothing pulls a CUDA build).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgekit-installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages: Fashion-MNIST (real calibration and accuracy data, no downloads at run time);
# openssh-server (the ssh device tests and benchmark start a real sshd on 127.0.0.1); qemu-user-static
# and mmdebstrap (emulated Raspberry Pi boards: an arm64 Debian Python run under qemu-aarch64).
APT_PACKAGES := dataset-fashion-mnist openssh-server qemu-user-static mmdebstrap

.PHONY: setup system-deps demo test test-fast clean

setup: system-deps $(STAMP)

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: setup
	BIN=$(BIN) scripts/demo.sh

# Two pytest-xdist workers (the machine's two cores), each module whole on one worker so its module
# fixtures are built once; the ten slowest tests and the suite's wall time are printed at the end.
PYTEST := $(BIN)/python -m pytest -q -n $(or $(JOBS),2) --dist loadfile --durations=10

test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info
