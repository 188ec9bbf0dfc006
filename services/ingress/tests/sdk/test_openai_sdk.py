"""The official OpenAI SDK against the real stack: ingress -> JetStream -> translator ->
mock OpenAI provider, and back.

The mock is deterministic: the reply is "echo: " + the last user message; usage
prompt_tokens = whitespace-separated words over all message texts, completion_tokens =
the number of chunks (4 by default).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import openai
from openai import OpenAI
import pytest

from conftest import make_client

MODEL = "openai/gpt-4o-mini"
EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
MOCK_CHUNKS = 4
# One model per provider: the same SDK call reaches OpenAI's, Anthropic's and Gemini's
# wire formats (each mock speaks its provider's own), switching only the model id.
MODELS = ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5", "google/gemini-2.5-flash"]
PROVIDERS = [m.split("/")[0] for m in MODELS]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def conversation(prompt: str) -> list[dict]:
    return [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": prompt},
    ]


def expected_prompt_tokens(messages: list[dict]) -> int:
    return sum(len(m["content"].split()) for m in messages)


@pytest.mark.parametrize("model", MODELS)
def test_chat_completion(client, model):
    prompt = f"Say hello to the switchyard {uuid.uuid4().hex[:8]}"
    messages = conversation(prompt)

    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages)
    assert raw.headers["x-switchyard-provider"] == model.split("/")[0]
    resp = raw.parse()

    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == f"echo: {prompt}"
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == expected_prompt_tokens(messages) == 11
    assert resp.usage.completion_tokens == MOCK_CHUNKS
    assert resp.usage.total_tokens == 11 + MOCK_CHUNKS


@pytest.mark.parametrize("model", MODELS)
def test_chat_completion_stream(client, model):
    prompt = f"Stream this back to me {uuid.uuid4().hex[:8]}"
    messages = conversation(prompt)

    stream = client.chat.completions.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    content, content_chunks, finish_reasons, usages = "", 0, [], []
    for chunk in stream:
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for choice in chunk.choices:
            if choice.delta.content:
                content += choice.delta.content
                content_chunks += 1
            if choice.finish_reason is not None:
                finish_reasons.append(choice.finish_reason)

    assert content == f"echo: {prompt}"
    assert content_chunks >= 2, "the answer should arrive in several chunks"
    assert finish_reasons and finish_reasons[-1] == "stop"
    assert len(usages) == 1
    assert usages[0].prompt_tokens == expected_prompt_tokens(messages)
    assert usages[0].completion_tokens == MOCK_CHUNKS
    assert usages[0].total_tokens == expected_prompt_tokens(messages) + MOCK_CHUNKS


@pytest.mark.parametrize("model", MODELS)
def test_tool_call_round_trip(client, model):
    messages = [{"role": "user", "content": 'call:get_weather {"city": "Paris"}'}]
    first = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    # Send the tool's answer back: the provider must see it (the mocks echo it).
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'},
    ]
    second = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    answer = second.choices[0]
    assert answer.finish_reason == "stop"
    assert answer.message.content.startswith("echo: ")
    assert "18" in answer.message.content


@pytest.mark.parametrize("model", MODELS)
def test_streamed_tool_call_arrives_whole(client, model):
    stream = client.chat.completions.create(
        model=model, stream=True, tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": 'call:get_weather {"city": "Oslo"}'}],
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                assert call.index == 0
                name += (call.function.name or "") if call.function else ""
                arguments += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    assert name == "get_weather"
    assert json.loads(arguments) == {"city": "Oslo"}
    assert finish == "tool_calls"


@pytest.mark.parametrize(
    "model, dropped",
    [("openai/gpt-4o-mini", None), ("anthropic/claude-sonnet-4-5", "seed,presence_penalty"),
     ("google/gemini-2.5-flash", "user")],
)
def test_params_a_provider_cannot_take_are_reported(client, model, dropped):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=conversation("hi"), seed=7, presence_penalty=0.5, user="u-1",
    )
    assert raw.headers.get("x-switchyard-dropped-params") == dropped
    body = json.loads(raw.text)
    assert body.get("dropped_params") == (dropped.split(",") if dropped else None)
    assert raw.parse().choices[0].message.content == "echo: hi"


def test_provider_parameters_are_reported_with_the_providers_own(client):
    raw = client.chat.completions.with_raw_response.create(
        model="anthropic/claude-sonnet-4-5", messages=conversation("hi"), seed=7,
        reasoning_effort="high", store=False, service_tier="auto",
    )
    # Anthropic has no seed and no reasoning levels; store=false and service_tier=auto
    # are defaults, nothing lost.
    assert raw.headers.get("x-switchyard-dropped-params") == "seed,reasoning_effort"
    assert json.loads(raw.text)["dropped_params"] == ["seed", "reasoning_effort"]
    assert raw.parse().choices[0].message.content == "echo: hi"
    # OpenAI takes both reasoning_effort and parallel_tool_calls: nothing dropped.
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": 'call:get_weather {"city": "Rome"}'}],
        tools=[WEATHER_TOOL], parallel_tool_calls=False, reasoning_effort="low",
    )
    assert raw.headers.get("x-switchyard-dropped-params") is None
    assert raw.parse().choices[0].message.tool_calls[0].function.name == "get_weather"


# OpenAI's own request options. `<provider>/mock-echo-params` answers with the request
# fields the provider received (all but the model and the conversation), so these check
# what reached each provider, not only what the gateway says it did.
OPENAI_OPTIONS = {
    "service_tier": "flex", "store": True, "metadata": {"team": "a"},
    "logit_bias": {"50256": -100}, "prompt_cache_key": "pk-1", "safety_identifier": "h-42",
    "verbosity": "low",
}


def _received(client, provider: str, stream: bool, **kwargs) -> tuple[dict, str | None, set]:
    """What the provider received, the dropped-params header, and the service tiers the
    answer reported (every chunk's, when streamed)."""
    raw = client.chat.completions.with_raw_response.create(
        model=f"{provider}/mock-echo-params", messages=conversation("hi"), stream=stream,
        **({"stream_options": {"include_usage": True}} if stream else {}), **kwargs)
    if stream:
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        tiers = {c.service_tier for c in chunks}
    else:
        completion = raw.parse()
        text = completion.choices[0].message.content
        tiers = {completion.service_tier}
    received = json.loads(text)
    received.pop("max_tokens", None)  # Anthropic's, always sent
    return received, raw.headers.get("x-switchyard-dropped-params"), tiers


@pytest.mark.parametrize("stream", [False, True])
def test_openai_options_reach_openai_as_given(client, stream):
    received, dropped, tiers = _received(client, "openai", stream, user="u-1", **OPENAI_OPTIONS)
    assert received == {"user": "u-1", **OPENAI_OPTIONS}
    assert dropped is None
    # The tier OpenAI reports having used reaches the caller, on every chunk.
    assert tiers == {"flex"}
    assert _received(client, "openai", stream)[2] == {"default"}


@pytest.mark.parametrize("stream", [False, True])
def test_openai_options_elsewhere_are_mapped_or_reported(client, stream):
    received, dropped, tiers = _received(client, "anthropic", stream, user="u-1", **OPENAI_OPTIONS)
    # The end user goes to metadata.user_id, safety_identifier ahead of user (so user is
    # reported dropped); Anthropic has no flex tier, no stored completions, logit bias,
    # cache key or verbosity.
    assert received["metadata"] == {"user_id": "h-42"}
    assert not set(received) & {"service_tier", "store", "logit_bias", "prompt_cache_key", "verbosity"}
    assert dropped == "user,service_tier,store,metadata,logit_bias,prompt_cache_key,verbosity"
    # Anthropic's usage.service_tier "standard" is OpenAI's "default".
    assert tiers == {"default"}

    received, dropped, tiers = _received(client, "google", stream, user="u-1", **OPENAI_OPTIONS)
    sent = json.dumps(received)
    assert not [v for v in ("u-1", "h-42", "pk-1", "team", "50256", "flex") if v in sent], sent
    assert dropped == "user,service_tier,store,metadata,logit_bias,prompt_cache_key,safety_identifier,verbosity"
    assert tiers == {None}


def test_openai_service_tier_default_is_anthropics_standard_only(client):
    for ours, theirs in [("default", "standard_only"), ("auto", "auto")]:
        received, dropped, _ = _received(client, "anthropic", False, service_tier=ours)
        assert received["service_tier"] == theirs
        assert dropped is None


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, "functions"),
        ({"extra_body": {"max_token": 5}}, "max_token"),
        ({"service_tier": "fast"}, "service_tier"),
        ({"verbosity": "loud"}, "verbosity"),
        ({"metadata": {"team": 1}}, "metadata"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"logit_bias": {"50256": 101}}, "logit_bias"),
        ({"logit_bias": {"the": 1}}, "logit_bias"),
    ],
)
def test_unsupported_unknown_and_out_of_range_parameters_are_400s(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=conversation("hi"), **kwargs)
    assert err.value.body["param"] == param
    if param == "max_token":
        assert err.value.body["message"] == "Unrecognized request argument supplied: max_token"


