# objguided-d2: the two README commands are `make demo` and `make test`. Both create the
# virtualenv .venv/ on first use (idempotent: a stamp file records a finished install).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision for this machine's wheels; override e.g. TORCH_SPEC="torch torchvision" for CUDA builds.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.objguided-installed
DEMO_OUT ?= demo_output
PYTEST_ARGS ?=

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): setup.py tools/install_detectron2.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install "setuptools<81" wheel
	$(PY) -m pip install --no-build-isolation -e ".[test,napari]"
	$(PY) tools/install_detectron2.py
	touch $@

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: setup
	$(PY) tools/compare.py --preset demo --jobs 2 --threads 1 --speed-images 4 --warmup 1 --repeats 1 --output $(DEMO_OUT)

clean:
	rm -rf $(VENV) build *.egg-info
