# The two commands of the README: `make demo` and `make test`. Both create .venv when missing.
# torch/torchvision are pinned to the pair that the development machines hold on local disk
# (a CUDA build that also runs on CPU); override with `make TORCH_PINS="torch torchvision"`.
# The venv gets the [dali] extra (DALI's CUDA 13 build, whose CPU pipelines the tests run) and
# [metrics,export,trackers] (the reference packages that eval, export and tracker tests run against);
# `make EXTRAS=dev` leaves them out (DALI's tests then skip unless P2P_REQUIRE_DALI=1; the eval,
# export and tracker tests need their extras).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,dali,metrics,export,trackers
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/p2p train run.name=demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/p2p bench all --quick --out bench-out

clean:
	rm -rf runs bench-out .pytest_cache