# Structured outputs: the mocks answer a JSON request with {"echo": <last user text>,
# "schema": <the schema the provider received, null in JSON mode>}, so these check that
# each provider got the schema in its own field (OpenAI response_format, Anthropic
# output_config.format, Gemini generationConfig.responseJsonSchema) and intact.
EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "day": {"type": "string", "enum": ["Mon", "Tue", "Wed"]},
        "people": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "day", "people"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", MODELS)
def test_structured_output_reaches_every_provider(client, model, stream):
    prompt = f"Lunch on Tuesday {uuid.uuid4().hex[:6]}"
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "event", "strict": True, "schema": EVENT_SCHEMA},
    }
    if stream:
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model=model, messages=conversation(prompt), response_format=response_format, stream=True,
            )
            if c.choices
        )
    else:
        text = client.chat.completions.create(
            model=model, messages=conversation(prompt), response_format=response_format,
        ).choices[0].message.content
    assert json.loads(text) == {"echo": prompt, "schema": EVENT_SCHEMA}


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "google/gemini-2.5-flash"])
def test_json_mode(client, model):
    reply = client.chat.completions.create(
        model=model, messages=conversation("json please"), response_format={"type": "json_object"},
    )
    assert json.loads(reply.choices[0].message.content) == {"echo": "json please", "schema": None}


