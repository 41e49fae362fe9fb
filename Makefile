# The two commands of the README: `make demo` and `make test`. Both create .venv when missing.
# torch/torchvision are pinned to the pair that the development machines hold on local disk
# (a CUDA build that also runs on CPU); override with `make TORCH_PINS="torch torchvision"`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[dev,metrics,export,trackers]'
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
