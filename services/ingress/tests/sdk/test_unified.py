"""The unified route, POST /models/v2/<model id>, over plain HTTP against the real stack:
ingress -> JetStream -> translator -> mock provider (each speaking its own wire format).

The mock is deterministic: the reply is "echo: " + the last user message; input tokens =
whitespace-separated words over all message texts, output tokens = the number of
chunks (4).
"""

from __future__ import annotations

import json
import uuid

import pytest

try:
    import httpx
except ModuleNotFoundError:  # the openai SDK here ships httpx as `httpx2`
    import httpx2 as httpx

MOCK_CHUNKS = 4
MODELS = ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5", "google/gemini-2.5-flash"]


@pytest.fixture
def http(sy, canary):
    with httpx.Client(
        base_url=sy.ingress_url,
        headers={"Authorization": f"Bearer {sy.dev_api_key}", "provider-key": canary},
        timeout=30,
    ) as client:
        yield client


def words(*texts: str) -> int:
    return sum(len(t.split()) for t in texts)


def sse_events(lines) -> list[tuple[str, dict]]:
    """(event name, data) pairs of an SSE body; comments (keep-alives) are skipped."""
    events, name, data = [], None, []
    for line in lines:
        if line == "":
            if data:
                events.append((name or "message", json.loads("\n".join(data))))
            name, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[len("event:"):].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:"):].lstrip(" "))
    if data:
        events.append((name or "message", json.loads("\n".join(data))))
    return events


@pytest.mark.parametrize("model", MODELS)
def test_text_shorthand(http, model, canary):
    text = f"Say hello to the switchyard {uuid.uuid4().hex[:8]}"
    r = http.post(f"/models/v2/{model}", json={"text": text, "params": {"max_tokens": 50}})
    assert r.status_code == 200, r.text
    assert canary not in r.text
    body = r.json()
    provider = model.split("/")[0]
    assert body["output"] == {"role": "assistant", "content": f"echo: {text}"}
    assert body["finish_reason"] == "stop"
    assert body["provider"] == provider
    assert r.headers["x-switchyard-provider"] == provider
    assert body["model"] == model
    assert "served_model" in body
    assert body["usage"]["input_tokens"] == words(text) == 6
    assert body["usage"]["output_tokens"] == MOCK_CHUNKS
    assert body["error"] is None
    assert body["request_id"] == r.headers["x-request-id"]


@pytest.mark.parametrize("model", MODELS)
def test_messages(http, model):
    prompt = f"Answer me this {uuid.uuid4().hex[:8]}"
    messages = [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": prompt},
    ]
    r = http.post(f"/models/v2/{model}", json={"messages": messages})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["output"]["content"] == f"echo: {prompt}"
    assert body["provider"] == model.split("/")[0]
    assert body["usage"]["input_tokens"] == words(*(m["content"] for m in messages)) == 9
    assert body["usage"]["output_tokens"] == MOCK_CHUNKS


@pytest.mark.parametrize("model", MODELS)
def test_stream(http, model):
    text = f"Stream this back to me {uuid.uuid4().hex[:8]}"
    with http.stream("POST", f"/models/v2/{model}", json={"text": text, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    names = [name for name, _ in events]
    assert names[-1] == "done", names
    assert set(names[:-1]) == {"chunk"}, names
    chunks = [data for name, data in events if name == "chunk"]
    assert "".join(c["delta"].get("content", "") for c in chunks) == f"echo: {text}"
    assert [c["finish_reason"] for c in chunks if "finish_reason" in c] == ["stop"]
    done = events[-1][1]
    assert done["provider"] == model.split("/")[0]
    assert done["finish_reason"] == "stop"
    assert done["usage"]["input_tokens"] == words(text) == 6
    assert done["usage"]["output_tokens"] == MOCK_CHUNKS


@pytest.mark.parametrize("model", MODELS)
def test_provider_rate_limit(http, model):
    provider = model.split("/")[0]
    r = http.post(f"/models/v2/{provider}/mock-error-429", json={"text": "hi"})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert body["error"]["kind"] == "rate_limited"
    assert body["output"] is None and body["usage"] is None
    assert body["provider"] == provider


def test_key_authorization_and_bad_input(sy, canary):
    with httpx.Client(base_url=sy.ingress_url, timeout=30) as client:
        ok = client.post(
            "/models/v2/openai/gpt-4o-mini",
            headers={"Authorization": f"Key {sy.dev_api_key}", "provider-key": canary},
            json={"text": "hi"},
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["output"]["content"] == "echo: hi"
        both = client.post(
            "/models/v2/openai/gpt-4o-mini",
            headers={"Authorization": f"Key {sy.dev_api_key}", "provider-key": canary},
            json={"text": "hi", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert both.status_code == 400
        assert both.json()["error"]["param"] == "text"
        wrong = client.post(
            "/models/v2/openai/gpt-4o-mini",
            headers={"Authorization": f"Key sy-dev-{uuid.uuid4().hex}", "provider-key": canary},
            json={"text": "hi"},
        )
        assert wrong.status_code == 401
        assert wrong.json()["error"]["kind"] == "authentication"


@pytest.mark.parametrize(
    "model, dropped",
    [("openai/gpt-4o-mini", None), ("anthropic/claude-sonnet-4-5", ["seed"]),
     ("google/gemini-2.5-flash", ["user"])],
)
def test_params_a_provider_cannot_take_are_reported(http, model, dropped):
    r = http.post(f"/models/v2/{model}", json={"text": "hi", "params": {"seed": 7, "user": "u-1"}})
    assert r.status_code == 200, r.text
    assert r.json().get("dropped_params") == dropped
    assert r.headers.get("x-switchyard-dropped-params") == (",".join(dropped) if dropped else None)
    assert r.json()["output"]["content"] == "echo: hi"


def test_structured_output_through_the_unified_route(http):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    response_format = {"type": "json_schema", "json_schema": {"name": "count", "schema": schema}}
    r = http.post("/models/v2/google/gemini-2.5-flash",
                  json={"text": "count it", "response_format": response_format})
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["output"]["content"]) == {"echo": "count it", "schema": schema}
    # Only chat takes a response format.
    r = http.post("/models/v2/sentence-transformers/all-MiniLM-L6-v2",
                  json={"inputs": ["a"], "response_format": response_format})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "response_format"
