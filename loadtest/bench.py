#!/usr/bin/env python3
"""What does Switchyard add to a request's latency?

Runs the open-loop `loadgen` against the mock OpenAI provider directly, and through the
whole stack (ingress -> JetStream -> translator -> the same mock), at a few fixed rates,
and prints/appends the difference. `just bench` runs it; see loadtest/RESULTS.md.

    python3 loadtest/bench.py [--rates 100,250,500,1000] [--duration 10] [--warmup 2]
                              [--repeats 3] [--mock-latency-ms 5] [--stream] [--no-build]
                              [--no-append]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "infra"))

import stack  # noqa: E402  (infra/stack.py: the one way the stack is started)

RESULTS = REPO / "loadtest" / "RESULTS.md"
METRICS = ("latency_p50_ms", "latency_p99_ms", "achieved_rps")


def sh(cmd: list[str], **kw) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, **kw).stdout.strip()


def release_bin_dir() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR") or str(REPO / "target")
    return Path(target) / "release"


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": str(os.cpu_count()), "cpu": model, "memory": mem,
            "kernel": platform.release(), "python": platform.python_version()}


def git_commit() -> str:
    try:
        commit = sh(["git", "rev-parse", "--short", "HEAD"])
        dirty = sh(["git", "status", "--porcelain", "--untracked-files=no"])
        return commit + ("-dirty" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


class Pinning:
    """Stack on one CPU, loadgen on another, so the load generator does not steal the
    stack's cycles (and says so). No pinning on a single-CPU machine."""

    def __init__(self, enabled: bool):
        cpus = sorted(os.sched_getaffinity(0))
        self.taskset = shutil.which("taskset")
        self.active = enabled and len(cpus) >= 2
        self.stack_cpus = {cpus[0]} if self.active else None
        self.loadgen_cpu = cpus[1] if self.active else None

    def loadgen_prefix(self) -> list[str]:
        if not self.active:
            return []
        # taskset when present; else the same via sched_setaffinity in the child.
        return ["taskset", "-c", str(self.loadgen_cpu)] if self.taskset else []

    def loadgen_preexec(self):
        if self.active and not self.taskset:
            cpu = self.loadgen_cpu
            return lambda: os.sched_setaffinity(0, {cpu})
        return None

    def describe(self) -> str:
        if not self.active:
            return "no CPU pinning"
        how = "taskset" if self.taskset else "sched_setaffinity"
        return (f"stack (nats-server, ingress, translator, mock provider) pinned to CPU "
                f"{min(self.stack_cpus)}; loadgen (1 thread) pinned to CPU {self.loadgen_cpu} ({how})")


