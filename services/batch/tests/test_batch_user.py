"""A batch account's own NATS user, end to end: the whole stack with NATS auth on (as
`just up` runs it), a user made by `switchyard-nats batch-user add` and loaded by a
reload, and both example publishers logging in as that user — 1,000 chat rows and 200
embedding rows, exactly one result each, a re-run publishing nothing — while the server
refuses what the user may not do."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import msgpack
import nats
import nats.errors
import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "infra"))

import stack  # noqa: E402

ACCOUNT = "dev"  # the static inference instance serves account dev
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
PYTHON_EXAMPLE = REPO / "services" / "batch" / "examples" / "batch.py"
# Subjects of each stream that no legitimate traffic in this test uses.
REFUSED = ("batch.globex.job", "req.open.nomodel.globex", "breq.open.nomodel.globex",
           "usage.tokens.globex")


@pytest.fixture(scope="module")
def sy(tmp_path_factory: pytest.TempPathFactory):
    cfg = stack.StackConfig.ephemeral(
        tmp_path_factory.mktemp("stack"),
        bin_dir=stack.default_bin_dir(),
        open_models=[MINILM],
        inference_threads=1,
    )
    assert cfg.nats_auth, "the stack runs NATS with users and permissions by default"
    with stack.Stack(cfg) as s:
        yield s


def host_port(url: str) -> str:
    return urllib.parse.urlparse(url).netloc.rsplit("@", 1)[-1]


@pytest.fixture(scope="module")
def user_url(sy) -> str:
    """A batch user for account dev, added the documented way, then a reload."""
    users = sy.run_dir / "nats-batch-users.conf"
    out = subprocess.run(
        [str(sy.cfg.bin_dir / "switchyard-nats"), "batch-user", "add", "--account", ACCOUNT,
         "--users-file", str(users)],
        capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)
    password = out.stdout.strip()
    assert len(password) >= 32 and password not in out.stderr
    os.kill(sy.services[stack.NATS].proc.pid, signal.SIGHUP)
    url = f"nats://{ACCOUNT}:{password}@{host_port(sy.nats_url)}"

    async def logs_in() -> None:
        # The reload is asynchronous: try until the new user is accepted (bounded).
        for _ in range(100):
            try:
                nc = await nats.connect(url, inbox_prefix=f"_INBOX_{ACCOUNT}".encode(),
                                        allow_reconnect=False, max_reconnect_attempts=0,
                                        connect_timeout=1)
                await nc.close()
                return
            except Exception:  # noqa: BLE001 - refused until the reload lands
                await asyncio.sleep(0.05)
        raise AssertionError("the new batch user cannot log in after the reload")

    asyncio.run(logs_in())
    return url


def run_example(cmd: list[str], url: str, *args: str, key: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "BATCH_PROVIDER_KEY")}
    env["NATS_URL"] = url
    if key:
        env["BATCH_PROVIDER_KEY"] = key
    res = subprocess.run(cmd + ["--account", ACCOUNT, "--idle-timeout-secs", "60", *args],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    password = urllib.parse.urlparse(url).password
    assert password not in res.stderr and password not in res.stdout
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_python_example_as_the_batch_user(sy, user_url):
    cmd = [sys.executable, str(PYTHON_EXAMPLE), "--inbox-prefix", f"_INBOX_{ACCOUNT}"]
    first = run_example(cmd, user_url, "--job", "py-auth", "--count", "1000", key=sy.mock_api_key)
    assert (first["published"], first["results"], first["ok"]) == (1000, 1000, 1000), first
    again = run_example(cmd, user_url, "--job", "py-auth", "--count", "1000", key=sy.mock_api_key)
    assert (again["published"], again["already_answered"], again["results"]) == (0, 1000, 1000), again
    emb = run_example(cmd, user_url, "--job", "py-embed", "--count", "200", "--task", "embeddings",
                      "--model", MINILM, key=None)
    assert (emb["results"], emb["ok"]) == (200, 200), emb


def test_rust_example_as_the_batch_user(sy, user_url):
    binary = sy.cfg.bin_dir / "examples" / "batch"
    assert binary.exists(), f"{binary} missing: `just build` builds the examples"
    # No --inbox-prefix: the example takes _INBOX_<account> for a batch user's URL.
    first = run_example([str(binary)], user_url, "--job", "rs-auth", "--count", "300", key=sy.mock_api_key)
    assert (first["published"], first["results"], first["ok"]) == (300, 300, 300), first


def test_the_batch_user_may_do_nothing_else(sy, user_url):
    async def check() -> None:
        nc = await nats.connect(user_url, inbox_prefix=f"_INBOX_{ACCOUNT}".encode())
        js = nc.jetstream(timeout=1)
        # Its own subject: a PubAck from BATCH (a duplicate-free probe with a bad body:
        # the router answers it with an error result, which is fine).
        ack = await js.publish(f"batch.{ACCOUNT}.probe", b"\xc1", headers={"Nats-Msg-Id": "probe-1"})
        assert ack.stream == "BATCH"
        # Another account's batch subject, the workers' queues, billing: refused by the
        # server, so no PubAck ever comes.
        for subject in REFUSED:
            with pytest.raises((nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError)):
                await js.publish(subject, msgpack.packb({"x": 1}))
        # Another account's results cannot be read, not even by direct get.
        with pytest.raises(Exception):  # noqa: B017 - permission violation → timeout
            await js.get_msg("RESULTS", subject="res.globex.job.x", direct=True)
        await nc.close()
    asyncio.run(check())
    # As the internal user: nothing of the refused publishes was stored.
    async def stored() -> int:
        nc = await nats.connect(sy.nats_url)
        js = nc.jetstream()
        n = 0
        for stream, subject in zip(("BATCH", "REQUESTS", "BATCHWORK", "USAGE_TOKENS"), REFUSED):
            info = await js.stream_info(stream, subjects_filter=subject)
            n += sum((info.state.subjects or {}).values())
        await nc.close()
        return n
    assert asyncio.run(stored()) == 0
