#!/usr/bin/env python3
"""What does Switchyard add to a request's latency, and how far does it go?

Runs the open-loop `loadgen` against the mock OpenAI provider directly, and through the
whole stack (ingress -> JetStream -> translator -> the same mock), and prints/appends the
difference. `just bench` runs it; see the Method section of loadtest/RESULTS.md.

Scenario 1, gateway added latency (the default): a rising-rate search. The offered rate
steps up (--search-rates) with both paths at each step until the via path's p99 added
exceeds 10 ms, or a path stops keeping up (errors, or achieved < 95 % of offered); the
table then says the highest rate with p99 added <= 2 ms. --rates instead runs a fixed
list of rates, all of them (the older method).

Scenario 3, the reference peer: the LiteLLM proxy (loadtest/litellm/, its own venv made
by `bash loadtest/litellm/install.sh`) pointed at the same mock, in the same session and
pinned where the stack runs. Its saturation rate (the highest offered rate it sustains:
achieved >= 95 % of offered, no errors; --peer-rates stepping up from 25 rps) against
Switchyard's found the same way, the ratio, and the added p50/p99 of both at a rate both
sustain. On by default when the venv exists (--peer auto); --peer-only runs it alone.

    python3 loadtest/bench.py [--search-rates 250,500,...] [--peer auto|litellm|none]
                              [--peer-only] [--peer-rates 25,50,...] [--compare-rate N]
                              [--rates 100,250,500,1000] [--duration S] [--warmup S]
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
import collections
import dataclasses
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "infra"))

import stack  # noqa: E402  (infra/stack.py: the one way the stack is started)

RESULTS = REPO / "loadtest" / "RESULTS.md"
METRICS = ("latency_p50_ms", "latency_p99_ms", "achieved_rps", "send_lag_p99_ms", "cpu_us_per_req")
STREAM_METRICS = ("ttft_p50_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms",
                  "latency_p50_ms", "latency_p99_ms", "achieved_rps")
# --stream-providers: loadgen's grammar -> the ingress's model prefix for that provider.
PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}
# The target for streaming: added time to first token, p50.
TTFT_TARGET_MS = 1.0

# The gateway issue's targets and the search's rules (the benchmark reports against the
# targets; they are not tests).
ADDED_P99_TARGET_MS = 2.0     # p99 added ≤ 2 ms ...
RATE_TARGET_RPS = 3000        # ... at ≥ 3,000 rps offered
ADDED_P99_STOP_MS = 10.0      # the rising-rate search stops past this p99 added
SUSTAIN = 0.95                # a rate is sustained: achieved ≥ 95 % of offered, no errors
RATIO_TARGET = 50             # Switchyard's saturation rate ≥ 50× LiteLLM's
# Around where each side has saturated so far (Switchyard 2,000-3,500 rps, LiteLLM 50-100)
# both ladders step by 1.14-1.33x, so the saturation ratio resolves alike on both sides; the
# coarser ladders before (2,000 -> 3,000 and 50 -> 75) read 40x or 60x for the same machine
# depending on which rung each side just missed.
DEFAULT_SEARCH_RATES = "250,500,1000,1500,2000,2500,3000,3500,4000,5000,6000,8000,10000,12000"
DEFAULT_PEER_RATES = "25,30,40,50,60,75,100,125,150,200,250,300,400,600,800,1000,1500"

LITELLM_DIR = REPO / "loadtest" / "litellm"
LITELLM_VENV = REPO / ".tools" / "litellm-venv"
LITELLM_MODEL = "gpt-4o-mini"  # the model_name in loadtest/litellm/config.yaml
INSTALL_HINT = ("install it with `bash loadtest/litellm/install.sh` (its own venv, "
                ".tools/litellm-venv, ~750 MB; `just bench-peer` does it for you)")


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


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def nats_desc(cfg) -> str:
    """The nats-server and the JetStream settings of the config it ran (infra/nats/single.conf)."""
    version = sh([str(stack.find_nats_server()), "--version"])
    settings = {}
    try:
        for line in stack.SINGLE_CONF.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if ":" in line:
                k, v = line.split(":", 1)
                settings[k.strip()] = v.strip()
    except OSError:
        pass
    out = f"{version}, sync_interval: {settings.get('sync_interval', '?')}"
    if settings.get("cipher") and getattr(cfg, "nats_store_encryption", True):
        out += f", store encrypted ({settings['cipher']})"
    if getattr(cfg, "nats_auth", False):
        out += ", with users and permissions"
    return out


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

    def describe(self, peer: Optional[str] = None) -> str:
        if not self.active:
            return "no CPU pinning"
        how = "taskset" if self.taskset else "sched_setaffinity"
        with_peer = f", and the {peer} proxy" if peer else ""
        return (f"stack (nats-server, ingress, translator, mock provider{with_peer}) pinned to CPU "
                f"{min(self.stack_cpus)}; loadgen (1 thread) pinned to CPU {self.loadgen_cpu} ({how})")


def run_loadgen(loadgen: Path, pin: Pinning, url: str, headers: list[str], model: str,
                rate: int, args: argparse.Namespace, provider: str = "openai",
                stream: Optional[bool] = None) -> dict:
    cmd = pin.loadgen_prefix() + [
        str(loadgen), "--url", url, "--rate", str(rate), "--provider", provider,
        "--duration-secs", str(args.duration), "--warmup-secs", str(args.warmup),
        "--timeout-secs", str(args.request_timeout),
        "--model", model, "--prompt", "hello from the benchmark", "--json",
    ]
    if args.stream if stream is None else stream:
        cmd.append("--stream")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADGEN_")}
    # Headers by env (one per line), not argv: they hold keys, and argv shows in `ps`.
    env["LOADGEN_HEADERS"] = "\n".join(headers)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env,
                         preexec_fn=pin.loadgen_preexec(),
                         timeout=args.duration + args.warmup + args.request_timeout + 120)
    if res.returncode != 0:
        raise SystemExit(f"loadgen failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def median(runs: list[dict], key: str) -> Optional[float]:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v: Optional[float], digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def rps(rate: Optional[float]) -> str:
    return "-" if rate is None else f"{rate:,.0f}"


def added(direct: dict, via: dict, key: str) -> Optional[float]:
    d, v = direct.get(key), via.get(key)
    return None if d is None or v is None else v - d


# --------------------------------------------------------------------------- one rate


@dataclasses.dataclass
class Route:
    """One way to the mock: `direct`, `via` (Switchyard) or `litellm`."""
    name: str
    url: str
    headers: list[str]  # hold keys: only ever passed to loadgen by env
    model: str
    # The gateway's processes (with their descendants), whose CPU time per answered
    # request each run reports; none for the direct path.
    pids: list[int] = dataclasses.field(default_factory=list)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> Optional[float]:
    """User + system CPU seconds used so far by `pids` and every live descendant (the
    LiteLLM proxy's workers). None when a process is gone or /proc is unreadable."""
    parents: dict[int, list[int]] = collections.defaultdict(list)
    used: dict[int, float] = {}
    try:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                # Fields after the command (which may hold spaces) in ")": state ppid ...
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry.name)
            parents[int(fields[1])].append(pid)
            used[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return None
    if any(p not in used for p in pids):
        return None
    total, todo, seen = 0.0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += used.get(pid, 0.0)
        todo.extend(parents.get(pid, []))
    return total


@dataclasses.dataclass
class Ctx:
    args: argparse.Namespace
    loadgen: Path
    pin: Pinning


def summarize(runs: list[dict], rate: int) -> dict:
    """Medians over the runs of one route at one rate; errors summed. Sustained: median
    achieved ≥ 95 % of offered and no error in any run."""
    s: dict = {k: median(runs, k) for k in METRICS}
    s["errors"] = sum(r["errors_total"] for r in runs)
    kinds: collections.Counter = collections.Counter()
    for r in runs:
        kinds.update(r.get("errors") or {})
    s["error_kinds"] = dict(kinds)
    s["runs"] = len(runs)
    s["sustained"] = (s["errors"] == 0 and s["achieved_rps"] is not None
                      and s["achieved_rps"] >= SUSTAIN * rate)
    return s


def cannot_sustain(runs: list[dict], rate: int, repeats: int) -> bool:
    """True once the remaining runs cannot make this rate count as sustained: any error,
    or more than half the runs below 95 % of offered (the median is then below too)."""
    if any(r["errors_total"] for r in runs):
        return True
    low = sum(1 for r in runs if r["achieved_rps"] < SUSTAIN * rate)
    return low > repeats // 2


def run_step(ctx: Ctx, routes: list[Route], rate: int, stop_early: bool) -> dict:
    """`repeats` runs of every route at `rate`, rotating which goes first so drift (caches,
    the store growing, a neighbour's compile) hits each alike. With `stop_early`, stops as
    soon as some route cannot count as sustained here (the search ends at this rate)."""
    args = ctx.args
    runs: dict[str, list[dict]] = {r.name: [] for r in routes}
    cut: Optional[str] = None
    for i in range(args.repeats):
        k = i % len(routes)
        for route in routes[k:] + routes[:k]:
            before = cpu_seconds(route.pids) if route.pids else None
            res = run_loadgen(ctx.loadgen, ctx.pin, route.url, route.headers, route.model, rate, args)
            after = cpu_seconds(route.pids) if before is not None else None
            # Warm-up requests burn CPU too: divide by every request of the run.
            sent = rate * args.warmup + res["sent"]
            res["cpu_us_per_req"] = ((after - before) / sent * 1e6
                                     if before is not None and after is not None and sent else None)
            runs[route.name].append(res)
            cpu = res["cpu_us_per_req"]
            print(f"  {route.name:7} rate {rate:>6}  run {i + 1}/{args.repeats}  "
                  f"p50 {fmt(res['latency_p50_ms']):>8} ms  p99 {fmt(res['latency_p99_ms']):>8} ms  "
                  f"achieved {fmt(res['achieved_rps'], 1):>8} rps  errors {res['errors_total']} "
                  f"{res['errors'] or ''}  send lag p99 {fmt(res.get('send_lag_p99_ms'))} ms"
                  + (f"  gateway CPU {cpu:.0f} µs/req" if cpu is not None else ""), flush=True)
            if stop_early and cannot_sustain(runs[route.name], rate, args.repeats) \
                    and sum(map(len, runs.values())) < args.repeats * len(routes):
                cut = route.name
                break
        if cut:
            print(f"  {cut} cannot count as sustained at {rate} rps: the step's other runs are skipped",
                  flush=True)
            break
    row: dict = {"rate": rate}
    for r in routes:
        row[r.name] = summarize(runs[r.name], rate)
    return row


def why_not(s: dict, rate: int) -> str:
    errs = ", ".join(f"{k} {v}" for k, v in sorted(s["error_kinds"].items()))
    return (f"achieved {fmt(s['achieved_rps'], 1)} of {rate:,} rps offered, "
            f"{s['errors']} errors{f' ({errs})' if errs else ''}")


# --------------------------------------------------------------------------- searches


@dataclasses.dataclass
class Saturation:
    """The highest offered rate sustained before the first that was not, on a rising ladder.
    `rate` None: not even the first; `exact` False: a lower bound (the ladder ended, or the
    direct path — load generator and mock — gave out at the same rate)."""
    rate: Optional[int]
    exact: bool
    first: int
    why: str

    def text(self) -> str:
        if self.rate is None:
            return f"< {self.first:,} rps"
        return f"{'' if self.exact else '≥ '}{self.rate:,} rps"


def saturation_of(rows: list[dict], name: str, generator_limited: bool, why: str) -> Saturation:
    last = None
    for row in rows:
        if not row[name]["sustained"]:
            return Saturation(last, not generator_limited, rows[0]["rate"], why)
        last = row["rate"]
    return Saturation(last, False, rows[0]["rate"] if rows else 0, why)


def gateway_search(ctx: Ctx, direct: Route, via: Route, rates: list[int], search: bool,
                   to_saturation: bool) -> tuple[list[dict], str]:
    """Scenario 1: both paths at each rate. Rising-rate search (`search`): stop at the first
    rate where a path is not sustained or (unless `to_saturation`, which the peer
    comparison needs) the p99 added exceeds 10 ms. Else run every rate."""
    rows: list[dict] = []
    for rate in rates:
        row = run_step(ctx, [direct, via], rate, stop_early=search)
        rows.append(row)
        d, v = row["direct"], row["via"]
        a99 = added(d, v, "latency_p99_ms")
        print(f"  -> rate {rate}: added p50 {fmt(added(d, v, 'latency_p50_ms'))} ms, p99 {fmt(a99)} ms; "
              f"sustained direct {'yes' if d['sustained'] else 'no'}, via {'yes' if v['sustained'] else 'no'}",
              flush=True)
        if not search:
            continue
        if not d["sustained"]:
            return rows, (f"the direct path did not sustain {rate:,} rps ({why_not(d, rate)}): the load "
                          f"generator or the mock is the limit here, not the gateway")
        if not v["sustained"]:
            return rows, f"Switchyard did not sustain {rate:,} rps ({why_not(v, rate)})"
        if a99 is not None and a99 > ADDED_P99_STOP_MS and not to_saturation:
            return rows, f"p99 added {a99:.2f} ms > {ADDED_P99_STOP_MS:g} ms at {rate:,} rps"
    return rows, ("every rate was run" if not search else
                  f"the last rate of the ladder ({rates[-1]:,} rps) was sustained")


def gateway_verdict(rows: list[dict], stop: str, search: bool) -> list[str]:
    met = [r["rate"] for r in rows
           if (a := added(r["direct"], r["via"], "latency_p99_ms")) is not None and a <= ADDED_P99_TARGET_MS
           and r["via"]["sustained"]]
    over = [r["rate"] for r in rows
            if (a := added(r["direct"], r["via"], "latency_p99_ms")) is not None and a > ADDED_P99_STOP_MS]
    best = max(met, default=None)
    verdict = ("met" if best is not None and best >= RATE_TARGET_RPS else "not met")
    lines = [f"**Highest rate with p99 added ≤ {ADDED_P99_TARGET_MS:g} ms: "
             f"{'none of the rates run' if best is None else f'{best:,} rps'}** "
             f"(target ≥ {RATE_TARGET_RPS:,} rps offered: {verdict})."]
    lower_over = [r["rate"] for r in rows
                  if best is not None and r["rate"] < best
                  and (a := added(r["direct"], r["via"], "latency_p99_ms")) is not None
                  and a > ADDED_P99_TARGET_MS]
    if lower_over:
        lines.append(f"Not monotonic: p99 added was above {ADDED_P99_TARGET_MS:g} ms at the lower "
                     f"rate(s) {', '.join(f'{r:,}' for r in lower_over)} rps (noise, or a real bump).")
    lines.append(f"p99 added first above {ADDED_P99_STOP_MS:g} ms: "
                 + (f"{min(over):,} rps." if over else "not within the rates run."))
    lines.append(f"The search stopped: {stop}." if search else "Fixed rates: every one was run.")
    return lines


def ladder(ctx: Ctx, route: Route, rates: list[int]) -> tuple[list[dict], Optional[int]]:
    """One route alone at rising rates until it does not sustain one. Returns the rows and
    the rate it failed at (None: it sustained the whole ladder)."""
    rows: list[dict] = []
    for rate in rates:
        row = run_step(ctx, [route], rate, stop_early=True)
        rows.append(row)
        s = row[route.name]
        print(f"  -> {route.name} at {rate}: {'sustained' if s['sustained'] else 'NOT sustained: ' + why_not(s, rate)}",
              flush=True)
        if not s["sustained"]:
            return rows, rate
    return rows, None


# --------------------------------------------------------------------------- tables


def table(rows: list[dict], repeats: int) -> list[str]:
    head = ("| rate rps | direct p50 | direct p99 | via p50 | via p99 | added p50 | added p99 "
            "| achieved rps direct / via | errors direct / via | gateway CPU µs/req |")
    out = [head, "|" + "---:|" * 10]
    for r in rows:
        d, v = r["direct"], r["via"]
        runs = min(d["runs"], v["runs"])
        cut = f" ({runs} of {repeats} runs)" if runs < repeats else ""
        out.append(
            f"| {r['rate']}{cut} | {fmt(d['latency_p50_ms'])} | {fmt(d['latency_p99_ms'])} "
            f"| {fmt(v['latency_p50_ms'])} | {fmt(v['latency_p99_ms'])} "
            f"| {fmt(added(d, v, 'latency_p50_ms'))} | {fmt(added(d, v, 'latency_p99_ms'))} "
            f"| {fmt(d['achieved_rps'], 1)} / {fmt(v['achieved_rps'], 1)} "
            f"| {d['errors']} / {v['errors']} | {fmt(v['cpu_us_per_req'], 0)} |"
        )
    return out


def ladder_table(label: str, rows: list[dict], name: str, repeats: int) -> list[str]:
    out = [f"| {label}: rate rps | p50 | p99 | achieved rps | errors | sustained | gateway CPU µs/req |",
           "|---:|---:|---:|---:|---:|:---:|---:|"]
    for r in rows:
        s = r[name]
        cut = f" ({s['runs']} of {repeats} runs)" if s["runs"] < repeats else ""
        out.append(f"| {r['rate']}{cut} | {fmt(s['latency_p50_ms'])} | {fmt(s['latency_p99_ms'])} "
                   f"| {fmt(s['achieved_rps'], 1)} | {s['errors']} | {'yes' if s['sustained'] else 'no'} "
                   f"| {fmt(s['cpu_us_per_req'], 0)} |")
    return out


def compare_table(row: dict, labels: dict[str, str]) -> list[str]:
    d = row["direct"]
    out = [f"| at {row['rate']} rps | p50 | p99 | added p50 | added p99 | achieved rps | errors "
           f"| gateway CPU µs/req |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, label in labels.items():
        s = row[name]
        a50 = "–" if name == "direct" else fmt(added(d, s, "latency_p50_ms"))
        a99 = "–" if name == "direct" else fmt(added(d, s, "latency_p99_ms"))
        cpu = "–" if name == "direct" else fmt(s["cpu_us_per_req"], 0)
        out.append(f"| {label} | {fmt(s['latency_p50_ms'])} | {fmt(s['latency_p99_ms'])} | {a50} | {a99} "
                   f"| {fmt(s['achieved_rps'], 1)} | {s['errors']} | {cpu} |")
    return out


# --------------------------------------------------------------------------- LiteLLM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def litellm_version() -> str:
    return sh([str(LITELLM_VENV / "bin" / "python"), "-c",
               "import importlib.metadata as m; print(m.version('litellm'))"])


class LiteLLMProxy:
    """The LiteLLM proxy (loadtest/litellm/config.yaml) on a free loopback port, pointed
    at the stack's mock, pinned to the stack's CPUs. Keys reach it by environment only,
    and nothing of ours (DATABASE_URL, proxies, provider keys) leaks into it: no database,
    so no spend logs; LITELLM_LOG=ERROR, so no per-request log lines."""

    def __init__(self, run_dir: Path, mock_url: str, mock_key: str, cpus: Optional[set[int]],
                 workers: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.master_key = f"sk-bench-{secrets.token_hex(16)}"
        self.log = run_dir / "litellm.log"
        self.home = run_dir / "litellm-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.cmd = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(LITELLM_DIR / "config.yaml"),
                    "--host", "127.0.0.1", "--port", str(self.port), "--num_workers", str(workers)]
        self.env = {
            "PATH": f"{LITELLM_VENV / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "NO_PROXY": "*",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "MOCK_API_BASE": mock_url,
            "MOCK_API_KEY": mock_key,
            "LITELLM_MASTER_KEY": self.master_key,
        }
        self.cpus = cpus
        self.proc: Optional[subprocess.Popen] = None

    def log_tail(self) -> str:
        """The end of the proxy's log, with our keys blanked out should it have logged one."""
        try:
            text = self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""
        for secret in (self.master_key, self.env["MOCK_API_KEY"]):
            text = text.replace(secret, "***")
        return text

    def _setup(self) -> None:
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)
        try:  # PR_SET_PDEATHSIG: a killed benchmark does not leave the proxy behind
            import ctypes
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        except Exception:
            pass

    def __enter__(self) -> "LiteLLMProxy":
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, env=self.env, cwd=self.home,
                                         start_new_session=True, preexec_fn=self._setup)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.close()
                raise SystemExit(f"the LiteLLM proxy exited with {self.proc.returncode}; the end of its log:\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.url}/health/liveliness", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                tail = self.log_tail()
                raise SystemExit(f"the LiteLLM proxy was not ready after 120 s; the end of its log:\n{tail}")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # Its own session: the group is the proxy and any workers it forked, nothing else.
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def route(self) -> Route:
        return Route("litellm", f"{self.url}/chat/completions",
                     [f"Authorization: Bearer {self.master_key}"], LITELLM_MODEL,
                     [self.proc.pid] if self.proc else [])


def stack_pids(sy) -> list[int]:
    """The gateway's processes: every service of the stack but the mock provider."""
    return [svc.proc.pid for name, svc in sy.services.items()
            if name != stack.MOCK and svc.proc is not None]


def smoke_route(route: Route) -> Optional[str]:
    """One non-streaming request on `route`. None when it works."""
    body = json.dumps({"model": route.model, "messages": [{"role": "user", "content": "ping"}]}).encode()
    headers = {"Content-Type": "application/json"}
    for h in route.headers:
        k, v = h.split(":", 1)
        headers[k.strip()] = v.strip()
    req = urllib.request.Request(route.url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
    except urllib.error.HTTPError as e:
        return f"{route.name}: HTTP {e.code}: {e.read()[:300]!r}"
    except OSError as e:
        return f"{route.name}: {e}"
    return None if "echo: ping" in text else f"{route.name}: unexpected answer {text[:300]!r}"


def settle(sy, proxy: Optional[LiteLLMProxy] = None, limit: float = 60.0) -> None:
    """After an overloaded step, wait until the servers have worked off what they hold
    (the REQUESTS consumers' pending and unacked messages; the proxy's event loop answering
    a health check promptly), so the next phase does not pay for the last one's backlog."""
    time.sleep(2)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        busy = requests_backlog(sy)
        if proxy is not None and not busy:
            t0 = time.monotonic()
            try:
                urllib.request.urlopen(f"{proxy.url}/health/liveliness", timeout=5).read()
                busy = time.monotonic() - t0 > 0.05
            except OSError:
                busy = True
        if not busy:
            return
        time.sleep(1)
    print(f"  (still busy after {limit:.0f} s; going on)", flush=True)


def requests_backlog(sy) -> int:
    """Messages the REQUESTS stream's consumers still hold (0 when unknown)."""
    if not getattr(sy, "nats_monitor_url", None):
        return 0
    try:
        with urllib.request.urlopen(f"{sy.nats_monitor_url}/jsz?accounts=true&streams=true&consumers=true",
                                    timeout=2) as r:
            info = json.load(r)
    except (OSError, ValueError):
        return 0
    total = 0
    for acct in info.get("account_details") or []:
        for st in acct.get("stream_detail") or []:
            if st.get("name") != "REQUESTS":
                continue
            for c in st.get("consumer_detail") or []:
                total += int(c.get("num_pending") or 0) + int(c.get("num_ack_pending") or 0)
    return total


# --------------------------------------------------------------------------- --stream-providers


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
        f"{chunk_delay} ms apart; release build; {nats_desc(cfg)}",
        "",
        *lines,
        "",
        verdict,
    ]
    with open(RESULTS, "a") as f:
        f.write("\n".join(section) + "\n")
    print(f"\nappended to {RESULTS.relative_to(REPO)}")
    return 0


# --------------------------------------------------------------------------- gateway + peer


def parse_rates(text: str) -> list[int]:
    rates = [int(r) for r in text.split(",") if r.strip()]
    if not rates or any(r <= 0 for r in rates) or rates != sorted(set(rates)):
        raise SystemExit(f"rates must be positive and rising: {text!r}")
    return rates


def want_peer(args: argparse.Namespace) -> bool:
    """--peer auto: LiteLLM when its venv exists; --peer litellm: required."""
    have = (LITELLM_VENV / "bin" / "litellm").exists()
    if args.peer == "none":
        if args.peer_only:
            raise SystemExit("--peer-only with --peer none: nothing to do")
        return False
    if args.peer == "litellm" or args.peer_only:
        if not have:
            raise SystemExit(f"the LiteLLM peer is not installed: {INSTALL_HINT}")
        return True
    if not have:
        print(f"LiteLLM peer skipped: {LITELLM_VENV} not found; {INSTALL_HINT}", flush=True)
    return have


def compare_rate(args: argparse.Namespace, peer_rates: list[int], lsat: Saturation) -> int:
    """A rate both sustain, below the peer's knee: the peer ladder's step at or below half
    LiteLLM's saturation rate (its first step when there is none)."""
    if args.compare_rate:
        return args.compare_rate
    if lsat.rate is None:
        return peer_rates[0]
    return max((r for r in peer_rates if r <= lsat.rate / 2), default=peer_rates[0])


def gateway(args: argparse.Namespace, loadgen: Path, bin_dir: Path) -> int:
    search = not args.rates
    rates = parse_rates(args.rates or args.search_rates)
    peer = want_peer(args)
    peer_rates = parse_rates(args.peer_rates)
    mock_args = ["--latency-ms", str(args.mock_latency_ms)]
    if args.mock_chunks is not None:
        mock_args += ["--chunks", str(args.mock_chunks)]
    if args.mock_chunk_delay_ms is not None:
        mock_args += ["--chunk-delay-ms", str(args.mock_chunk_delay_ms)]
    if peer and args.stream:
        raise SystemExit("the peer comparison is non-streaming; drop --stream or use --peer none")
    pin = Pinning(not args.no_pin)
    ctx = Ctx(args, loadgen, pin)
    mock_key = f"sk-bench-{uuid.uuid4().hex}"
    started = dt.datetime.now(dt.timezone.utc)
    commit = git_commit()
    load_start = loadavg()
    version = litellm_version() if peer else None
    peer_name = f"LiteLLM {version}" if peer else None
    print(pin.describe(peer_name), flush=True)
    print(f"load average at start: {load_start}", flush=True)

    rows: list[dict] = []
    stop = ""
    sat: Optional[Saturation] = None
    peer_out: dict = {}
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
            direct = Route("direct", f"{sy.mock_url}/chat/completions",
                           [f"Authorization: Bearer {mock_key}"], "gpt-4o-mini")
            via = Route("via", f"{sy.api_base}/chat/completions",
                        [f"Authorization: Bearer {sy.dev_api_key}", f"provider-key: {mock_key}"],
                        "openai/gpt-4o-mini", stack_pids(sy))

            if not args.peer_only:
                what = "rising-rate search" if search else "fixed rates"
                print(f"\nScenario 1, gateway added latency ({what}): {', '.join(map(str, rates))} rps", flush=True)
                rows, stop = gateway_search(ctx, direct, via, rates, search, to_saturation=peer)
                generator = any(not r["direct"]["sustained"] for r in rows)
                sat = saturation_of(rows, "via", generator, stop)
                print("\n" + "\n".join(table(rows, args.repeats)) + "\n\n"
                      + "\n".join(gateway_verdict(rows, stop, search)), flush=True)
            if peer:
                if args.peer_only:
                    # Switchyard's saturation the way LiteLLM's is found: the via path alone.
                    print(f"\nSwitchyard alone at rising rates: {', '.join(map(str, rates))} rps", flush=True)
                    vrows, failed = ladder(ctx, via, rates)
                    generator = False
                    if failed is not None:
                        # Was it the gateway, or the load generator and the mock?
                        settle(sy)
                        print(f"  is it the gateway? the direct path at {failed} rps:", flush=True)
                        check = run_step(ctx, [direct], failed, stop_early=True)["direct"]
                        generator = not check["sustained"]
                    why = ("the ladder ended" if failed is None else
                           f"at {failed:,} rps: {why_not(vrows[-1]['via'], failed)}"
                           + ("; the direct path failed there too (load generator or mock limit)" if generator else ""))
                    sat = saturation_of(vrows, "via", generator, why)
                    peer_out["sy_rows"] = vrows
                settle(sy)
                print(f"\nScenario 3, reference peer: {peer_name} at rising rates: "
                      f"{', '.join(map(str, peer_rates))} rps", flush=True)
                with LiteLLMProxy(Path(tmp), sy.mock_url, mock_key, pin.stack_cpus, args.peer_workers) as proxy:
                    litellm = proxy.route()
                    problem = smoke_route(litellm)
                    if problem:
                        log = proxy.log_tail()
                        raise SystemExit(f"a request through LiteLLM failed, not benchmarking: {problem}; "
                                         f"the end of its log:\n{log}")
                    lrows, lfailed = ladder(ctx, litellm, peer_rates)
                    lwhy = ("the ladder ended" if lfailed is None else
                            f"at {lfailed:,} rps: {why_not(lrows[-1]['litellm'], lfailed)}")
                    lsat = saturation_of(lrows, "litellm", False, lwhy)
                    settle(sy, proxy)
                    crate = compare_rate(args, peer_rates, lsat)
                    print(f"\nAll three paths at {crate} rps:", flush=True)
                    comp = run_step(ctx, [direct, via, litellm], crate, stop_early=False)
                peer_out.update(lrows=lrows, lsat=lsat, comp=comp)
    load_end = loadavg()

    m = machine()

    def common(peer_label: Optional[str]) -> list[str]:
        return [
            f"- machine: {m['nproc']} CPUs, {m['cpu']}, {m['memory']}, Linux {m['kernel']}; "
            f"load average {load_start} at the start of the session, {load_end} at its end",
            f"- pinning: {pin.describe(peer_label)}",
            f"- mock provider latency {args.mock_latency_ms} ms; release build; {nats_desc(cfg)}",
            f"- each run: {args.warmup:g} s warm-up, {args.duration:g} s measured, request timeout "
            f"{args.request_timeout:g} s; {args.repeats} run{'s' if args.repeats > 1 else ''} per "
            f"rate and path, rotating which path goes first (medians; errors summed)",
            "- gateway CPU µs/req: user + system CPU time of the gateway's processes (Switchyard: "
            "nats-server, ingress, translator, batch router; LiteLLM: the proxy and its workers; "
            "never the mock), from /proc over each run, ÷ the requests of the run (warm-up included)",
        ]

    sections: list[list[str]] = []
    if not args.peer_only:
        lines = table(rows, args.repeats)
        verdict = gateway_verdict(rows, stop, search)
        how = (f"rising-rate search over {', '.join(map(str, rates))} rps: stops at the first rate "
               f"where a path is not sustained (errors, or achieved < {SUSTAIN:.0%} of offered)"
               + ("" if peer else f" or p99 added > {ADDED_P99_STOP_MS:g} ms")
               + (" (continued past 10 ms to find the saturation rate for the peer comparison)" if peer else "")
               if search else f"fixed rates {', '.join(map(str, rates))} rps, all run")
        sections.append([
            "",
            f"## {started:%Y-%m-%d %H:%M} UTC — gateway added latency, commit {commit}",
            "",
            *common(None),
            f"- load: {'streaming' if args.stream else 'non-streaming'} chat completions, {how}",
            "",
            *lines,
            "",
            *verdict,
        ])
    if peer:
        lsat, comp = peer_out["lsat"], peer_out["comp"]
        assert sat is not None
        ratio = ratio_text(sat, lsat)
        llines = ladder_table(f"LiteLLM {version}", peer_out["lrows"], "litellm", args.repeats)
        slines = (ladder_table("Switchyard", peer_out["sy_rows"], "via", args.repeats)
                  if "sy_rows" in peer_out else [])
        clines = compare_table(comp, {"direct": "mock directly", "via": "Switchyard",
                                      "litellm": f"LiteLLM {version}"})
        summary = [
            f"**Saturation (highest offered rate with achieved ≥ {SUSTAIN:.0%} and no errors): "
            f"Switchyard {sat.text()}, LiteLLM {lsat.text()}; ratio {ratio}** "
            f"(target ≥ {RATIO_TARGET}×: {ratio_verdict(sat, lsat)}).",
            f"Switchyard's search stopped: {sat.why}. LiteLLM's: {lsat.why}.",
            f"At {comp['rate']} rps, which both sustain: added p50/p99 "
            f"Switchyard {fmt(added(comp['direct'], comp['via'], 'latency_p50_ms'))} / "
            f"{fmt(added(comp['direct'], comp['via'], 'latency_p99_ms'))} ms, "
            f"LiteLLM {fmt(added(comp['direct'], comp['litellm'], 'latency_p50_ms'))} / "
            f"{fmt(added(comp['direct'], comp['litellm'], 'latency_p99_ms'))} ms.",
        ]
        print("\n" + "\n".join(llines) + ("\n\n" + "\n".join(slines) if slines else "")
              + "\n\n" + "\n".join(clines) + "\n\n" + "\n".join(summary))
        sy_how = ("the scenario 1 search above (both paths per rate)" if not args.peer_only else
                  f"the via path alone over {', '.join(map(str, rates))} rps, and the direct path "
                  f"at the rate where it stopped")
        sections.append([
            "",
            f"## {started:%Y-%m-%d %H:%M} UTC — reference peer: LiteLLM {version}, commit {commit}",
            "",
            *common(peer_name),
            f"- peer: LiteLLM proxy {version} (`loadtest/litellm/`: litellm[proxy] from PyPI in "
            f".tools/litellm-venv, uvicorn, {args.peer_workers} worker process{'es' if args.peer_workers > 1 else ''}, no database, "
            f"LITELLM_LOCAL_MODEL_COST_MAP=True, LITELLM_LOG=ERROR, message logging off), "
            f"pointed at the same mock with the same key, `Authorization: Bearer <master key>`",
            f"- saturation: rising rates until one is not sustained; LiteLLM over "
            f"{', '.join(map(str, peer_rates))} rps, Switchyard by {sy_how}",
            f"- added latency of both at {comp['rate']} rps ("
            + ("chosen with --compare-rate" if args.compare_rate else
               "the peer ladder's step at or below half LiteLLM's saturation rate")
            + "), the three paths interleaved",
            "",
            *llines,
            *([""] + slines if slines else []),
            "",
            *clines,
            "",
            *summary,
        ])
    if args.no_append:
        return 0
    with open(RESULTS, "a") as f:
        for s in sections:
            f.write("\n".join(s) + "\n")
    print(f"\nappended to {RESULTS.relative_to(REPO)}")
    return 0


def ratio_text(sat: Saturation, lsat: Saturation) -> str:
    if sat.rate is None:
        return "– (Switchyard sustained none of its rates)"
    if lsat.rate is None:
        # LiteLLM below its first step: the ratio is above this.
        return f"> {sat.rate / lsat.first:,.0f}×"
    return f"{'' if sat.exact else '≥ '}{sat.rate / lsat.rate:,.1f}×"


def ratio_verdict(sat: Saturation, lsat: Saturation) -> str:
    if sat.rate is None:
        return "not met"
    low = sat.rate / (lsat.rate if lsat.rate is not None else lsat.first)
    if low >= RATIO_TARGET:
        return "met"
    if sat.exact and lsat.rate is not None:
        return "not met"
    return "not shown (a bound, not a measurement: widen the ladder)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--search-rates", default=DEFAULT_SEARCH_RATES,
                   help="scenario 1's rising-rate ladder, rps (default %(default)s)")
    p.add_argument("--rates", help="fixed offered rates instead of the search, rps, comma-separated, "
                   "all run (with --stream-providers default 100,250)")
    p.add_argument("--peer", choices=("auto", "litellm", "none"), default="auto",
                   help="the reference peer: auto = LiteLLM when .tools/litellm-venv exists (default)")
    p.add_argument("--peer-only", action="store_true",
                   help="only the peer comparison (Switchyard's and LiteLLM's saturation rates, ratio, "
                        "added latency at a rate both sustain)")
    p.add_argument("--peer-rates", default=DEFAULT_PEER_RATES,
                   help="LiteLLM's rising-rate ladder, rps (default %(default)s)")
    p.add_argument("--peer-workers", type=int, default=1,
                   help="LiteLLM proxy worker processes (default 1: it shares one CPU with the stack)")
    p.add_argument("--compare-rate", type=int,
                   help="the rate for the three-path latency comparison (default: the peer ladder's "
                        "step at or below half LiteLLM's saturation rate)")
    p.add_argument("--duration", type=float,
                   help="measured seconds per run (default 5; 10 with --rates or --stream-providers)")
    p.add_argument("--warmup", type=float,
                   help="warm-up seconds per run, not measured (default 1; 2 with --rates or --stream-providers)")
    p.add_argument("--repeats", type=int, default=3, help="runs per rate and path; medians are reported")
    p.add_argument("--request-timeout", type=float, default=10.0,
                   help="loadgen's per-request limit, s; a request over it is an error (default 10)")
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
    fixed = bool(args.rates) or args.stream_providers
    if args.duration is None:
        args.duration = 10.0 if fixed else 5.0
    if args.warmup is None:
        args.warmup = 2.0 if fixed else 1.0
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")

    if not args.no_build and not args.bin_dir:
        print("building release binaries: cargo build --release --workspace --bins", flush=True)
        subprocess.run(["cargo", "build", "--release", "--workspace", "--bins"], check=True, cwd=REPO)
    bin_dir = Path(args.bin_dir) if args.bin_dir else release_bin_dir()
    loadgen = bin_dir / "loadgen"
    if not loadgen.exists():
        raise SystemExit(f"{loadgen} not found (cargo build --release --workspace --bins)")
    if args.stream_providers:
        rates = [int(r) for r in (args.rates or "100,250").split(",") if r.strip()]
        return stream_providers(args, loadgen, bin_dir, rates)
    return gateway(args, loadgen, bin_dir)


if __name__ == "__main__":
    sys.exit(main())