def test_json_mode_where_it_does_not_exist_is_a_400_not_free_text(client):
    # Anthropic has structured outputs but no schema-less JSON mode.
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="anthropic/claude-sonnet-4-5", messages=conversation("hi"),
            response_format={"type": "json_object"},
        )
    assert err.value.body["param"] == "response_format"
    assert "json_schema" in err.value.body["message"]
    # ... also as a fallback model: refused before anything is sent.
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=conversation("hi"),
            response_format={"type": "json_object"}, extra_body={"models": ["anthropic/claude-sonnet-4-5"]},
            extra_headers={"provider-key-anthropic": "sk-ant-mock-good"},
        )
    assert err.value.body["param"] == "models[0]"


@pytest.mark.parametrize(
    "response_format, param",
    [
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": EVENT_SCHEMA}}, "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": EVENT_SCHEMA}},
         "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "event", "schema": "object"}},
         "response_format.json_schema.schema"),
    ],
)
def test_bad_response_formats_are_400s_naming_the_field(client, response_format, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=conversation("hi"), response_format=response_format)
    assert err.value.body["param"] == param


def test_text_response_format_is_plain_text(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=conversation("plain"), response_format={"type": "text"},
    )
    assert reply.choices[0].message.content == "echo: plain"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_provider_rate_limit_is_429_with_retry_after(client, provider):
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model=f"{provider}/mock-error-429", messages=conversation("hi"))
    assert err.value.status_code == 429
    retry_after = err.value.response.headers.get("retry-after")
    assert retry_after is not None, "a 429 must tell the caller when to retry"
    assert int(retry_after) >= 1


def test_provider_server_error(client):
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="openai/mock-error-500", messages=conversation("hi"))
    assert err.value.status_code >= 500


