"""infra/stack.py: the secrets it generates are ones nats-server can load."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack  # noqa: E402

# How the shipped configs use the password (infra/nats/single-auth.conf's include).
CONF = 'authorization { users = [ { user: "switchyard", password: $SWITCHYARD_NATS_PASSWORD } ] }\n'


def validate(tmp_path: Path, password: str) -> subprocess.CompletedProcess:
    """`nats-server -t` (check the config, then exit) with `password` in the environment."""
    conf = tmp_path / "auth.conf"
    conf.write_text(CONF)
    env = {"PATH": os.environ.get("PATH", ""), "SWITCHYARD_NATS_PASSWORD": password}
    return subprocess.run([str(stack.find_nats_server()), "-c", str(conf), "-t"],
                          env=env, capture_output=True, text=True, timeout=30)


def test_a_password_starting_with_a_dash_does_not_load(tmp_path):
    # What URL-safe base64 produced 1 time in 64: nats-server takes it for a number.
    bad = "-" + "a" * 42
    res = validate(tmp_path, bad)
    assert res.returncode != 0
    assert "SWITCHYARD_NATS_PASSWORD" in res.stdout + res.stderr
    assert not stack.nats_password_ok(bad)
    assert not stack.nats_password_ok("1234")
    assert not stack.nats_password_ok("")


def test_generated_passwords_load_and_differ(tmp_path):
    seen = set()
    for _ in range(20):
        password = stack.nats_password()
        assert len(password) == 66 and stack.nats_password_ok(password)
        res = validate(tmp_path, password)
        assert res.returncode == 0, res.stdout + res.stderr
        seen.add(password)
    assert len(seen) == 20
