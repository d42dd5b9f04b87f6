# The two commands of the README. Both install what is missing first (scripts/bootstrap.sh).
PYTHON ?= python3
DEMO_MODEL ?= models/tiny-qwen2-vl
DEMO_OUT ?= outputs

.PHONY: demo test lint

demo:
	PYTHON=$(PYTHON) scripts/bootstrap.sh
	HF_HUB_OFFLINE=1 $(PYTHON) scripts/make_tiny_models.py --family qwen2_vl --out $(DEMO_MODEL)
	HF_HUB_OFFLINE=1 auto-round-mllm --model $(DEMO_MODEL) --bits 4 --group_size 128 \
		--iters 200 --nsamples 32 --seqlen 512 --batch_size 8 --output_dir $(DEMO_OUT) --force

test:
	PYTHON=$(PYTHON) scripts/bootstrap.sh test
	$(PYTHON) -m pytest -q
	HF_HUB_OFFLINE=1 $(PYTHON) scripts/check_engines.py --check

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .
