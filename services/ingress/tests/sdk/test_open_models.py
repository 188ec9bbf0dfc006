"""Open models end to end: the official `openai` SDK (and plain HTTP for the unified
route) against the real stack with real inference instances — MiniLM (embeddings,
zero-shot) and SmolLM2 (chat) on ONNX Runtime, CPU."""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import REPO, make_client, module_stack, stack

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
SECRET_PROMPT = "zebra-canary-7f3a: what is the capital of France?"
# Asked bare, the source model's first answer token is a near tie ("The" 0.152 vs "L"
# 0.140) that the 4-bit graph's int8 activations tip the other way (see
# infra/models/README.md); asked for one sentence, it is not.
FRANCE = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def sy(tmp_path_factory: pytest.TempPathFactory, canary: str):
    with module_stack(
        tmp_path_factory, canary,
        rust_log="debug",
        open_models=[MINILM, SMOLLM],
        inference_threads=1,
    ) as s:
        yield s


@pytest.fixture
def client(sy):
    # Open models need no provider key.
    return make_client(sy, provider_key="")


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def metrics(sy, model: str) -> str:
    svc = sy.services["inference-" + model.rsplit("/", 1)[-1]]
    with urllib.request.urlopen(f"http://{svc.env['INFERENCE_BIND']}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^(\w+)(\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if not m or m.group(1) != name:
            continue
        lab = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(lab.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def test_embeddings_through_the_sdk(client):
    texts = ["A man plays the guitar.", "Someone plays an instrument.", "The invoice is due on Friday."]
    res = client.embeddings.create(model=MINILM, input=texts)
    assert res.model == MINILM
    assert [d.index for d in res.data] == [0, 1, 2]
    vecs = [d.embedding for d in res.data]
    for v in vecs:
        assert len(v) == 384
        assert abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-3
    related, unrelated = cosine(vecs[0], vecs[1]), cosine(vecs[0], vecs[2])
    assert related > unrelated + 0.3, (related, unrelated)
    assert res.usage.prompt_tokens > 10
    # The SDK's default base64 and explicit floats carry the same numbers.
    floats = client.embeddings.create(model=MINILM, input=texts[0], encoding_format="float")
    assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, vecs[0])) < 1e-6


def test_chat_answers_and_streams(client):
    res = client.chat.completions.create(
        model=SMOLLM,
        messages=[{"role": "user", "content": FRANCE}],
        temperature=0,
        max_tokens=40,
    )
    assert "Paris" in res.choices[0].message.content
    assert res.choices[0].finish_reason in ("stop", "length")
    assert res.usage.prompt_tokens > 10 and 0 < res.usage.completion_tokens <= 40
    assert res.model == SMOLLM

    stream = client.chat.completions.create(
        model=SMOLLM,
        messages=[{"role": "user", "content": FRANCE}],
        temperature=0,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            finish = c.finish_reason or finish
    assert len(pieces) > 1, "streamed in pieces"
    assert "".join(pieces) == res.choices[0].message.content, "greedy: stream and non-stream agree"
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens == res.usage.completion_tokens


def test_cancelling_a_stream_stops_generation(sy, client):
    before = metrics(sy, SMOLLM)
    cancelled_before = metric(before, "inference_requests_total", task="chat", outcome="invalid_request")
    tokens_before = metric(before, "inference_generated_tokens_total")
    stream = client.chat.completions.create(
        model=SMOLLM,
        messages=[{"role": "user", "content": "Write a very long story about a lighthouse keeper."}],
        max_tokens=2000,
        stream=True,
    )
    got = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
            if got == 3:
                break
    stream.close()
    # The worker records the cancellation once it has stopped; wait for that (bounded).
    deadline = time.monotonic() + 30
    while metric(metrics(sy, SMOLLM), "inference_requests_total", task="chat", outcome="invalid_request") <= cancelled_before:
        assert time.monotonic() < deadline, "the worker never saw the cancellation"
        time.sleep(0.05)
    generated = metric(metrics(sy, SMOLLM), "inference_generated_tokens_total") - tokens_before
    assert generated < 500, f"generation went on after the caller left: {generated} tokens"


def test_bad_requests_are_4xx(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": "hi"}], max_tokens=-5)
    assert "max_tokens" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MINILM, messages=[{"role": "user", "content": "hi"}])
    assert "chat" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=SMOLLM, input="hi")
    assert "feature-extraction" in str(e.value) or "embedding" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="acme/no-such-model", input="hi")
    # Free text where JSON was asked for would break the caller's parsing: refused
    # before the request waits for an instance.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=SMOLLM, messages=[{"role": "user", "content": "hi"}], response_format={"type": "json_object"})
    assert e.value.body["param"] == "response_format"
    assert "open models" in e.value.body["message"]


