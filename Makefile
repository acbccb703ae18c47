# The two commands of the README: `make demo` and `make test`.
# Everything else they need (apt packages, the venv) is installed here on demand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt-checked
TEST_APT_STAMP := $(VENV)/.apt-test-checked

# Debian packages: build headers for pyaudio, and the libraries edge loads
# (libopus for voice, libspeexdsp for echo cancellation and noise suppression,
# libpq for the PostgreSQL store).
APT_RUNTIME := python3-venv python3-dev gcc portaudio19-dev libportaudio2 libopus0 libsamplerate0 libspeexdsp1 libpq5
# Only for the tests and benchmarks: a PostgreSQL server they start themselves
# (a throw-away cluster on a Unix socket), coturn, whose turnserver the STUN
# interop tests start on 127.0.0.1, iproute2 and nftables for the NAT lab
# (network namespaces with kernel NAT and firewalls, tests/natlab.py), and
# espeak-ng for the speech the voice tests and benchmark score.
APT_TEST := postgresql coturn iproute2 nftables espeak-ng

.PHONY: demo test lint typecheck unit lab docs docs-check bench fuzz image clean apt venv

demo: $(STAMP)
	$(BIN)/edge demo

test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check edge tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(TEST_APT_STAMP)
	$(BIN)/pytest -q

# The NAT lab alone (as root; part of `unit` too).
lab: $(STAMP) $(TEST_APT_STAMP)
	$(BIN)/pytest -q tests/test_natlab.py

docs: $(STAMP)
	$(BIN)/python -m edge.wire.docgen > docs/PROTOCOL.md

bench: $(STAMP) $(TEST_APT_STAMP)
	$(BIN)/python -m bench

fuzz: $(STAMP) $(TEST_APT_STAMP)
	EDGE_FUZZ_EXAMPLES=20000 $(BIN)/pytest -q -m fuzz tests

# The arm64 device image (firmware/README.md): a root filesystem built with
# debootstrap and checked under qemu emulation, as root; BOARD=intercom for the
# door intercom's sound card.
BOARD ?= desk-phone
image:
	$(MAKE) apt PACKAGES="debootstrap qemu-user-static binfmt-support"
	sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	$$sudo env APT_PACKAGES="$(APT_RUNTIME)" BOARD="$(BOARD)" bash firmware/build-image.sh

apt:
	@missing=""; for p in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

$(APT_STAMP): Makefile
	$(MAKE) apt PACKAGES="$(APT_RUNTIME)"
	@mkdir -p $(VENV) && touch $@

$(TEST_APT_STAMP): Makefile
	$(MAKE) apt PACKAGES="$(APT_TEST)"
	@mkdir -p $(VENV) && touch $@

$(STAMP): pyproject.toml $(APT_STAMP)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(STAMP)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
