#!/usr/bin/env python3
"""The open-model benchmark: Switchyard's inference engines against Python onnxruntime.

Runs `inference-bench` (services/inference/src/bin/inference-bench.rs: the real encoder
and decoder, in-process) and a plain Python onnxruntime baseline on the same model
files, the same token ids and the same thread count, pinned to the same CPUs, one
after the other, alternating which goes first; prints a table of medians and appends it
to loadtest/RESULTS.md. `just bench-inference` runs it; loadtest/README.md has the method.

    .tools/venv/bin/python loadtest/bench_inference.py [--threads 1] [--repeats 3]
        [--sentences 256] [--passes 2] [--batches 1,8,32] [--clients 1,8,32]
        [--duration 10] [--warmup 2] [--max-tokens 128] [--streams 4]
        [--skip-embed] [--skip-generate] [--no-python-generate]
        [--llama-bench PATH --gguf PATH] [--no-build | --bin PATH] [--no-pin]
        [--label TEXT] [--json-out PATH] [--no-append]

Embeddings (all-MiniLM-L6-v2). Rust: the encoder as the worker runs it (dynamic
batching with the catalog's max_batch/max_delay, length-sorted runs), from text
(tokenization included). Python: the same token ids (dumped by `inference-bench corpus`),
no tokenization, mean pooling + L2 norm in numpy:
  - batch B: the corpus in its original order in requests of B texts, each padded to
    its longest text, one request at a time (a plain batch server, no length sorting);
  - C concurrent clients: one server thread that runs one request at a time (batch 1,
    no batching), C client threads in a closed loop, like the Rust clients.
Generation (SmolLM2-135M-Instruct): Rust single stream and N concurrent streams (greedy,
fixed prompts, tokens actually generated); Python: the same prompt ids through a greedy
KV-cache loop on the same ONNX graph (single stream), as a same-runtime reference; and,
when --llama-bench and --gguf are given, llama.cpp's llama-bench on a GGUF.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "loadtest" / "RESULTS.md"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"


# ---------------------------------------------------------------------------------
# Helpers shared with loadtest/bench.py's conventions

def sh(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout.strip()


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
    import platform
    return {"nproc": str(os.cpu_count()), "cpu": model, "memory": mem,
            "kernel": platform.release(), "python": platform.python_version()}


def git_commit() -> str:
    try:
        commit = sh(["git", "rev-parse", "--short", "HEAD"])
        dirty = sh(["git", "status", "--porcelain", "--untracked-files=no"])
        return commit + ("-dirty" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def median(vals: list) -> Optional[float]:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v: Optional[float], digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


class Pinning:
    """Every measured process (the Rust bench, the Python baseline, llama-bench) runs on
    the same CPUs — as many as ONNX Runtime threads, the highest-numbered ones — and
    they run one after the other, never at once."""

    def __init__(self, enabled: bool, threads: int):
        cpus = sorted(os.sched_getaffinity(0))
        want = max(threads, 1)
        self.taskset = shutil.which("taskset")
        self.active = enabled and len(cpus) >= want
        self.cpus = cpus[-want:] if self.active else []

    def prefix(self) -> list[str]:
        if not self.active or not self.taskset:
            return []
        return ["taskset", "-c", ",".join(map(str, self.cpus))]

    def preexec(self):
        if self.active and not self.taskset:
            cpus = set(self.cpus)
            return lambda: os.sched_setaffinity(0, cpus)
        return None

    def describe(self) -> str:
        if not self.active:
            return "no CPU pinning"
        how = "taskset" if self.taskset else "sched_setaffinity"
        return (f"each measured process pinned to CPU {','.join(map(str, self.cpus))} ({how}); "
                f"Rust, Python and llama.cpp runs one after the other, never at once")


def run_json(cmd: list[str], pin: Pinning, timeout: float, stdin: Optional[str] = None) -> dict:
    res = subprocess.run(pin.prefix() + cmd, capture_output=True, text=True, cwd=REPO,
                         preexec_fn=pin.preexec(), timeout=timeout, input=stdin)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} … failed ({res.returncode}):\n{res.stderr.strip()[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------
# The Python baseline (runs as a child process: `--baseline embed|generate --spec F`)

def ort_session(path: str, threads: int, opt_level: str):
    import onnxruntime as ort
    sys.path.insert(0, str(REPO / "infra" / "models"))
    from convert_smollm2 import session_options  # registers the custom-op library beside SmolLM2
    opts = session_options(Path(path), threads)
    opts.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "layout": ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT,
    }[opt_level]
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def latency_json(lat_ms: list[float]) -> dict:
    import numpy as np
    if not lat_ms:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    a = np.asarray(lat_ms)
    q = lambda p: float(np.percentile(a, p, method="higher"))  # noqa: E731
    return {"p50_ms": q(50), "p90_ms": q(90), "p99_ms": q(99), "max_ms": float(a.max()),
            "mean_ms": float(a.mean())}


def baseline_embed(spec: dict) -> dict:
    import numpy as np
    corpus = json.loads(Path(spec["corpus"]).read_text())
    ids, masks, types = corpus["input_ids"], corpus["attention_mask"], corpus["token_type_ids"]
    n = len(ids)
    sess = ort_session(spec["model"], spec["threads"], spec["opt_level"])

    def embed(rows: list[int], sess=sess) -> np.ndarray:
        """A plain Python server's work for one request of token ids: pad to the
        longest, run, mean-pool over the mask, L2-normalise."""
        longest = max(len(ids[i]) for i in rows)
        feeds = {k: np.zeros((len(rows), longest), dtype=np.int64)
                 for k in ("input_ids", "attention_mask", "token_type_ids")}
        for r, i in enumerate(rows):
            feeds["input_ids"][r, :len(ids[i])] = ids[i]
            feeds["attention_mask"][r, :len(masks[i])] = masks[i]
            feeds["token_type_ids"][r, :len(types[i])] = types[i]
        (hidden,) = sess.run(["last_hidden_state"], feeds)
        mask = feeds["attention_mask"].astype(np.float32)[:, :, None]
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    out: dict = {"mode": "embed", "fixed": [], "concurrent": []}
    vectors = None
    for batch in spec["batches"]:
        groups = [list(range(s, min(s + batch, n))) for s in range(0, n, batch)]
        embed(groups[0])  # warm-up, as the Rust side does
        lat = []
        started = time.perf_counter()
        for p in range(spec["passes"]):
            for g in groups:
                t = time.perf_counter()
                v = embed(g)
                lat.append((time.perf_counter() - t) * 1000)
                if p == 0 and batch == max(spec["batches"]):
                    vectors = v if vectors is None else np.concatenate([vectors, v])
        seconds = time.perf_counter() - started
        sentences = n * spec["passes"]
        out["fixed"].append({"batch": batch, "requests": len(groups) * spec["passes"],
                             "sentences": sentences, "seconds": seconds,
                             "sentences_per_s": sentences / seconds, "latency": latency_json(lat)})
    if vectors is not None and corpus.get("vectors"):
        rust = np.asarray(corpus["vectors"], dtype=np.float32)
        out["parity_max_abs_diff"] = float(np.abs(rust - vectors).max())

    # Concurrent load: `servers` threads take requests one at a time from one queue,
    # each with its own session of threads / servers intra-op threads (1: the plain
    # server; more: Python doing what `--encoder-runners` does, without batching).
    for servers in spec.get("servers", [1]):
        sessions = [sess] if servers == 1 else [
            ort_session(spec["model"], max(1, spec["threads"] // servers), spec["opt_level"])
            for _ in range(servers)]
        key = "concurrent" if servers == 1 else f"concurrent_{servers}_servers"
        out[key] = [concurrent_load(embed, sessions, clients, n, spec) for clients in spec["clients"]]
    return out


def concurrent_load(embed, sessions: list, clients: int, n: int, spec: dict) -> dict:
    """`clients` closed-loop client threads (client c sends texts c, c+C, …) against
    one server thread per session, for spec["duration"] s after spec["warmup"] s."""
    jobs: queue.Queue = queue.Queue()

    def server(sess):
        while True:
            item = jobs.get()
            if item is None:
                return
            row, done = item
            embed([row], sess)
            done.set()

    start = time.perf_counter()
    measure_from = start + spec["warmup"]
    end = measure_from + spec["duration"]
    results: list[tuple[list[float], int]] = [([], 0)] * clients

    def client(c: int):
        lat, count, k = [], 0, c
        while time.perf_counter() < end:
            done = threading.Event()
            sent = time.perf_counter()
            jobs.put((k % n, done))
            k += clients
            done.wait()
            finished = time.perf_counter()
            if measure_from <= finished <= end:
                lat.append((finished - sent) * 1000)
                count += 1
        results[c] = (lat, count)

    srvs = [threading.Thread(target=server, args=(s,), daemon=True) for s in sessions]
    for t in srvs:
        t.start()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in srvs:
        jobs.put(None)
    for t in srvs:
        t.join()
    lat = [x for r in results for x in r[0]]
    done = sum(r[1] for r in results)
    return {"clients": clients, "seconds": spec["duration"], "requests": done,
            "sentences_per_s": done / spec["duration"], "latency": latency_json(lat)}


def baseline_generate(spec: dict) -> dict:
    import numpy as np
    sess = ort_session(spec["model"], spec["threads"], spec["opt_level"])
    gen = json.loads(Path(spec["generation"]).read_text())
    layers, heads, dim = gen["num_layers"], gen["num_kv_heads"], gen["head_dim"]
    eos = set(spec["eos_token_ids"])
    outputs = [o.name for o in sess.get_outputs()]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]

    def generate(prompt: list[int], max_tokens: int) -> dict:
        started = time.perf_counter()
        past = {f"past_key_values.{i}.{kv}": np.zeros((1, heads, 0, dim), dtype=np.float32)
                for i in range(layers) for kv in ("key", "value")}
        feed, position, generated, ttft, in_run = list(prompt), 0, [], None, 0.0
        while True:
            total = position + len(feed)
            feeds = {"input_ids": np.asarray([feed], dtype=np.int64),
                     "attention_mask": np.ones((1, total), dtype=np.int64),
                     "position_ids": np.arange(position, total, dtype=np.int64)[None, :], **past}
            t = time.perf_counter()
            res = dict(zip(outputs, sess.run(None, feeds)))
            if position > 0:
                in_run += time.perf_counter() - t
            token = int(res["logits"][0, -1].argmax())
            if ttft is None:
                ttft = time.perf_counter() - started
            if token in eos:
                break
            generated.append(token)
            if len(generated) >= max_tokens:
                break
            past = {f"past_key_values.{name[len('present.'):]}": res[name] for name in present}
            feed, position = [token], total
        seconds = time.perf_counter() - started
        decode = seconds - ttft
        return {"prompt_tokens": len(prompt), "output_tokens": len(generated), "ttft_ms": ttft * 1000,
                "seconds": seconds, "tokens_per_s": len(generated) / seconds,
                "decode_tokens_per_s": (len(generated) - 1) / decode if len(generated) > 1 and decode > 0 else None,
                # Decode steps over the time spent inside onnxruntime alone: the runtime's floor.
                "ort_only_decode_tokens_per_s": (len(generated) - 1) / in_run if len(generated) > 1 and in_run > 0 else None,
                "tokens": generated}

    generate(spec["prompts"][0], 8)  # warm-up, as the Rust side does
    runs = [generate(p, spec["max_tokens"]) for p in spec["prompts"]]
    return {"mode": "generate", "single": {"runs": runs, "summary": {
        "decode_tokens_per_s": median([r["decode_tokens_per_s"] for r in runs]),
        "tokens_per_s": median([r["tokens_per_s"] for r in runs]),
        "ttft_ms": median([r["ttft_ms"] for r in runs]),
        "ort_only_decode_tokens_per_s": median([r["ort_only_decode_tokens_per_s"] for r in runs]),
        "output_tokens": sum(r["output_tokens"] for r in runs)}}}


# ---------------------------------------------------------------------------------
# The driver

def target_dir() -> Path:
    # The Justfile's default: one shared target dir per machine.
    return Path(os.environ.get("CARGO_TARGET_DIR") or Path.home() / ".cache/switchyard/target")


def bench_bin(args) -> Path:
    if args.bin:
        return Path(args.bin)
    return target_dir() / "release" / "inference-bench"


def common_flags(args) -> list[str]:
    return ["--threads", str(args.threads), "--encoder-runners", str(args.encoder_runners)]


def run_baseline(kind: str, spec: dict, pin: Pinning, timeout: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
        path = f.name
    try:
        return run_json([sys.executable, str(Path(__file__).resolve()), "--baseline", kind, "--spec", path],
                        pin, timeout)
    finally:
        os.unlink(path)


def embed_rows(rust_runs: list[dict], py_runs: list[dict], args) -> list[dict]:
    rows = []
    for kind, key, values in (("fixed", "batch", args.batches), ("concurrent", "clients", args.clients)):
        for v in values:
            def pick(runs, metric):
                out = []
                for r in runs:
                    for x in r[kind]:
                        if x[key] == v:
                            out.append(x["sentences_per_s"] if metric == "tput" else x["latency"][metric])
                return median(out)

            def batching(runs):
                return median([x.get("batching", {}).get("mean_sequences_per_run")
                               for r in runs for x in r[kind] if x[key] == v])

            row = {"kind": kind, "n": v,
                   "rust": {m: pick(rust_runs, m) for m in ("tput", "p50_ms", "p99_ms")},
                   "python": {m: pick(py_runs, m) for m in ("tput", "p50_ms", "p99_ms")},
                   "rust_seqs_per_run": batching(rust_runs)}
            r, p = row["rust"]["tput"], row["python"]["tput"]
            row["ratio"] = r / p if r and p else None
            if kind == "concurrent" and args.encoder_runners > 1:
                servers = f"concurrent_{args.encoder_runners}_servers"
                p_n = median([x["sentences_per_s"] for run in py_runs for x in run.get(servers, [])
                              if x["clients"] == v])
                row["python_servers_tput"] = p_n
                row["ratio_servers"] = r / p_n if r and p_n else None
            rows.append(row)
    return rows


def embed_table(rows: list[dict], goal: float, runners: int) -> list[str]:
    extra = runners > 1
    out = ["| scenario | Rust sent/s | Rust p50 ms | Rust p99 ms | seqs/run | Python sent/s "
           "| Python p50 ms | Python p99 ms | Rust ÷ Python | goal ≥ 1.3× |"
           + (f" Python, {runners} servers: sent/s | Rust ÷ it |" if extra else ""),
           "|---|" + "---:|" * 8 + "---|" + ("---:|---:|" if extra else "")]
    for row in rows:
        if row["kind"] == "fixed":
            name = f"batch {row['n']}"
            applies = row["n"] > 1
        else:
            name = f"{row['n']} concurrent clients (Python: one at a time)"
            applies = row["n"] > 1
        verdict = "n/a (nothing to batch)" if not applies else (
            "-" if row["ratio"] is None else ("met" if row["ratio"] >= goal else "not met"))
        r, p = row["rust"], row["python"]
        out.append(f"| {name} | {fmt(r['tput'])} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} "
                   f"| {fmt(row['rust_seqs_per_run'], 2)} | {fmt(p['tput'])} | {fmt(p['p50_ms'])} "
                   f"| {fmt(p['p99_ms'])} | {fmt(row['ratio'], 2)}× | {verdict} |"
                   + (f" {fmt(row.get('python_servers_tput'))} | {fmt(row.get('ratio_servers'), 2)}"
                      f"{'×' if row.get('ratio_servers') else ''} |" if extra else ""))
    return out


def generate_table(rust_runs: list[dict], py_runs: list[dict], llama: list[dict], args) -> list[str]:
    def m(runs, *path):
        vals = []
        for r in runs:
            x = r
            for p in path:
                x = None if x is None else x.get(p)
            vals.append(x)
        return median(vals)

    out = ["| engine | single stream decode tok/s | single stream tok/s (incl. prefill) | TTFT ms "
           f"| {args.streams} streams aggregate tok/s | {args.streams} streams TTFT p50 / max ms | tokens generated |",
           "|---|" + "---:|" * 6]
    rs = lambda *p: m(rust_runs, "single", "summary", *p)  # noqa: E731
    out.append(f"| Switchyard (Rust, ort) | {fmt(rs('decode_tokens_per_s'))} | {fmt(rs('tokens_per_s'))} "
               f"| {fmt(rs('ttft_ms'))} | {fmt(m(rust_runs, 'concurrent', 'aggregate_tokens_per_s'))} "
               f"| {fmt(m(rust_runs, 'concurrent', 'ttft_ms'))} / {fmt(m(rust_runs, 'concurrent', 'ttft_max_ms'))} "
               f"| {fmt(rs('output_tokens'), 0)} single, {fmt(m(rust_runs, 'concurrent', 'output_tokens'), 0)} concurrent |")
    if py_runs:
        ps = lambda *p: m(py_runs, "single", "summary", *p)  # noqa: E731
        out.append(f"| Python onnxruntime, greedy loop, same graph | {fmt(ps('decode_tokens_per_s'))} "
                   f"| {fmt(ps('tokens_per_s'))} | {fmt(ps('ttft_ms'))} | - | - "
                   f"| {fmt(ps('output_tokens'), 0)} single |")
        out.append(f"| (its time inside onnxruntime alone: the runtime's floor) | {fmt(ps('ort_only_decode_tokens_per_s'))} "
                   f"| - | - | - | - | - |")
    if llama:
        tg = median([x["tg"] for x in llama])
        pp = median([x["pp"] for x in llama])
        prompt = llama[0]["n_prompt"]
        out.append(f"| llama.cpp llama-bench (GGUF, tg{args.max_tokens} / pp{prompt}) | {fmt(tg)} | - "
                   f"| {fmt(prompt / pp * 1000 if pp else None)} (pp{prompt} time) | - | - | {args.max_tokens} (fixed) |")
        ours = rs("decode_tokens_per_s")
        if ours and tg:
            ratio = ours / tg
            out += ["", f"Switchyard single-stream decode ÷ llama.cpp tg{args.max_tokens}: {ratio:.2f}× "
                        f"(goal ≥ 1.0×: {'met' if ratio >= 1.0 else 'not met'})"]
    return out


def run_llama_bench(args, pin: Pinning, n_prompt: int) -> dict:
    cmd = [args.llama_bench, "-m", args.gguf, "-p", str(n_prompt), "-n", str(args.max_tokens),
           "-t", str(args.threads), "-r", "3", "-o", "json"]
    res = subprocess.run(pin.prefix() + cmd, capture_output=True, text=True, preexec_fn=pin.preexec(),
                         timeout=1800)
    if res.returncode != 0:
        raise SystemExit(f"llama-bench failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
    data = json.loads(res.stdout)
    out = {"n_prompt": n_prompt, "raw": data}
    for t in data:
        if t.get("n_prompt", 0) > 0 and t.get("n_gen", 0) == 0:
            out["pp"] = t["avg_ts"]
        elif t.get("n_gen", 0) > 0 and t.get("n_prompt", 0) == 0:
            out["tg"] = t["avg_ts"]
        out["build"] = f"{t.get('build_commit', '?')} ({t.get('build_number', '?')})"
        out["model_type"] = t.get("model_type")
        out["cpu_info"] = t.get("cpu_info")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1,
                   help="ONNX Runtime intra-op threads on both sides (and llama.cpp's -t); processes are pinned to as many CPUs")
    p.add_argument("--encoder-runners", type=int, default=0,
                   help="the encoder's model runs at a time (the worker's --encoder-runners), each with "
                        "threads / runners intra-op threads; 0 (default): the worker's default, two with "
                        "--threads 2 or more, else one. Above 1 the Python baseline also runs with as many "
                        "server threads (one session each) for comparison")
    p.add_argument("--repeats", type=int, default=3, help="runs of each side; the table shows medians")
    p.add_argument("--sentences", type=int, default=256, help="texts in the embedding corpus")
    p.add_argument("--passes", type=int, default=2, help="passes over the corpus per fixed batch size")
    p.add_argument("--batches", default="1,8,32", help="fixed batch sizes, comma-separated")
    p.add_argument("--clients", default="1,8,32", help="concurrency levels (closed-loop clients), comma-separated")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per concurrency level")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each concurrency level")
    p.add_argument("--max-tokens", type=int, default=128, help="most tokens per generation (greedy; EOS may end it earlier)")
    p.add_argument("--streams", type=int, default=4, help="concurrent generation streams (and prompts used), at most 4")
    p.add_argument("--python-opt-level", choices=("all", "layout"), default="all",
                   help="Python's graph optimisation level: all (its default, ORT_ENABLE_ALL) or layout "
                        "(ORT_ENABLE_LAYOUT, what the Rust side's Level3 means)")
    p.add_argument("--skip-embed", action="store_true", help="no embedding benchmark")
    p.add_argument("--skip-generate", action="store_true", help="no generation benchmark")
    p.add_argument("--no-python-generate", action="store_true", help="no Python greedy-loop generation reference")
    p.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH"),
                   help="a llama.cpp llama-bench binary, run on --gguf as the llama.cpp reference (default: $LLAMA_BENCH)")
    p.add_argument("--gguf", default=os.environ.get("SMOLLM_GGUF"),
                   help="the GGUF for --llama-bench: the same weights, SmolLM2's Q4_1 GGUF the ONNX graph was "
                        "converted from (default: $SMOLLM_GGUF)")
    p.add_argument("--no-build", action="store_true", help="use the release inference-bench as it is")
    p.add_argument("--bin", help="the inference-bench binary to use (implies --no-build)")
    p.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    p.add_argument("--label", default="", help="added to the RESULTS.md section title (e.g. 'before: …')")
    p.add_argument("--json-out", help="also write every raw result to this file")
    p.add_argument("--no-append", action="store_true", help=f"do not append to {RESULTS.relative_to(REPO)}")
    p.add_argument("--baseline", choices=("embed", "generate"), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.baseline:
        spec = json.loads(Path(args.spec).read_text())
        out = baseline_embed(spec) if args.baseline == "embed" else baseline_generate(spec)
        print(json.dumps(out))
        return 0

    args.batches = [int(x) for x in args.batches.split(",") if x.strip()]
    # What the worker's --encoder-runners 0 means on the CPU (services/inference/src/lib.rs).
    args.encoder_runners = args.encoder_runners or (2 if args.threads >= 2 else 1)
    args.clients = [int(x) for x in args.clients.split(",") if x.strip()]
    if bool(args.llama_bench) != bool(args.gguf):
        raise SystemExit("--llama-bench and --gguf go together")
    if not args.no_build and not args.bin:
        print("building: cargo build --release -p switchyard-inference --bins", flush=True)
        subprocess.run(["cargo", "build", "--release", "-p", "switchyard-inference", "--bins"], check=True, cwd=REPO,
                       env={**os.environ, "CARGO_TARGET_DIR": str(target_dir())})
    binary = bench_bin(args)
    if not binary.exists():
        raise SystemExit(f"{binary} not found (cargo build --release -p switchyard-inference --bins)")
    import onnxruntime  # noqa: F401  (fail early without the venv)

    pin = Pinning(not args.no_pin, args.threads)
    started = dt.datetime.now(dt.timezone.utc)
    commit = git_commit()
    print(pin.describe(), flush=True)
    raw: dict = {"commit": commit, "started": started.isoformat(), "args": vars(args)}
    lines_out: list[str] = []
    method: list[str] = []
    goal = 1.3

    with tempfile.TemporaryDirectory(prefix="switchyard-bench-inference-") as tmp:
        if not args.skip_embed:
            corpus_path = Path(tmp) / "corpus.json"
            corpus = run_json([str(binary), "corpus", *common_flags(args), "--sentences", str(args.sentences),
                               "--vectors"], pin, 600)
            corpus_path.write_text(json.dumps(corpus))
            model_path = str(REPO / corpus["model_file"]["path"])
            spec = {"corpus": str(corpus_path), "model": model_path, "threads": args.threads,
                    "servers": [1] + ([args.encoder_runners] if args.encoder_runners > 1 else []),
                    "opt_level": args.python_opt_level, "batches": args.batches, "passes": args.passes,
                    "clients": args.clients, "duration": args.duration, "warmup": args.warmup}
            rust_cmd = [str(binary), "embed", *common_flags(args), "--sentences", str(args.sentences),
                        "--passes", str(args.passes), "--batches", ",".join(map(str, args.batches)),
                        "--clients", ",".join(map(str, args.clients)), "--duration", str(args.duration),
                        "--warmup", str(args.warmup)]
            budget = 600 + 3 * len(args.clients) * (args.duration + args.warmup)
            rust_runs, py_runs = [], []
            for i in range(args.repeats):
                order = ["rust", "python"] if i % 2 == 0 else ["python", "rust"]
                for side in order:
                    if side == "rust":
                        res = run_json(rust_cmd, pin, budget)
                        rust_runs.append(res)
                    else:
                        res = run_baseline("embed", spec, pin, budget)
                        py_runs.append(res)
                    summary = "  ".join(f"b{x['batch']} {x['sentences_per_s']:.1f}/s" for x in res["fixed"])
                    summary += "  " + "  ".join(f"c{x['clients']} {x['sentences_per_s']:.1f}/s p99 "
                                                f"{fmt(x['latency']['p99_ms'])}ms" for x in res["concurrent"])
                    print(f"  embed run {i + 1}/{args.repeats} {side:6} {summary}", flush=True)
            raw["embed"] = {"corpus_lengths": corpus["lengths"], "rust": rust_runs, "python": py_runs}
            rows = embed_rows(rust_runs, py_runs, args)
            parity = median([r.get("parity_max_abs_diff") for r in py_runs])
            session = rust_runs[0]["session"]
            lengths = corpus["lengths"]
            table = embed_table(rows, goal, args.encoder_runners)
            lines_out += ["Embeddings (sentences/s, latency per request):", "", *table, ""]
            method += [
                f"- embeddings: {MINILM}, `{corpus['model_file']['path']}` ({corpus['model_file']['bytes'] / 1e6:.1f} MB); "
                f"corpus of {lengths['texts']} texts, {lengths['tokens']} tokens (min {lengths['min']}, p50 {lengths['p50']}, "
                f"p90 {lengths['p90']}, max {lengths['max']}); same token ids on both sides (max |Rust − Python| over "
                f"the corpus vectors: {fmt(parity, 7) if parity is not None else '-'})",
                f"- Rust: the worker's encoder (`load_model`), max_batch {session['max_batch']}, max_delay "
                f"{session['max_delay_ms']} ms, {args.encoder_runners} runner(s) "
                f"({max(1, args.threads // args.encoder_runners)} intra-op thread(s) each), from text "
                "(tokenization included); seqs/run = sequences per model run",
                "- Python: batch B = the corpus in its original order in requests of B, each padded to its longest "
                "(no length sorting); C clients = one server thread running one request at a time (batch 1) for C "
                "closed-loop client threads; token ids given (no tokenization)"
                + (f"; 'Python, {args.encoder_runners} servers' = {args.encoder_runners} such server threads on "
                   f"one queue, each with its own session of {max(1, args.threads // args.encoder_runners)} "
                   "thread(s)" if args.encoder_runners > 1 else ""),
                f"- fixed batches: {args.passes} passes over the corpus after one warm-up request; concurrent: "
                f"{args.duration:g} s measured after {args.warmup:g} s warm-up, completions inside the window",
            ]

        if not args.skip_generate:
            rust_cmd = [str(binary), "generate", *common_flags(args), "--max-tokens", str(args.max_tokens),
                        "--streams", str(args.streams)]
            rust_runs, py_runs, llama = [], [], []
            spec: Optional[dict] = None
            for i in range(args.repeats):
                order = ["rust", "python"] if i % 2 == 0 else ["python", "rust"]
                for side in order:
                    if side == "rust":
                        res = run_json(rust_cmd, pin, 1800)
                        rust_runs.append(res)
                        s = res["single"]["summary"]
                        c = res["concurrent"]
                        print(f"  generate run {i + 1}/{args.repeats} rust   single {fmt(s['decode_tokens_per_s'])} tok/s "
                              f"ttft {fmt(s['ttft_ms'])} ms  {args.streams} streams {fmt(c['aggregate_tokens_per_s'])} tok/s",
                              flush=True)
                        if spec is None:
                            gen_dir = Path(res["model_file"]["path"]).parent
                            spec = {"model": str(REPO / res["model_file"]["path"]), "threads": args.threads,
                                    "opt_level": args.python_opt_level, "generation": str(REPO / gen_dir / "generation.json"),
                                    "prompts": res["prompt_ids"], "eos_token_ids": res["eos_token_ids"],
                                    "max_tokens": args.max_tokens}
                    elif not args.no_python_generate and spec is not None:
                        res = run_baseline("generate", spec, pin, 1800)
                        py_runs.append(res)
                        s = res["single"]["summary"]
                        print(f"  generate run {i + 1}/{args.repeats} python single {fmt(s['decode_tokens_per_s'])} tok/s "
                              f"ttft {fmt(s['ttft_ms'])} ms", flush=True)
                if not args.no_python_generate and spec is not None and len(py_runs) < i + 1:
                    # The first repeat runs Rust first: Python needs its prompt ids.
                    res = run_baseline("generate", spec, pin, 1800)
                    py_runs.append(res)
                if args.llama_bench:
                    n_prompt = int(median([len(p) for p in rust_runs[0]["prompt_ids"]]))
                    llama.append(run_llama_bench(args, pin, n_prompt))
                    print(f"  generate run {i + 1}/{args.repeats} llama.cpp tg {fmt(llama[-1].get('tg'))} tok/s "
                          f"pp {fmt(llama[-1].get('pp'))} tok/s", flush=True)
            raw["generate"] = {"rust": rust_runs, "python": py_runs, "llama_cpp": llama}
            first = rust_runs[0]
            lines_out += [f"Generation ({SMOLLM}, greedy, max_tokens {args.max_tokens}):", "",
                          *generate_table(rust_runs, py_runs, llama, args), ""]
            same = None
            if py_runs:
                rust_tokens = [r["output_tokens"] for r in first["single"]["runs"]]
                py_tokens = [r["output_tokens"] for r in py_runs[0]["single"]["runs"]]
                same = rust_tokens == py_tokens
            method += [
                f"- generation: `{first['model_file']['path']}` ({first['model_file']['bytes'] / 1e6:.1f} MB), "
                f"{len(first['prompts'])} fixed prompts asking for long answers (prompt {min(map(len, first['prompt_ids']))}–"
                f"{max(map(len, first['prompt_ids']))} tokens), greedy; the API cannot ignore EOS, so the table counts "
                f"tokens actually generated. Decode tok/s = tokens after the first ÷ time after the first; TTFT = "
                f"request → first text piece (prefill + first token). Single stream = each prompt alone (median); "
                f"{args.streams} streams = all prompts at once, aggregate = all tokens ÷ wall time",
                "- Python reference: the same prompt ids through a greedy KV-cache loop on the same graph (single "
                "stream only)" + ("" if same is None else
                                  f"; same number of tokens generated per prompt as Rust: {'yes' if same else 'no'}"),
            ]
            if llama:
                method.append(f"- llama.cpp: llama-bench build {llama[0].get('build')} on `{args.gguf}` "
                              f"({llama[0].get('model_type')}), -t {args.threads}, -r 3, tg{args.max_tokens} and "
                              f"pp{llama[0]['n_prompt']}, pinned like the others")
            else:
                method.append("- llama.cpp: not run (no --llama-bench/--gguf); no llama.cpp comparison in this section")

    print()
    print("\n".join(lines_out))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(raw, indent=1))
    if args.no_append:
        return 0
    m = machine()
    import onnxruntime as ort
    title = f"## {started:%Y-%m-%d %H:%M} UTC — open models, commit {commit}" + (f" ({args.label})" if args.label else "")
    section = [
        "",
        title,
        "",
        f"- machine: {m['nproc']} CPUs, {m['cpu']}, {m['memory']}, Linux {m['kernel']}; other developers' "
        "builds may share the CPUs (repeats alternate the order of the sides; medians)",
        f"- pinning: {pin.describe()}; ONNX Runtime intra-op threads: {args.threads} on both sides",
        f"- onnxruntime {ort.__version__} (the same wheel: Rust loads its libonnxruntime.so via `ort` "
        f"load-dynamic, Python its bindings); graph optimisation: Rust `Level3` (ORT_ENABLE_LAYOUT, as "
        f"runtime.rs sets), Python ORT_ENABLE_{args.python_opt_level.upper()}; release build",
        f"- {args.repeats} runs per side, alternating which side goes first; every number is the median of the runs",
        *method,
        "",
        *lines_out,
    ]
    with open(RESULTS, "a") as f:
        f.write("\n".join(section))
    print(f"appended to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
