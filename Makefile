# rulegate: `make demo` runs the main job, `make test` runs every test. Both set up what they need.
SHELL := /bin/bash
CARGO ?= cargo
POLICY ?= policies/refusal-style.yaml
MODEL ?= models/rulegate-minilm-rbr

.PHONY: setup build demo check-sample test lint bench load scaleout curve model model-gpu fit-policy clean

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release --locked

# The demo: SmolLM2 on llama.cpp behind the rulegate sidecar, asked by the official OpenAI client.
demo: build
	scripts/demo.sh

# Offline: judge the sample completions with the shipped policy and model.
check-sample: build
	./target/release/rulegate policy validate $(POLICY) --model $(MODEL)
	./target/release/rulegate check --policy $(POLICY) --model $(MODEL) --input examples/sample.jsonl --format table
	@echo "(* = response type predicted from the prompt; ? = prediction unsure, the policy's default)"

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

test: setup lint
	scripts/validate-k8s.sh
	$(CARGO) test --locked --all-targets
	$(CARGO) test --locked --doc
	# The API docs must build without a broken or private intra-doc link.
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --no-deps
	$(CARGO) build --locked --examples
	# The GPU build must compile here and fall back to CPU where CUDA is absent.
	$(CARGO) test --locked --features cuda --test cuda_fallback
	# The training corpus: every folder of ../shared/data mapped, splits disjoint, generated rows kept out of dev.
	.venv/bin/python -m pytest -q models/train/test_corpus.py

# The Kubernetes manifests (deploy/kubernetes/): every variant rendered with kustomize and
# validated offline against the Kubernetes schemas, plus rulegate's own rules (probes, security
# context, Secret token, policy hot reload); see deploy/kubernetes/README.md.
.PHONY: k8s-validate
k8s-validate:
	scripts/validate-k8s.sh

# The Rust verdict path (criterion), then the same path in Python (tokenizers + onnxruntime) on
# the same machine, for the side-by-side table in benches/README.md.
bench: build
	$(CARGO) bench --locked --bench evaluate
	.venv/bin/python -c "import tokenizers" 2>/dev/null || .venv/bin/pip install -q tokenizers==0.23.3
	.venv/bin/python benches/python_pipeline.py models/rulegate-minilm-rbr

# Requests/s and latency of the sidecar, guard off and on, in front of a fast mock (wrk).
load: build
	scripts/load.sh

# Several rulegate processes with their own model each vs sharing one MLServer (remote
# classifier backend, HTTP and gRPC); the table for benches/README.md ("Scale-out").
scaleout: build
	scripts/scaleout.sh

# The test-time compute curve (docs/compute-curve.md and .png): SmolLM2 on llama.cpp behind
# rulegate with each action (none, regenerate, best-of-n, beam search); reads ../shared/data.
curve: build
	.venv/bin/python -c "import matplotlib" 2>/dev/null || .venv/bin/pip install -q matplotlib==3.10.8
	.venv/bin/python scripts/compute_curve.py

# Retrain the default model from scratch on the broad corpus (models/train/corpus.py, lookalike.py),
# evaluate it on the held-out dev suite next to the shipped model, and package it only if it is
# better there and keeps the RBR style (see models/train/README.md).
model:
	models/train/train.sh

# The GPU variant of the default model: its int8 weights in an fp16 graph that runs real batches
# (`rulegate ... --device cuda --model target/model-fp16`); see benches/README.md.
model-gpu: setup
	.venv/bin/python models/train/gpu_variant.py --model models/rulegate-minilm-rbr --out target/model-fp16

# Refit the default policy's weights: synthetic ranked completions (models/train/synth.py)
# plus the RBR gold train set, features from the shipped model. Writes the policy in place.
DATA ?= ../shared/data
fit-policy: build
	mkdir -p target/fit
	RULEGATE_DATA=$(DATA) .venv/bin/python models/train/synth.py ranked --out target/fit/ranked.jsonl --n-prompts 300 --seed 13
	./target/release/rulegate fit --policy $(POLICY) --model $(MODEL) --input target/fit/ranked.jsonl \
	  --input $(DATA)/rbr-gold/train.jsonl --output $(POLICY) --report target/fit/report

# The container image (deploy/Containerfile, FROM scratch, non-root; see deploy/README.md),
# built with podman (installed with apt when missing). IMAGE=... sets the tag.
.PHONY: image image-test
image: build
	NO_BUILD=1 scripts/image.sh

# The image end to end: SmolLM2 on llama.cpp behind the container, asked by the official OpenAI
# client. RULEGATE_IMAGE_TEST_OPTIONAL=1 lets it pass as SKIPPED where podman cannot run.
image-test: image
	scripts/image-test.sh

clean:
	$(CARGO) clean