def test_logit_bias_takes_the_models_own_token_ids(client):
    models = Path(os.environ.get("SWITCHYARD_MODELS_DIR") or REPO / ".models")
    vocab = json.loads((models / "SmolLM2-135M-Instruct/tokenizer.json").read_text())["model"]["vocab"]
    banana = vocab["\u0120banana"]  # " banana" in the byte-level BPE's alphabet
    raw = client.chat.completions.with_raw_response.create(
        model=SMOLLM, messages=[{"role": "user", "content": FRANCE}], temperature=0, max_tokens=3,
        logit_bias={str(banana): 100}, service_tier="flex")
    # +100 all but forces the token; the tier has no meaning here and is reported.
    assert raw.parse().choices[0].message.content.strip() == "banana banana banana"
    assert raw.headers.get("x-switchyard-dropped-params") == "service_tier"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=SMOLLM, messages=[{"role": "user", "content": "hi"}], logit_bias={"1000000": 5})
    assert e.value.body["param"] == "logit_bias"
    assert "not in the vocabulary" in e.value.body["message"]


def unified(sy, model: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{sy.ingress_url}/models/v2/{model}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Key {sy.dev_api_key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_zero_shot_classification_through_the_unified_route(sy):
    status, body = unified(sy, MINILM, {
        "text": "The striker scored twice and the team lifted the cup.",
        "params": {"candidate_labels": ["cooking", "sports", "politics"]},
    })
    assert status == 200, body
    assert body["output"]["labels"][0] == "sports"
    assert sorted(body["output"]["labels"]) == ["cooking", "politics", "sports"]
    scores = body["output"]["scores"]
    assert scores == sorted(scores, reverse=True)
    assert abs(sum(scores) - 1.0) < 1e-3
    assert body["provider"] == "switchyard"


def test_prompts_and_outputs_stay_out_of_the_logs(sy, client):
    res = client.chat.completions.create(
        model=SMOLLM, messages=[{"role": "user", "content": SECRET_PROMPT}], temperature=0, max_tokens=8)
    answer = res.choices[0].message.content.strip()
    client.embeddings.create(model=MINILM, input=SECRET_PROMPT)
    for name, path in sy.logs.items():
        text = path.read_text(errors="replace")
        assert "zebra-canary-7f3a" not in text, f"the prompt is in {name}'s log"
        if len(answer) >= 12:
            assert answer not in text, f"the output is in {name}'s log"


def test_a_failing_closed_model_falls_back_to_an_open_one(sy):
    # The mock answers 503 for this model every time: the translator retries, then
    # hands the request to SmolLM2's instance, which answers the same caller.
    client = make_client(sy, provider_key=sy.mock_api_key)
    raw = client.chat.completions.with_raw_response.create(
        model="openai/mock-error-503",
        messages=[{"role": "user", "content": FRANCE}],
        temperature=0,
        max_tokens=40,
        extra_body={"models": [SMOLLM]},
    )
    res = raw.parse()
    assert "Paris" in res.choices[0].message.content
    assert raw.headers["x-switchyard-provider"] == "switchyard"
    assert raw.headers["x-switchyard-served-model"] == SMOLLM
