#!/usr/bin/env python3
"""Batch throughput, end to end: rows per second from a job's first publish to its last
result, through NATS only (no HTTP).

Runs the whole stack (release binaries, a static MiniLM instance for account `dev`)
and the Rust example publisher (`services/batch/examples/batch.rs`, release build):

* closed model — `openai/gpt-4o-mini` on the mock provider (no added latency): router
  → translator → mock → result;
* open model — MiniLM embeddings, one sentence per row: router → the cluster's batch
  queue → one inference instance (dynamic batching) → result.

Each scenario runs --repeats jobs (fresh job ids) and reports the median.

    python3 loadtest/bench_batch.py [--closed-rows 5000] [--open-rows 2000] [--repeats 3]
                                    [--no-build] [--no-append]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "infra"))
sys.path.insert(0, str(REPO / "loadtest"))

import stack  # noqa: E402
from bench import RESULTS, git_commit, machine, release_bin_dir  # noqa: E402

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def run_job(sy, example: Path, model: str, task: str, rows: int) -> dict:
    job = f"bench-{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "NATS_URL": sy.nats_url, "BATCH_PROVIDER_KEY": sy.mock_api_key}
    out = subprocess.run(
        [str(example), "--account", "dev", "--job", job, "--model", model, "--task", task,
         "--count", str(rows), "--idle-timeout-secs", "120"],
        env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"batch example failed: {out.stderr[-2000:]}")
    summary = json.loads(out.stdout)
    if summary["results"] != rows or summary["ok"] != rows:
        raise SystemExit(f"job {job}: {summary}")
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--closed-rows", type=int, default=5000)
    ap.add_argument("--open-rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--inference-threads", type=int, default=2)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--workspace", "--bins", "-q"], cwd=REPO, check=True)
        subprocess.run(["cargo", "build", "--release", "-p", "switchyard-batch", "--example", "batch", "-q"],
                       cwd=REPO, check=True)
    example = release_bin_dir() / "examples" / "batch"
    rates: dict[str, list[float]] = {"closed": [], "open": []}
    with tempfile.TemporaryDirectory() as tmp, stack.Stack(stack.StackConfig.ephemeral(
            Path(tmp), bin_dir=release_bin_dir(), open_models=[MINILM],
            inference_threads=args.inference_threads)) as sy:
        for _ in range(args.repeats):
            s = run_job(sy, example, "openai/gpt-4o-mini", "chat", args.closed_rows)
            rates["closed"].append(s["published_per_s"])
            s = run_job(sy, example, MINILM, "embeddings", args.open_rows)
            rates["open"].append(s["published_per_s"])
    rows = [
        (f"closed model via the mock (openai/gpt-4o-mini), {args.closed_rows} rows", rates["closed"]),
        (f"open model, MiniLM embeddings (one sentence a row), {args.open_rows} rows, "
         f"one instance, {args.inference_threads} threads", rates["open"]),
    ]
    lines = ["| batch job | rows/s (median) | min | max | runs |", "|---|---:|---:|---:|---:|"]
    for name, vals in rows:
        lines.append(f"| {name} | {statistics.median(vals):,.0f} | {min(vals):,.0f} | {max(vals):,.0f} | {len(vals)} |")
    table = "\n".join(lines)
    print(table)
    if args.no_append:
        return 0
    m = machine()
    text = (
        f"\n## {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC — commit {git_commit()} — batch throughput\n\n"
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']}. Method: `loadtest/bench_batch.py` — whole stack, "
        "release build, unpinned; the Rust example publisher (`services/batch/examples/batch.rs`) publishes every "
        "row with JetStream (256 PubAcks in flight), then reads the job's results with an ordered consumer; the "
        "rate is rows over the time from the first publish to the last result. Every row checked: one result "
        "each, no errors. `just bench-batch`.\n\n"
        f"{table}\n"
    )
    with open(RESULTS, "a") as f:
        f.write(text)
    print(f"\nappended to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