@pytest.mark.parametrize("model", MODELS)
def test_wrong_provider_key(sy, model):
    wrong = make_client(sy, provider_key=f"sk-wrong-{uuid.uuid4().hex}")
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.chat.completions.create(model=model, messages=conversation("hi"))
    assert err.value.status_code == 401


def test_wrong_switchyard_api_key(sy, canary):
    wrong = make_client(sy, provider_key=canary, api_key=f"sy-dev-{uuid.uuid4().hex}")
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.chat.completions.create(model=MODEL, messages=conversation("hi"))
    assert err.value.status_code == 401


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nosuch/model", messages=conversation("hi"))
    assert err.value.status_code == 404


def test_fallback_model_serves_when_the_first_fails(sy, canary):
    client = OpenAI(base_url=sy.api_base, api_key=sy.dev_api_key, max_retries=0, timeout=30,
                    default_headers={"provider-key": canary, "provider-key-anthropic": canary})
    raw = client.chat.completions.with_raw_response.create(
        model="openai/mock-error-503", messages=conversation("plan b"),
        extra_body={"models": ["anthropic/claude-sonnet-4-5"]},
    )
    assert raw.headers["x-switchyard-provider"] == "anthropic"
    assert raw.headers["x-switchyard-served-model"] == "claude-sonnet-4-5"
    assert raw.parse().choices[0].message.content == "echo: plan b"


def test_fallback_without_its_provider_key_is_refused(client):
    with pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=conversation("hi"),
            extra_body={"models": ["google/gemini-2.5-flash"]},
        )
    assert "provider-key-google" in err.value.message


def _mock_stats(sy) -> dict:
    root = sy.mock_url[: -len("/v1")]
    with urllib.request.urlopen(f"{root}/mock/stats", timeout=5) as r:
        return json.load(r)


def test_a_caller_who_leaves_mid_stream_closes_the_upstream_call(sy, client):
    # mock-slow streams 50 chunks 100 ms apart; the caller reads one and hangs up. The
    # ingress publishes cancel.<request>, the translator drops the provider call, and the
    # mock sees its stream abandoned long before the 5 s it would take to finish.
    before = _mock_stats(sy)["dropped_streams"]
    stream = client.chat.completions.create(
        model="openai/mock-slow", messages=conversation("take your time"), stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    stream.close()
    deadline = time.monotonic() + 4
    while _mock_stats(sy)["dropped_streams"] == before:
        assert time.monotonic() < deadline, "the upstream stream was never closed"
        time.sleep(0.05)
    assert _mock_stats(sy)["dropped_streams"] == before + 1


def test_models_list_names_every_provider(client):
    models = client.models.list()
    owners = {m.owned_by for m in models.data}
    # Closed models by provider; open models (our own workers) as "switchyard".
    assert owners == {"openai", "anthropic", "google", "switchyard"}
    assert set(MODELS) <= {m.id for m in models.data}
    open_models = {m.id for m in models.data if m.owned_by == "switchyard"}
    assert {EMBEDDER, "HuggingFaceTB/SmolLM2-135M-Instruct"} <= open_models


# --- embeddings: the 4xx paths, which need no inference worker ------------------------
# (The SDK sends encoding_format="base64" unless told otherwise; answers are tested in
# the Rust suite against a stand-in worker, and end to end once the worker lands.)


def test_embeddings_to_a_chat_model_is_a_400_saying_why(client):
    for model in ("openai/gpt-4o-mini", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        with pytest.raises(openai.BadRequestError) as err:
            client.embeddings.create(model=model, input="hello")
        assert err.value.status_code == 400
        assert err.value.param == "model"
        assert "does not do feature-extraction" in err.value.message, err.value.message
        assert EMBEDDER in err.value.message, "the error names a model that does"


def test_embeddings_of_an_unknown_open_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="acme/no-such-embedder", input="hello")
    assert err.value.code == "model_not_found"
    assert "GET /v1/models" in err.value.message


@pytest.mark.parametrize(
    "bad, param",
    [
        ([[101, 7592, 102]], "input"),  # token ids: only text is accepted
        ([101, 7592, 102], "input"),
        ([], "input"),
        (["fine", ""], "input[1]"),
    ],
)
def test_embeddings_refuse_what_is_not_text(client, bad, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=EMBEDDER, input=bad)
    assert err.value.param == param, err.value.message


def test_embeddings_refuse_a_bad_encoding_format_and_zero_dimensions(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=EMBEDDER, input="x", extra_body={"encoding_format": "int8"})
    assert err.value.param == "encoding_format"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=EMBEDDER, input="x", dimensions=0)
    assert err.value.param == "dimensions"


