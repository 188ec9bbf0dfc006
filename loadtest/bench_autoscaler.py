#!/usr/bin/env python3
"""Serverless timings: cold start, scale-up reaction, idle-shutdown accuracy.

Runs the whole stack (release binaries) with the autoscaler (process backend) and
measures, through the public API only:

* cold start — a cluster at zero instances; the time from sending an embeddings
  request (MiniLM) to its answer (p50/p95 over --repeats), next to the autoscaler's own
  `autoscaler_cold_start_seconds` (first instance started → it pulls);
* scale-up reaction — one instance ready, then a burst of --burst concurrent
  requests: the time from sending the burst to the cluster status asking for more
  instances (the autoscaler saw the backlog and started instances);
* idle shutdown — the time from the last answer to the cluster reporting zero
  instances, against its timeout (a 1-"minute" timeout, a minute being
  --idle-minute-ms here).

    python3 loadtest/bench_autoscaler.py [--repeats 5] [--burst 4] [--idle-minute-ms 3000]
                                        [--no-build] [--no-append]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "infra"))
sys.path.insert(0, str(REPO / "loadtest"))

import stack  # noqa: E402
from bench import RESULTS, git_commit, machine, release_bin_dir  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def call(sy, method, path, body=None, timeout=120):
    req = urllib.request.Request(
        f"{sy.ingress_url}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {sy.dev_api_key}", "Content-Type": "application/json",
                 "x-switchyard-max-wait": "120"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def cluster(sy):
    try:
        return call(sy, "GET", f"/v1/clusters/{MODEL}")
    except urllib.error.HTTPError:
        return None


def embed(sy, text):
    return call(sy, "POST", "/v1/embeddings", {"model": MODEL, "input": text})


def wait_for(probe, timeout=120, every=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = probe()
        if v:
            return v
        time.sleep(every)
    raise SystemExit("timed out")


def metric(sy, name):
    with urllib.request.urlopen(f"{sy.autoscaler_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name))


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--burst", type=int, default=4)
    ap.add_argument("--idle-minute-ms", type=int, default=3000)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--workspace", "--bins", "-q"], cwd=REPO, check=True)
    timeout_s = args.idle_minute_ms / 1000
    with tempfile.TemporaryDirectory() as tmp, stack.Stack(stack.StackConfig.ephemeral(
            Path(tmp), bin_dir=release_bin_dir(), autoscaler=True,
            idle_minute_ms=args.idle_minute_ms, inference_threads=1)) as sy:
        # The cluster, with a 1-minute timeout, at rest.
        call(sy, "PUT", f"/v1/clusters/{MODEL}", {"capacity": {"min": 0, "max": 4}, "timeout": 1})
        colds, loop_colds, idles = [], [], []
        for i in range(args.repeats):
            wait_for(lambda: (c := cluster(sy)) and c["instances"] == 0 and c["status"] == "stopped")
            before = metric(sy, "autoscaler_cold_start_seconds_sum")
            t0 = time.monotonic()
            embed(sy, f"cold start {i}")
            colds.append(time.monotonic() - t0)
            wait_for(lambda: metric(sy, "autoscaler_cold_start_seconds_sum") > before, timeout=30)
            loop_colds.append(metric(sy, "autoscaler_cold_start_seconds_sum") - before)
            t_last = time.monotonic()
            wait_for(lambda: (c := cluster(sy)) and c["instances"] == 0)
            idles.append(time.monotonic() - t_last - timeout_s)
        # Scale-up reaction: one warm instance, then a burst.
        call(sy, "PATCH", f"/v1/clusters/{MODEL}", {"capacity": {"min": 1}})
        wait_for(lambda: (c := cluster(sy)) and c["instances"] == 1 and c["status"] in ("idle", "running"))
        reactions = []
        for i in range(args.repeats):
            wait_for(lambda: (c := cluster(sy)) and c["instances"] == 1 and c["load"] == 0)
            t0 = time.monotonic()
            with cf.ThreadPoolExecutor(args.burst) as pool:
                futs = [pool.submit(embed, sy, " ".join(["burst"] * 200) + str(k)) for k in range(args.burst * 8)]
                reacted = wait_for(lambda: (c := cluster(sy)) and c["capacity"]["desired"] > 1 and time.monotonic())
                reactions.append(reacted - t0)
                for f in futs:
                    f.result()
    rows = [
        ("cold start, request to answer (s)", colds),
        ("cold start, autoscaler: instance started → pulling (s)", loop_colds),
        ("scale-up reaction: burst sent → more instances wanted (s)", reactions),
        (f"idle shutdown: zero instances after the last answer, minus the {timeout_s:.1f} s timeout (s)", idles),
    ]
    lines = ["| measure | p50 | p95 | n |", "|---|---:|---:|---:|"]
    for name, vals in rows:
        lines.append(f"| {name} | {statistics.median(vals):.2f} | {pct(vals, 95):.2f} | {len(vals)} |")
    print("\n".join(lines))
    if args.no_append:
        return 0
    m = machine()
    section = [
        "", f"## {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC — commit {git_commit()} — autoscaler timings",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']}. Method: `loadtest/bench_autoscaler.py` — "
        f"whole stack, release build, autoscaler with the process backend (tick 1 s), MiniLM "
        f"(int8, 1 ONNX Runtime thread), {args.repeats} repeats, a timeout \"minute\" of "
        f"{args.idle_minute_ms} ms, bursts of {args.burst * 8} requests from {args.burst} threads. "
        "Cluster state read through `GET /v1/clusters/{model}` polled every 20 ms.",
        "",
        *lines,
    ]
    with open(RESULTS, "a") as f:
        f.write("\n".join(section) + "\n")
    print(f"\nappended to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
