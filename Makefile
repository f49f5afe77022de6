# Two entry points: `make run` (the main job: the smoke grid) and `make test` (the test suite).
# Both set up what they need.
PYTHON ?= python3
STAMP := .cache/installed

.PHONY: setup run test

# torch/torchvision are pinned to the builds pip can take from this machine's disk (a resolver left
# alone would fetch a multi-GB CUDA build); pyproject.toml admits other versions for other machines.
$(STAMP): pyproject.toml
	$(PYTHON) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(PYTHON) -m pip install -q "torch>=2.4,<2.15" "torchvision>=0.19,<0.30"
	$(PYTHON) -m pip install -q -e ".[test]"
	mkdir -p .cache && touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	drolt run experiments/smoke.yaml

test: $(STAMP)
	$(PYTHON) -m pytest
