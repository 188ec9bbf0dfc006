#!/usr/bin/env python3
"""What does Switchyard add to a request's latency?

Runs the open-loop `loadgen` against the mock OpenAI provider directly, and through the
whole stack (ingress -> JetStream -> translator -> the same mock), at a few fixed rates,
and prints/appends the difference. `just bench` runs it; see loadtest/RESULTS.md.

    python3 loadtest/bench.py [--rates 100,250,500,1000] [--duration 10] [--warmup 2]
                              [--repeats 3] [--mock-latency-ms 5] [--stream] [--no-build]
                              [--no-append]

With --stream-providers it measures streaming per provider grammar instead: for each of
openai, anthropic and gemini, SSE streams sent directly to the mock in that provider's
own wire format (`loadgen --provider ...`) against the same streams through Switchyard
(OpenAI SSE from the ingress, model `<openai|anthropic|google>/mock-model`), and reports
the added time to first token and added inter-chunk gap (p50/p99):

    python3 loadtest/bench.py --stream-providers [--providers openai,anthropic,gemini]
                              [--rates 100,250] [--mock-chunks 8] [--mock-chunk-delay-ms 5]
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
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "infra"))

import stack  # noqa: E402  (infra/stack.py: the one way the stack is started)

RESULTS = REPO / "loadtest" / "RESULTS.md"
METRICS = ("latency_p50_ms", "latency_p99_ms", "achieved_rps")
STREAM_METRICS = ("ttft_p50_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms",
                  "latency_p50_ms", "latency_p99_ms", "achieved_rps")
# --stream-providers: loadgen's grammar -> the ingress's model prefix for that provider.
PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}
# The target for streaming: added time to first token, p50.
TTFT_TARGET_MS = 1.0


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
                rate: int, args: argparse.Namespace, provider: str = "openai",
                stream: Optional[bool] = None) -> dict:
    cmd = pin.loadgen_prefix() + [
        str(loadgen), "--url", url, "--rate", str(rate), "--provider", provider,
        "--duration-secs", str(args.duration), "--warmup-secs", str(args.warmup),
        "--model", model, "--prompt", "hello from the benchmark", "--json",
    ]
    if args.stream if stream is None else stream:
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


def added(direct: dict, via: dict, key: str) -> Optional[float]:
    d, v = direct.get(key), via.get(key)
    return None if d is None or v is None else v - d


def stream_table(rows: list[dict]) -> list[str]:
    head = ("| provider | rate rps | TTFT p50 direct / via | added TTFT p50 | added TTFT p99 "
            "| gap p50 direct / via | added gap p50 | added gap p99 | added total p50 "
            f"| achieved rps direct / via | errors direct / via | added TTFT p50 ≤ {TTFT_TARGET_MS:g} ms |")
    out = [head, "|---|" + "---:|" * 10 + ":---:|"]
    for r in rows:
        d, v = r["direct"], r["via"]
        ttft = added(d, v, "ttft_p50_ms")
        meets = "-" if ttft is None else ("yes" if ttft <= TTFT_TARGET_MS else "no")
        out.append(
            f"| {r['provider']} | {r['rate']} "
            f"| {fmt(d['ttft_p50_ms'])} / {fmt(v['ttft_p50_ms'])} "
            f"| {fmt(ttft)} | {fmt(added(d, v, 'ttft_p99_ms'))} "
            f"| {fmt(d['gap_p50_ms'])} / {fmt(v['gap_p50_ms'])} "
            f"| {fmt(added(d, v, 'gap_p50_ms'))} | {fmt(added(d, v, 'gap_p99_ms'))} "
            f"| {fmt(added(d, v, 'latency_p50_ms'))} "
            f"| {fmt(d['achieved_rps'], 1)} / {fmt(v['achieved_rps'], 1)} "
            f"| {d['errors']} / {v['errors']} | {meets} |"
        )
    return out


def target_verdict(rows: list[dict]) -> str:
    judged = [r for r in rows if added(r["direct"], r["via"], "ttft_p50_ms") is not None]
    met = [r for r in judged if added(r["direct"], r["via"], "ttft_p50_ms") <= TTFT_TARGET_MS]
    worst = max((added(r["direct"], r["via"], "ttft_p50_ms") for r in judged), default=None)
    errors = sum(r["direct"]["errors"] + r["via"]["errors"] for r in rows)
    return (f"Target (the closed-models issue): streaming added TTFT p50 ≤ {TTFT_TARGET_MS:g} ms. "
            f"Met in {len(met)} of {len(judged)} provider/rate rows; worst added TTFT p50 "
            f"{fmt(worst)} ms; {errors} errors in all runs.")


def smoke_stream(sy, model: str) -> Optional[str]:
    """One streaming request through the stack for `model`. None when it works."""
    body = json.dumps({"model": model, "stream": True,
                       "messages": [{"role": "user", "content": "ping"}]}).encode()
    req = urllib.request.Request(
        f"{sy.api_base}/chat/completions", data=body, method="POST",
        headers={"Authorization": f"Bearer {sy.dev_api_key}", "provider-key": sy.mock_api_key,
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
    except urllib.error.HTTPError as e:
        return f"{model}: HTTP {e.code}: {e.read()[:300]!r}"
    except OSError as e:
        return f"{model}: {e}"
    return None if "data: [DONE]" in text else f"{model}: stream without [DONE]: {text[-300:]!r}"


def stream_providers(args: argparse.Namespace, loadgen: Path, bin_dir: Path, rates: list[int]) -> int:
    """--stream-providers: added TTFT and inter-chunk gap per provider grammar."""
    providers = [x.strip() for x in args.providers.split(",") if x.strip()]
    unknown = [x for x in providers if x not in PROVIDERS]
    if unknown:
        raise SystemExit(f"unknown provider(s) {unknown}: choose from {', '.join(PROVIDERS)}")
    chunks = args.mock_chunks if args.mock_chunks is not None else 8
    chunk_delay = args.mock_chunk_delay_ms if args.mock_chunk_delay_ms is not None else 5
    pin = Pinning(not args.no_pin)
    mock_key = f"sk-bench-{uuid.uuid4().hex}"
    started = dt.datetime.now(dt.timezone.utc)
    commit = git_commit()
    print(pin.describe(), flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as tmp:
        cfg = stack.StackConfig.ephemeral(
            Path(tmp), bin_dir=bin_dir, mock_api_key=mock_key,
            mock_args=["--latency-ms", str(args.mock_latency_ms), "--chunks", str(chunks),
                       "--chunk-delay-ms", str(chunk_delay)],
            rust_log="warn", cpus=pin.stack_cpus,
        )
        with stack.Stack(cfg) as sy:
            assert sy.mock_url is not None
            mock_root = sy.mock_url[: -len("/v1")]
            for provider in providers:
                problem = smoke_stream(sy, f"{PROVIDERS[provider]}/mock-model")
                if problem:
                    raise SystemExit(f"a stream through the stack failed, not benchmarking: {problem}")
            # The provider's own grammar, URL and key header, straight to the mock.
            direct_paths = {
                "openai": (f"{mock_root}/v1/chat/completions", [f"Authorization: Bearer {mock_key}"]),
                "anthropic": (f"{mock_root}/v1/messages", [f"x-api-key: {mock_key}"]),
                # loadgen adds /v1beta/models/mock-model:streamGenerateContent?alt=sse.
                "gemini": (mock_root, [f"x-goog-api-key: {mock_key}"]),
            }
            via_headers = [f"Authorization: Bearer {sy.dev_api_key}", f"provider-key: {mock_key}"]
            for provider in providers:
                direct_url, direct_headers = direct_paths[provider]
                paths = {
                    "direct": (provider, direct_url, direct_headers, "mock-model"),
                    "via": ("openai", f"{sy.api_base}/chat/completions", via_headers,
                            f"{PROVIDERS[provider]}/mock-model"),
                }
                for rate in rates:
                    runs: dict[str, list[dict]] = {"direct": [], "via": []}
                    for i in range(args.repeats):
                        # Alternate the order so drift hits both paths.
                        order = ["direct", "via"] if i % 2 == 0 else ["via", "direct"]
                        for name in order:
                            grammar, url, headers, model = paths[name]
                            res = run_loadgen(loadgen, pin, url, headers, model, rate, args,
                                              provider=grammar, stream=True)
                            runs[name].append(res)
                            print(f"  {provider:9} rate {rate:>5}  run {i + 1}/{args.repeats}  {name:6}  "
                                  f"ttft p50 {fmt(res['ttft_p50_ms'])} p99 {fmt(res['ttft_p99_ms'])} ms  "
                                  f"gap p50 {fmt(res['gap_p50_ms'])} p99 {fmt(res['gap_p99_ms'])} ms  "
                                  f"total p50 {fmt(res['latency_p50_ms'])} ms  "
                                  f"achieved {fmt(res['achieved_rps'], 1)} rps  errors {res['errors_total']} "
                                  f"{res['errors'] or ''}", flush=True)
                    row: dict = {"provider": provider, "rate": rate}
                    for name in ("direct", "via"):
                        row[name] = {k: median(runs[name], k) for k in STREAM_METRICS}
                        row[name]["errors"] = sum(r["errors_total"] for r in runs[name])
                    rows.append(row)

    lines = stream_table(rows)
    verdict = target_verdict(rows)
    print()
    print("\n".join(lines))
    print()
    print(verdict)
    if args.no_append:
        return 0

    m = machine()
    section = [
        "",
        f"## {started:%Y-%m-%d %H:%M} UTC — streaming per provider grammar, commit {commit}",
        "",
        f"- machine: {m['nproc']} CPUs, {m['cpu']}, {m['memory']}, Linux {m['kernel']}",
        f"- pinning: {pin.describe()}",
        f"- method: per provider, SSE streams *direct* to the mock in that provider's own "
        f"grammar (`loadgen --provider openai|anthropic|gemini --stream`: chat completions "
        f"until `[DONE]`; `/v1/messages` until `message_stop`; "
        f"`:streamGenerateContent?alt=sse` until the chunk with `finishReason`) against the "
        f"same streams *via* Switchyard (OpenAI SSE from the ingress, model "
        f"`<openai|anthropic|google>/mock-model`, ingress → JetStream → translator → the "
        f"same mock). TTFT = scheduled send → first event carrying text; gap = between "
        f"consecutive text events; total = to the end of the body. added = via − direct "
        f"of each median percentile",
        f"- load: streaming, providers {', '.join(providers)}, rates {', '.join(map(str, rates))} rps, "
        f"{args.duration:g} s measured after {args.warmup:g} s warm-up, {args.repeats} runs per "
        f"provider, rate and path (medians; errors summed)",
        f"- mock provider: {args.mock_latency_ms} ms to the first chunk, {chunks} text chunks "
        f"{chunk_delay} ms apart; release build; nats-server "
        f"{sh([str(stack.find_nats_server()), '--version'])} with sync_interval: always",
        "",
        *lines,
        "",
        verdict,
    ]
    with open(RESULTS, "a") as f:
        f.write("\n".join(section) + "\n")
    print(f"\nappended to {RESULTS.relative_to(REPO)}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", help="offered rates, rps, comma-separated "
                   "(default 100,250,500,1000; with --stream-providers 100,250)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per run (not measured)")
    p.add_argument("--repeats", type=int, default=3, help="runs per rate and path; medians are reported")
    p.add_argument("--mock-latency-ms", type=int, default=5, help="the mock provider's fixed latency")
    p.add_argument("--stream", action="store_true", help="streaming requests (SSE) instead of plain")
    p.add_argument("--stream-providers", action="store_true",
                   help="streaming per provider grammar: added TTFT and inter-chunk gap for "
                        "openai, anthropic and gemini (direct in its own grammar vs via the ingress)")
    p.add_argument("--providers", default=",".join(PROVIDERS),
                   help="with --stream-providers: which grammars, comma-separated")
    p.add_argument("--mock-chunks", type=int,
                   help="text chunks per streamed reply (default: the mock's 4; 8 with --stream-providers)")
    p.add_argument("--mock-chunk-delay-ms", type=int,
                   help="delay between streamed chunks (default: the mock's 0; 5 with --stream-providers)")
    p.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    p.add_argument("--bin-dir", help="binaries to use (default: $CARGO_TARGET_DIR/release; implies --no-build)")
    p.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    p.add_argument("--no-append", action="store_true", help=f"do not append to {RESULTS.relative_to(REPO)}")
    args = p.parse_args()
    default_rates = "100,250" if args.stream_providers else "100,250,500,1000"
    rates = [int(r) for r in (args.rates or default_rates).split(",") if r.strip()]

    if not args.no_build and not args.bin_dir:
        print("building release binaries: cargo build --release --workspace --bins", flush=True)
        subprocess.run(["cargo", "build", "--release", "--workspace", "--bins"], check=True, cwd=REPO)
    bin_dir = Path(args.bin_dir) if args.bin_dir else release_bin_dir()
    loadgen = bin_dir / "loadgen"
    if not loadgen.exists():
        raise SystemExit(f"{loadgen} not found (cargo build --release --workspace --bins)")
    if args.stream_providers:
        return stream_providers(args, loadgen, bin_dir, rates)

    mock_args = ["--latency-ms", str(args.mock_latency_ms)]
    if args.mock_chunks is not None:
        mock_args += ["--chunks", str(args.mock_chunks)]
    if args.mock_chunk_delay_ms is not None:
        mock_args += ["--chunk-delay-ms", str(args.mock_chunk_delay_ms)]
    pin = Pinning(not args.no_pin)
    mock_key = f"sk-bench-{uuid.uuid4().hex}"
    started = dt.datetime.now(dt.timezone.utc)
    commit = git_commit()
    print(pin.describe(), flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as tmp:
        cfg = stack.StackConfig.ephemeral(
            Path(tmp), bin_dir=bin_dir, mock_api_key=mock_key,
            mock_args=mock_args,
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
