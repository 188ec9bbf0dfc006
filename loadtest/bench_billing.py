#!/usr/bin/env python3
"""How fast does billing take usage events into Postgres, exactly once?

For each scenario a nats-server of its own (infra/nats/single.conf: `sync_interval:
always`, as in production) and a Postgres database of its own (`switchyard-admin
migrate` on the local server) are set up, usage events are published to USAGE with
`Nats-Msg-Id`s (plus a share of them again without one, as a publisher retrying after
the duplicate window would, so the stream really holds duplicates), and the release
`switchyard-billing` is timed until its durable consumer has nothing pending and
nothing unacked. Then the books are checked: exactly one `usage_events` row per
distinct event, and the total cost equal to the exact decimal sum computed here.

Scenarios:
  * backlog: events published first, billing started after: its drain rate;
  * live: billing running, events published as fast as the publisher can: the rate
    events reach the books end to end (bounded by publishing, each PubAck after fsync).

`just bench-billing` runs it; results are appended to loadtest/RESULTS.md.

    .tools/venv/bin/python loadtest/bench_billing.py [--events 50000] [--dup-percent 10]
        [--batch-sizes 1,100,500] [--events-small-batch 5000] [--no-live]
        [--no-build] [--no-append]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from decimal import Decimal
from pathlib import Path

import msgpack
import nats

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "infra"))
sys.path.insert(0, str(REPO / "loadtest"))

import stack  # noqa: E402  (infra/stack.py)
from bench import git_commit, machine, release_bin_dir  # noqa: E402

RESULTS = REPO / "loadtest" / "RESULTS.md"
SERVER_URL = os.environ.get("DATABASE_URL", stack.DEFAULT_DATABASE_URL)
# The prices billing ships with (services/billing/prices.json).
PRICES = {"cpu": Decimal("0.00001"), "gpu-t4-16gb": Decimal("0.000072"),
          "gpu-a100-40gb": Decimal("0.00018")}
BASE_MS = 1_772_323_200_000  # 2026-03-01T00:00:00Z
PERIOD_MS = 10_000


def db_url(name: str) -> str:
    u = urllib.parse.urlparse(SERVER_URL)
    return urllib.parse.urlunparse(u._replace(path="/" + name))


def psql(url: str, sql: str) -> str:
    return subprocess.run(["psql", url, "-Atc", sql], check=True, capture_output=True,
                          text=True).stdout.strip()


def events(n: int) -> list[tuple[str, str, bytes, Decimal, int]]:
    """n instance periods of 10 s, over 40 accounts × 5 instances × 3 instance types,
    back to back (so some cross midnight): (subject, event id, payload, cost, ms)."""
    out = []
    now = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    types = list(PRICES)
    for i in range(n):
        account = f"bench-{i % 40}"
        instance = f"{account}-i{(i // 40) % 5}"
        itype = types[(i // 200) % len(types)]
        start = BASE_MS + (i // 200) * PERIOD_MS
        event_id = f"period:{instance}:{itype}:{start}"
        body = {"kind": "instance_period", "cluster": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "instance_type": itype,
                "instance_id": f"{instance}:{itype}", "start_ms": start, "end_ms": start + PERIOD_MS}
        payload = msgpack.packb({"schema_version": 1, "event_id": event_id, "account": account,
                                 "emitted_at": now, "body": body})
        out.append((f"usage.instance.{account}", event_id, payload,
                    PRICES[itype] * PERIOD_MS / 1000, PERIOD_MS))
    return out


async def publish(url: str, evs, dup_percent: int, concurrency: int = 256) -> int:
    """Publishes every event with its Nats-Msg-Id, then dup_percent of them again with
    none; returns the messages stored."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    sends = [(s, p, {"Nats-Msg-Id": i}) for s, i, p, _, _ in evs]
    step = max(1, 100 // dup_percent) if dup_percent else 0
    if step:
        sends += [(s, p, None) for s, _, p, _, _ in evs[::step]]
    sem = asyncio.Semaphore(concurrency)

    async def one(s, p, h):
        async with sem:
            await js.publish(s, p, headers=h, timeout=30)

    await asyncio.gather(*(one(*x) for x in sends))
    await nc.close()
    return len(sends)


async def drained(url: str, deadline_s: float = 900) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    t_end = time.monotonic() + deadline_s
    while True:
        info = await js.consumer_info("USAGE", "billing")
        if info.num_pending == 0 and info.num_ack_pending == 0:
            t = time.monotonic()
            await nc.close()
            return t
        if time.monotonic() > t_end:
            raise RuntimeError(f"billing did not drain: {info}")
        await asyncio.sleep(0.01)


def wait_http(url: str, timeout: float = 30) -> float:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return time.monotonic()
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{url} not ready")


def scenario(bins: Path, n: int, batch: int, dup_percent: int, live: bool) -> dict:
    ports = stack._Ports()
    tmp = Path(tempfile.mkdtemp(prefix="sy-bench-billing-"))
    name = f"sy_bench_{uuid.uuid4().hex[:12]}"
    url = db_url(name)
    procs = []
    try:
        port, mport = ports.any_free(), ports.any_free()
        nats_url = f"nats://127.0.0.1:{port}"
        # single.conf encrypts the store with a key from the environment (as in production).
        nats_env = {**os.environ, "SWITCHYARD_NATS_STORE_KEY": base64.b64encode(os.urandom(32)).decode()}
        procs.append(subprocess.Popen(
            [str(stack.find_nats_server()), "-c", str(stack.SINGLE_CONF), "-a", "127.0.0.1",
             "-p", str(port), "-m", str(mport), "-sd", str(tmp / "js")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=nats_env))
        wait_http(f"http://127.0.0.1:{mport}/healthz?js-enabled-only=true")
        env = {**os.environ, "RUST_LOG": "warn", "NO_COLOR": "1"}
        subprocess.run([str(bins / "switchyard-nats"), "apply", "--nats-url", nats_url,
                        "--dir", str(REPO / "nats")], check=True, env=env, capture_output=True)
        subprocess.run([str(bins / "switchyard-admin"), "migrate"], check=True,
                       env={**env, "DATABASE_URL": url}, capture_output=True)
        evs = events(n)
        bport = ports.any_free()
        billing_env = {**env, "NATS_URL": nats_url, "DATABASE_URL": url,
                       "BILLING_BIND": f"127.0.0.1:{bport}", "BILLING_BATCH_SIZE": str(batch)}
        health = f"http://127.0.0.1:{bport}/healthz"

        def start_billing():
            procs.append(subprocess.Popen([str(bins / "switchyard-billing")], env=billing_env,
                                          stdout=subprocess.DEVNULL,
                                          stderr=open(tmp / "billing.log", "wb")))

        if live:
            start_billing()
            wait_http(health)
            t0 = time.monotonic()
            messages = asyncio.run(publish(nats_url, evs, dup_percent))
            t_published = time.monotonic()
        else:
            messages = asyncio.run(publish(nats_url, evs, dup_percent))
            start_billing()
            t0 = wait_http(health)
            t_published = t0
        t1 = asyncio.run(drained(nats_url))
        rows, total_ms, cost = psql(url, "SELECT (SELECT COUNT(*) FROM usage_events), "
                                         "SUM(instance_ms), SUM(cost) FROM instance_usage_daily").split("|")
        want_cost = sum((e[3] for e in evs), Decimal(0))
        exact = int(rows) == n and int(total_ms) == n * PERIOD_MS and Decimal(cost) == want_cost
        if not exact:
            raise RuntimeError(f"books wrong: {rows} rows (want {n}), {cost} USD (want {want_cost})")
        secs = t1 - t0
        return {"scenario": "live" if live else "backlog", "batch": batch, "events": n,
                "messages": messages, "seconds": secs, "msgs_per_s": messages / secs,
                "events_per_s": n / secs, "cost": want_cost,
                "lag_ms": (t1 - t_published) * 1000 if live else None}
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        try:
            psql(db_url("postgres"), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=50_000, help="distinct events per scenario")
    p.add_argument("--events-small-batch", type=int, default=5_000,
                   help="distinct events when the batch size is below 10 (one transaction per event is slow)")
    p.add_argument("--dup-percent", type=int, default=10, help="share of events published a second time")
    p.add_argument("--batch-sizes", default="1,100,500", help="BILLING_BATCH_SIZE values")
    p.add_argument("--no-live", action="store_true", help="skip the live scenario")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--no-append", action="store_true", help=f"do not append to {RESULTS.relative_to(REPO)}")
    p.add_argument("--note", action="append", default=[], help="a line added to the results (repeatable)")
    args = p.parse_args()
    if not shutil.which("psql"):
        print("psql is needed to check the books", file=sys.stderr)
        return 2
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "switchyard-billing", "-p", "switchyard-nats",
                        "-p", "switchyard-store", "--bins"], check=True, cwd=REPO)
    bins = release_bin_dir()
    runs = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        n = args.events if batch >= 10 else args.events_small_batch
        r = scenario(bins, n, batch, args.dup_percent, live=False)
        print(f"backlog batch {batch}: {r['messages']} messages in {r['seconds']:.2f} s = "
              f"{r['msgs_per_s']:.0f} msg/s ({r['events_per_s']:.0f} distinct events/s); books exact", flush=True)
        runs.append(r)
    if not args.no_live:
        batch = max(int(b) for b in args.batch_sizes.split(","))
        r = scenario(bins, args.events, batch, args.dup_percent, live=True)
        print(f"live batch {batch}: {r['messages']} messages in {r['seconds']:.2f} s = "
              f"{r['msgs_per_s']:.0f} msg/s, drained {r['lag_ms']:.0f} ms after the last PubAck; "
              "books exact", flush=True)
        runs.append(r)

    m = machine()
    pg_version = psql(db_url("postgres"), "SHOW server_version").split()[0]
    sync_commit = psql(db_url("postgres"), "SHOW synchronous_commit")
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "", f"## {now} — billing ingest, commit {git_commit()}", "",
        f"- machine: {m['nproc']} CPUs, {m['cpu']}, {m['memory']}, Linux {m['kernel']}; no pinning "
        "(nats-server, Postgres, billing and the Python publisher share the CPUs; other developers' builds may too)",
        "- nats-server with `sync_interval: always` (every USAGE write fsynced before its PubAck); local "
        f"Postgres {pg_version} with its defaults (synchronous_commit {sync_commit}: a WAL flush per "
        "transaction); release build",
        f"- events: 10 s instance periods over 40 accounts × 5 instances × 3 instance types, crossing "
        f"midnight; {args.dup_percent} % of them published a second time without a Nats-Msg-Id, so the "
        "stream holds real duplicates billing must recognise",
        "- backlog: events published first, then billing started; time from its /healthz answering to its "
        "consumer having nothing pending or unacked. live: billing running; time from the first publish "
        "(Python nats-py, 256 in flight) to drained — bounded by the publisher (each PubAck waits for an "
        "fsync); 'lag' is how long after the last PubAck billing had everything committed and acked",
        "- every run checked: one `usage_events` row per distinct event, instance-ms and total cost equal "
        "to the exact sum (Python `decimal`)",
        *[f"- {n}" for n in args.note],
        "",
        "| scenario | BILLING_BATCH_SIZE | distinct events | messages (with duplicates) | seconds | messages/s | distinct events/s | lag ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(f"| {r['scenario']} | {r['batch']} | {r['events']} | {r['messages']} | {r['seconds']:.2f} "
                     f"| {r['msgs_per_s']:.0f} | {r['events_per_s']:.0f} "
                     f"| {'' if r['lag_ms'] is None else format(r['lag_ms'], '.0f')} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_append:
        with open(RESULTS, "a") as f:
            f.write(text)
        print(f"appended to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