def test_chat_to_the_embedder_is_a_400_naming_what_it_serves(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=EMBEDDER, messages=conversation("hi"))
    assert (
        f"the model '{EMBEDDER}' does not do chat; it serves feature-extraction, zero-shot-classification"
        in err.value.message
    )


def test_metrics_endpoint(sy):
    with urllib.request.urlopen(f"{sy.ingress_url}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.read().strip(), "metrics should not be empty"


# --- secrets at rest ------------------------------------------------------------------
# Last in the file on purpose: it stops and restarts the translator, and its log check
# covers the traffic of every test above.


def _requests_pending(sy) -> int:
    url = f"{sy.nats_monitor_url}/jsz?streams=true"
    with urllib.request.urlopen(url, timeout=5) as r:
        jsz = json.load(r)
    return sum(
        s["state"]["messages"]
        for acct in jsz.get("account_details", [])
        for s in acct.get("stream_detail", [])
        if s["name"] == "REQUESTS"
    )


def _all_bytes(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_provider_key_and_prompt_never_at_rest(sy, client, canary):
    # REQUESTS is a work queue: once the translator acks a request, the message is
    # deleted and may or may not still sit in a block file — a search after the fact
    # proves nothing either way. So stop the translator first: the request then waits,
    # unacked, in the stream while we read the store. single.conf sets
    # sync_interval: always, so the PubAck that let the ingress go on means the message
    # is written to the block file. The clear-text model id in the envelope must be
    # found there (proves the search sees stored messages); the provider key and the
    # prompt, which are sealed, must not.
    prompt = f"the secret prompt {uuid.uuid4().hex}"
    sy.stop_service("translator")
    result: dict = {}

    def call() -> None:
        try:
            result["resp"] = client.chat.completions.create(model=MODEL, messages=conversation(prompt))
        except Exception as e:  # reported by the main thread below
            result["error"] = e

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    try:
        deadline = time.monotonic() + 15
        while _requests_pending(sy) == 0:
            assert time.monotonic() < deadline, "the request never reached the REQUESTS stream"
            assert caller.is_alive(), f"the call ended without a translator: {result}"
            time.sleep(0.05)

        store = _all_bytes(sy.nats_store_dir)
        held = {p: d for p, d in store.items() if "REQUESTS" in p.parts}
        assert held, f"no REQUESTS stream files under {sy.nats_store_dir}"
        assert any(MODEL.encode() in data for data in held.values()), (
            "the clear-text model id of the held request is not in the REQUESTS stream's "
            "files: this search cannot see stored messages, so it proves nothing"
        )
        for path, data in store.items():
            assert canary.encode() not in data, f"provider key at rest in {path}"
            assert prompt.encode() not in data, f"prompt at rest in {path}"
    finally:
        sy.start_service("translator")
        caller.join(30)

    assert not caller.is_alive(), "the held request did not finish after the translator came back"
    assert "error" not in result, f"the held request failed: {result.get('error')!r}"
    assert result["resp"].choices[0].message.content == f"echo: {prompt}"

    # Logs and every other file the stack wrote: generated keys, the store, the logs of
    # ingress, translator, nats-server and `switchyard-nats apply` — and the mock
    # provider's too (it plays OpenAI, but it is our code and redacts keys as well).
    files = _all_bytes(sy.run_dir)
    assert sy.logs["ingress"] in files and files[sy.logs["ingress"]], "the ingress wrote no log"
    assert sy.logs["translator"] in files and files[sy.logs["translator"]], "the translator wrote no log"
    for path, data in files.items():
        assert canary.encode() not in data, f"provider key found in {path}"
        assert prompt.encode() not in data, f"prompt found in {path}"