def run_loadgen(loadgen: Path, pin: Pinning, url: str, headers: list[str], model: str,
                rate: int, args: argparse.Namespace) -> dict:
    cmd = pin.loadgen_prefix() + [
        str(loadgen), "--url", url, "--rate", str(rate),
        "--duration-secs", str(args.duration), "--warmup-secs", str(args.warmup),
        "--model", model, "--prompt", "hello from the benchmark", "--json",
    ]
    if args.stream:
        cmd.append("--stream")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADGEN_")}
    # Headers by env (one per line), not argv: they hold keys, and argv shows in `ps`.
    env["LOADGEN_HEADERS"] = "\n".join(headers)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env,
                         preexec_fn=pin.loadgen_preexec(),
                         timeout=args.duration + args.warmup + 120)
    if res.returncode != 0:
        raise SystemExit(f"loadgen failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def median(runs: list[dict], key: str) -> Optional[float]:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v: Optional[float], digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(rows: list[dict]) -> list[str]:
    head = ("| rate rps | direct p50 | direct p99 | via p50 | via p99 | added p50 | added p99 "
            "| achieved rps direct / via | errors direct / via |")
    out = [head, "|" + "---:|" * 9]
    for r in rows:
        d, v = r["direct"], r["via"]
        add50 = None if None in (d["latency_p50_ms"], v["latency_p50_ms"]) else v["latency_p50_ms"] - d["latency_p50_ms"]
        add99 = None if None in (d["latency_p99_ms"], v["latency_p99_ms"]) else v["latency_p99_ms"] - d["latency_p99_ms"]
        out.append(
            f"| {r['rate']} | {fmt(d['latency_p50_ms'])} | {fmt(d['latency_p99_ms'])} "
            f"| {fmt(v['latency_p50_ms'])} | {fmt(v['latency_p99_ms'])} "
            f"| {fmt(add50)} | {fmt(add99)} "
            f"| {fmt(d['achieved_rps'], 1)} / {fmt(v['achieved_rps'], 1)} "
            f"| {d['errors']} / {v['errors']} |"
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="100,250,500,1000", help="offered rates, rps, comma-separated")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per run (not measured)")
    p.add_argument("--repeats", type=int, default=3, help="runs per rate and path; medians are reported")
    p.add_argument("--mock-latency-ms", type=int, default=5, help="the mock provider's fixed latency")
    p.add_argument("--stream", action="store_true", help="streaming requests (SSE) instead of plain")
    p.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    p.add_argument("--bin-dir", help="binaries to use (default: $CARGO_TARGET_DIR/release; implies --no-build)")
    p.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    p.add_argument("--no-append", action="store_true", help=f"do not append to {RESULTS.relative_to(REPO)}")
    args = p.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r.strip()]

    if not args.no_build and not args.bin_dir:
        print("building release binaries: cargo build --release --workspace --bins", flush=True)
        subprocess.run(["cargo", "build", "--release", "--workspace", "--bins"], check=True, cwd=REPO)
    bin_dir = Path(args.bin_dir) if args.bin_dir else release_bin_dir()
    loadgen = bin_dir / "loadgen"
    if not loadgen.exists():
        raise SystemExit(f"{loadgen} not found (cargo build --release --workspace --bins)")

    pin = Pinning(not args.no_pin)
    mock_key = f"sk-bench-{uuid.uuid4().hex}"
    started = dt.datetime.now(dt.timezone.utc)
    commit = git_commit()
    print(pin.describe(), flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as tmp:
        cfg = stack.StackConfig.ephemeral(
            Path(tmp), bin_dir=bin_dir, mock_api_key=mock_key,
            mock_args=["--latency-ms", str(args.mock_latency_ms)],
            rust_log="warn", cpus=pin.stack_cpus,
        )
        with stack.Stack(cfg) as sy:
            assert sy.mock_url is not None
            problem = stack.smoke_test(sy)
            if problem:
                raise SystemExit(f"a request through the stack failed, not benchmarking: {problem}")
            direct = (f"{sy.mock_url}/chat/completions", [f"Authorization: Bearer {mock_key}"], "gpt-4o-mini")
            via = (f"{sy.api_base}/chat/completions",
                   [f"Authorization: Bearer {sy.dev_api_key}", f"provider-key: {mock_key}"],
                   "openai/gpt-4o-mini")
            for rate in rates:
                runs: dict[str, list[dict]] = {"direct": [], "via": []}
                for i in range(args.repeats):
                    # Alternate the order so drift (caches, the store growing) hits both paths.
                    order = [("direct", direct), ("via", via)]
                    if i % 2:
                        order.reverse()
                    for name, (url, headers, model) in order:
                        res = run_loadgen(loadgen, pin, url, headers, model, rate, args)
                        runs[name].append(res)
                        print(f"  rate {rate:>5}  run {i + 1}/{args.repeats}  {name:6}  "
                              f"p50 {fmt(res['latency_p50_ms'])} ms  p99 {fmt(res['latency_p99_ms'])} ms  "
                              f"achieved {fmt(res['achieved_rps'], 1)} rps  errors {res['errors_total']} "
                              f"{res['errors'] or ''}", flush=True)
                row = {"rate": rate}
                for name in ("direct", "via"):
                    row[name] = {k: median(runs[name], k) for k in METRICS}
                    row[name]["errors"] = sum(r["errors_total"] for r in runs[name])
                rows.append(row)

    lines = table(rows)
    print()
    print("\n".join(lines))
    if args.no_append:
        return 0

    m = machine()
    section = [
        "",
        f"## {started:%Y-%m-%d %H:%M} UTC — commit {commit}",
        "",
        f"- machine: {m['nproc']} CPUs, {m['cpu']}, {m['memory']}, Linux {m['kernel']}",
        f"- pinning: {pin.describe()}",
        f"- load: {'streaming' if args.stream else 'non-streaming'} chat completions, "
        f"rates {', '.join(map(str, rates))} rps, {args.duration:g} s measured after {args.warmup:g} s "
        f"warm-up, {args.repeats} runs per rate and path (medians; errors summed)",
        f"- mock provider latency {args.mock_latency_ms} ms; release build; nats-server "
        f"{sh([str(stack.find_nats_server()), '--version'])} with sync_interval: always",
        "",
        *lines,
    ]
    with open(RESULTS, "a") as f:
        f.write("\n".join(section) + "\n")
    print(f"\nappended to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
