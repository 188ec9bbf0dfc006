"""The serverless path end to end: no instance runs until a request comes; the ingress
creates the caller's cluster, holds the call through the cold start while the
autoscaler starts an instance, and the cluster scales back to zero when idle."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import pytest

from conftest import make_client, module_stack, stack

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def sy(tmp_path_factory: pytest.TempPathFactory, canary: str):
    with module_stack(
        tmp_path_factory, canary,
        autoscaler=True,
        # A cluster's 1-minute idle timeout passes in 2 s here.
        idle_minute_ms=2000,
        inference_threads=1,
    ) as s:
        yield s


def api(sy, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{sy.ingress_url}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {sy.dev_api_key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(what: str, probe, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_first_request_cold_starts_a_cluster_that_scales_back_to_zero(sy):
    status, _ = api(sy, "GET", f"/v1/clusters/{MINILM}")
    assert status == 404, "no cluster before the first request"
    client = make_client(sy, provider_key="")
    res = client.embeddings.create(model=MINILM, input="the first request of the day")
    assert len(res.data[0].embedding) == 384

    status, cluster = api(sy, "GET", f"/v1/clusters/{MINILM}")
    assert status == 200
    assert cluster["capacity"]["min"] == 0 and cluster["timeout"] == 10
    assert cluster["instance_type"] == "cpu"
    running = wait_for("the cluster's status", lambda: (c := api(sy, "GET", f"/v1/clusters/{MINILM}")[1])["instances"] >= 1 and c)
    assert running["status"] in ("running", "idle", "scaling")

    # A pre-set timeout of 1 "minute" (2 s here), then nothing runs and nothing is billed.
    status, _ = api(sy, "PATCH", f"/v1/clusters/{MINILM}", {"timeout": 1})
    assert status == 200
    stopped = wait_for("scale to zero", lambda: (c := api(sy, "GET", f"/v1/clusters/{MINILM}")[1])["status"] == "stopped" and c)
    assert stopped["instances"] == 0
    assert stopped["inferences"] >= 1

    # And it starts again on demand.
    res = client.embeddings.create(model=MINILM, input="back from zero")
    assert len(res.data[0].embedding) == 384


def test_a_cold_start_longer_than_the_caller_waits_is_a_503_then_a_retry_succeeds(sy):
    # A model of its own, so this cluster starts from zero whatever the other test did.
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    req = urllib.request.Request(
        f"{sy.api_base}/chat/completions", method="POST",
        data=json.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}).encode(),
        headers={"Authorization": f"Bearer {sy.dev_api_key}", "Content-Type": "application/json",
                 "x-switchyard-max-wait": "1"})
    started = time.monotonic()
    try:
        urllib.request.urlopen(req, timeout=30)
        first_status = 200
    except urllib.error.HTTPError as e:
        first_status = e.code
        body = json.loads(e.read())
        assert e.headers["Retry-After"]
        assert body["error"]["code"] == "cold_start"
        assert body["cluster"]["model_id"] == model
    if first_status == 200:
        pytest.fail(f"the instance loaded within 1 s ({time.monotonic() - started:.2f} s): no cold start to observe")
    assert first_status == 503
    # The SDK retries 503 with Retry-After by itself; the instance is up by then.
    client = make_client(sy, provider_key="")
    client = client.with_options(max_retries=5)
    res = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert res.choices[0].message.content is not None


def instance_pids(sy, model: str) -> list[int]:
    """This stack's inference processes serving `model`: children of its autoscaler,
    which passes the model as INFERENCE_MODEL."""
    parent = sy.services["autoscaler"].proc.pid
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        # stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ")".
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z" and f"INFERENCE_MODEL={model}".encode() in env:
            pids.append(int(entry))
    return pids


def test_a_streaming_answer_continues_when_its_instance_is_killed_mid_stream(sy):
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    status, _ = api(sy, "PUT", f"/v1/clusters/{model}", {"capacity": {"min": 1, "max": 1}, "timeout": 10})
    assert status in (200, 201)
    wait_for("a ready instance", lambda: api(sy, "GET", f"/v1/clusters/{model}")[1].get("ready_instances", 0) >= 1)
    client = make_client(sy, provider_key="").with_options(timeout=120)
    messages = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
    # Greedy, so the uninterrupted answer is the reference the resumed stream must equal.
    params = dict(model=model, messages=messages, max_tokens=160, temperature=0)
    reference = client.chat.completions.create(**params).choices[0].message.content
    assert len(reference) > 200

    # Earlier tests may have left this cluster more instances: wait for the one.
    [pid] = wait_for("one instance", lambda: p if len(p := instance_pids(sy, model)) == 1 else None)
    stream = client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True})
    received, killed, finish, usage = [], False, None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        if chunk.choices[0].delta.content:
            received.append(chunk.choices[0].delta.content)
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        if not killed and len("".join(received)) >= 20:
            # Mid-stream: the instance dies without a word (no drain, no error chunk).
            os.kill(pid, signal.SIGKILL)
            killed = True
    assert killed, "the answer ended before the instance could be killed"
    # JetStream redelivered the request to the replacement, which answered from the
    # start; the caller got each character once, in order: the uninterrupted answer.
    assert "".join(received) == reference
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 160
    assert pid not in instance_pids(sy, model), "the killed instance is gone"
    wait_for("a replacement", lambda: len(instance_pids(sy, model)) == 1)
