"""Fixtures: the real Switchyard stack (nats-server, translator, ingress, mock OpenAI
provider) from infra/stack.py, on free ports in a temp dir, once per test module.

Binaries come from $SWITCHYARD_BIN_DIR (set by `just test`), else cargo's debug dir.
Missing binaries or a stack that does not come up are errors, never skips.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
from openai import OpenAI

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "infra"))

import stack  # noqa: E402  (infra/stack.py)


@pytest.fixture(scope="module")
def canary() -> str:
    """The caller's provider key: unique, so finding it anywhere on disk is a leak."""
    return f"sk-canary-{uuid.uuid4().hex}"


def module_stack(tmp_path_factory: pytest.TempPathFactory, canary: str, **kw) -> stack.Stack:
    """A stack of a test module's own, in a temp dir, on free ports; the mock provider
    accepts only the canary key. `kw`: further StackConfig settings."""
    cfg = stack.StackConfig.ephemeral(
        tmp_path_factory.mktemp("stack"),
        bin_dir=stack.default_bin_dir(),
        mock_api_key=canary,
        **kw,
    )
    return stack.Stack(cfg)


@pytest.fixture(scope="module")
def sy(tmp_path_factory: pytest.TempPathFactory, canary: str):
    """The running stack, for modules that do not define their own."""
    with module_stack(
        tmp_path_factory, canary,
        # Debug logs from every crate: more log lines, more chances to catch a leak.
        rust_log="debug",
        # The store in plaintext: the at-rest test must see what the services themselves
        # put on disk (sealed bodies), not nats-server's encryption of it (that one is
        # tested in nats/tests/batch_auth.rs).
        nats_store_encryption=False,
    ) as s:
        yield s


def make_client(sy: stack.Stack, provider_key: str, api_key: str | None = None) -> OpenAI:
    return OpenAI(
        base_url=sy.api_base,
        api_key=api_key or sy.dev_api_key,
        default_headers={"provider-key": provider_key},
        max_retries=0,
        timeout=30,
    )


@pytest.fixture
def client(sy: stack.Stack, canary: str) -> OpenAI:
    return make_client(sy, canary)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test shows the tail of every service's log (the keys here are test keys)."""
    report = yield
    sy = getattr(item, "funcargs", {}).get("sy")
    if report.when == "call" and report.failed and sy is not None:
        for name, path in sy.logs.items():
            report.sections.append((f"{name} log: {path}", stack.tail(path, 25)))
    return report
