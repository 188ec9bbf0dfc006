#!/usr/bin/env python3
"""A batch job in Python, written from the published contract alone (schemas/BATCH.md
and schemas/json/batch_request.schema.json): publishes --count requests straight to
NATS, waits, and collects exactly one result per request. Run it again with the same
--job and it publishes only the rows that have no result yet (none, once the job is
done).

    NATS_URL=nats://acme:<password>@127.0.0.1:4222 BATCH_PROVIDER_KEY=sk-... \\
      python batch.py --account acme --job demo --count 1000

Needs nats-py and msgpack. Progress goes to stderr; the summary is one JSON line on
stdout.
"""

import argparse
import asyncio
import datetime
import json
import os
import sys
import time
import uuid

import msgpack
import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

# The namespace of request ids: uuid5(NAMESPACE, "<account>/<job>/<row>") (BATCH.md).
NAMESPACE = uuid.UUID("6f1d8a2e-4c3b-5d7e-9f10-2a3b4c5d6e7f")
PUBLISH_WINDOW = 256


def token(account: str) -> str:
    """An account id as a subject token (BATCH.md): letters, digits and '-' stay;
    each of _ . / : @ + becomes '_' and two upper-case hex digits."""
    out = []
    for c in account:
        if c.isascii() and (c.isalnum() or c == "-"):
            out.append(c)
        elif c in "_./:@+":
            out.append("_%02X" % ord(c))
        else:
            raise ValueError(f"account id {account!r} holds {c!r}, which is not allowed")
    return "".join(out)


def request_id(account: str, job: str, row: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{account}/{job}/{row}"))


def rfc3339(t: datetime.datetime) -> str:
    return t.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def row_request(args, row: int, deadline: datetime.datetime) -> dict:
    request = {
        "model": args.model,
        "messages": [],
        "params": {"max_tokens": 16},
    }
    body = {
        "schema_version": 1,
        "request_id": request_id(args.account, args.job, row),
        "account": args.account,
        "deadline": rfc3339(deadline),
        "created_at": rfc3339(datetime.datetime.now(datetime.timezone.utc)),
        "request": request,
    }
    if args.task == "embeddings":
        body["task"] = {"task": "feature-extraction", "inputs": [f"sentence number {row} of the batch job"]}
    else:
        request["messages"] = [
            {"role": "user", "content": [{"type": "text", "text": f"row {row}: reply with one word"}]}
        ]
    key = os.environ.get("BATCH_PROVIDER_KEY")
    if key:
        body["provider_key"] = key
    return body


async def run(args) -> dict:
    acct = token(args.account)
    options = {"name": "batch-example-py"}
    if args.inbox_prefix:
        options["inbox_prefix"] = args.inbox_prefix.encode()
    nc = await nats.connect(args.nats_url, **options)
    js = nc.jetstream()
    wanted = {request_id(args.account, args.job, row) for row in range(args.count)}
    got = {}

    # Every result of the job, from the first: a named, ordered push consumer on
    # res.<acct>.<job>.> delivering to our own inbox (BATCH.md, "Read the results").
    results = await js.subscribe(
        f"res.{acct}.{args.job}.>",
        stream="RESULTS",
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        config=ConsumerConfig(name=f"{acct}-{args.job}-{uuid.uuid4().hex}"),
    )

    # Rows answered by an earlier run: one direct get each, by result subject.
    for rid in wanted:
        try:
            msg = await js.get_msg("RESULTS", subject=f"res.{acct}.{args.job}.{rid}", direct=True)
        except nats.js.errors.NotFoundError:
            continue
        got[rid] = msgpack.unpackb(msg.data)
    already = len(got)

    deadline = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=args.deadline_minutes)
    stored = duplicates = 0
    pending = []

    async def settle(acks):
        nonlocal stored, duplicates
        for ack in await asyncio.gather(*acks):
            if ack.duplicate:
                duplicates += 1
            else:
                stored += 1

    for row in range(args.count):
        rid = request_id(args.account, args.job, row)
        if rid in got:
            continue
        payload = msgpack.packb(row_request(args, row, deadline))
        pending.append(js.publish(f"batch.{acct}.{args.job}", payload, headers={"Nats-Msg-Id": rid}))
        if len(pending) >= PUBLISH_WINDOW:
            await settle(pending)
            pending = []
    await settle(pending)
    print(
        f"job {args.job}: {args.count} rows, {already} already answered, "
        f"published {stored} ({duplicates} already queued)",
        file=sys.stderr,
    )

    last_report = time.monotonic()
    while len(got) < args.count:
        try:
            msg = await results.next_msg(timeout=args.idle_timeout_secs)
        except nats.errors.TimeoutError:
            raise SystemExit(
                f"batch: no new result for {args.idle_timeout_secs} s; "
                f"{len(got)} of {args.count} collected (run again to resume)"
            )
        result = msgpack.unpackb(msg.data)
        if result["request_id"] in wanted:
            got[result["request_id"]] = result
        if time.monotonic() - last_report >= 1:
            print(f"results: {len(got)}/{args.count}", file=sys.stderr)
            last_report = time.monotonic()
    await nc.close()

    errors = {}
    for r in got.values():
        if r.get("error"):
            kind = r["error"]["kind"]
            errors[kind] = errors.get(kind, 0) + 1
    ok = sum(1 for r in got.values() if not r.get("error"))
    print(f"results: {len(got)}/{args.count} ({ok} ok)", file=sys.stderr)
    return {
        "job": args.job,
        "rows": args.count,
        "already_answered": already,
        "published": stored,
        "duplicates": duplicates,
        "results": len(got),
        "ok": ok,
        "errors": errors,
    }


def main() -> None:
    p = argparse.ArgumentParser(description="Publish a batch job to Switchyard over NATS and collect its results.")
    p.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
                   help="NATS URL with the batch user's credentials (default: $NATS_URL)")
    p.add_argument("--account", required=True, help="the account the job belongs to")
    p.add_argument("--job", required=True, help="the job id: 1-64 letters, digits, '-' or '_'")
    p.add_argument("--model", default="openai/gpt-4o-mini", help="the model every row asks")
    p.add_argument("--task", choices=["chat", "embeddings"], default="chat")
    p.add_argument("--count", type=int, default=1000, help="rows in the job")
    p.add_argument("--deadline-minutes", type=int, default=60, help="minutes until the job deadline")
    p.add_argument("--idle-timeout-secs", type=float, default=120,
                   help="give up after this long without a new result")
    p.add_argument("--inbox-prefix", default=None, help="the batch user's inbox prefix (_INBOX_<account>)")
    args = p.parse_args()
    summary = asyncio.run(run(args))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
