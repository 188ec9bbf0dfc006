"""The whole stack through a nats-server crash: kill -9 the server, start it again on the
same port and store, and every service must find its way back — the ingress (its reply
subscription, its JetStream publishes), the translator's and the inference instance's
pull consumers — without being restarted themselves. While the server is down, callers
get a prompt 503 with a message, not a hang.

The module has a stack of its own, with a MiniLM instance: the other modules never see
their nats-server go away.
"""

from __future__ import annotations

import time
import urllib.request
import uuid

import openai
import pytest

from conftest import module_stack, stack

MODEL = "openai/gpt-4o-mini"
EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
# Long enough for async-nats' reconnect back-off, the pull consumers' missed-heartbeat
# recovery (5 s heartbeats) and the ingress's first retry after that.
RECOVERY_DEADLINE_S = 60.0


def ask(client, text: str) -> str:
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}])
    return reply.choices[0].message.content


def until_answered(call, deadline_s: float):
    """Calls `call` until it returns without an API error or the deadline passes; returns
    its result and the status codes of the failures seen on the way."""
    statuses: list[int | str] = []
    end = time.monotonic() + deadline_s
    while True:
        try:
            return call(), statuses
        except openai.APIStatusError as e:
            statuses.append(e.status_code)
        except openai.APIConnectionError as e:  # includes timeouts
            statuses.append(type(e).__name__)
        if time.monotonic() > end:
            pytest.fail(f"no answer within {deadline_s} s after the restart; failures: {statuses}")
        time.sleep(0.2)  # retry pacing, not synchronisation: each try is checked


@pytest.fixture(scope="module")
def sy(tmp_path_factory: pytest.TempPathFactory, canary: str):
    with module_stack(tmp_path_factory, canary, open_models=[EMBEDDER], inference_threads=1) as s:
        yield s


def translator_expired(sy) -> float:
    with urllib.request.urlopen(f"{sy.translator_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("translator_expired_total "):
            return float(line.split()[1])
    raise AssertionError(f"no translator_expired_total in:\n{text}")


def test_the_stack_answers_again_after_nats_server_is_killed_and_restarted(sy, client):
    before = f"before {uuid.uuid4().hex[:8]}"
    assert ask(client, before) == f"echo: {before}"
    expired_before = translator_expired(sy)

    nats = sy.services[stack.NATS]
    nats.proc.kill()
    nats.proc.wait()

    # Down: a prompt, clear refusal (the SDK's own timeout is 30 s; no retries).
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as refused:
        ask(client, "while the broker is down")
    waited = time.monotonic() - started
    assert refused.value.status_code == 503, refused.value
    assert "request queue is unavailable" in str(refused.value), refused.value
    assert waited < 15, f"the refusal took {waited:.1f} s"

    sy.start_service(stack.NATS)  # same port, same store directory; waits for /healthz

    after = f"after {uuid.uuid4().hex[:8]}"
    content, failures = until_answered(lambda: ask(client, after), RECOVERY_DEADLINE_S)
    assert content == f"echo: {after}"
    assert all(s == 503 for s in failures), failures

    # Streaming too: the reply subscription carries every chunk again.
    streamed = f"streamed {uuid.uuid4().hex[:8]}"
    chunks = client.chat.completions.create(
        model=MODEL, stream=True, messages=[{"role": "user", "content": streamed}])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"echo: {streamed}"

    # The refused request: the ingress's NATS client held its publish and sent it after
    # reconnecting, long after the 503. The translator must drop it unrun (`enqueue_by`),
    # not call the provider for nobody (and again for the caller's retry).
    end = time.monotonic() + 10
    while translator_expired(sy) < expired_before + 1 and time.monotonic() < end:
        time.sleep(0.1)  # polling a counter with a deadline; the assert below decides
    assert translator_expired(sy) >= expired_before + 1
    assert "stored after the ingress gave up on it" in sy.log_text(stack.TRANSLATOR)

    # And the open-model instance's pull consumer.
    vectors, _ = until_answered(
        lambda: client.embeddings.create(model=EMBEDDER, input=["a man plays the guitar"]),
        RECOVERY_DEADLINE_S)
    assert len(vectors.data[0].embedding) == 384
