#!/usr/bin/env python3
"""Start the whole local Switchyard stack: nats-server, `switchyard-nats apply`, the mock
provider, the translator, one inference instance per built open model, and the ingress (and, for `just up`, make sure Postgres is up and
migrated with `switchyard-admin migrate`; the ingress then checks accounts' API keys there).

With Postgres (`just up`) it also starts billing (usage events into Postgres).

One module, three callers, so the start-up logic exists once:

* `just up` / `just down` / `just logs` — the command line below (daemon mode): processes
  run in the background, their logs, pids and an `env` file live in the git-ignored `.run/`,
  `up` returns once everything answers `/healthz`, `down` stops exactly what `up` started.
* the Python end-to-end tests — `with Stack(StackConfig.ephemeral(tmp, ...)) as s:` runs
  everything on free ports in a temp dir and kills it on exit; logs stay in files.
* the benchmark (`loadtest/bench.py`) — the same, with the release binaries.

Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
SINGLE_CONF = REPO / "infra" / "nats" / "single.conf"
DEFAULT_RUN_DIR = REPO / ".run"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/switchyard"
DEFAULT_INGRESS_BIND = "127.0.0.1:8080"
MOCK_API_KEY_UP = "sk-mock-local"  # the mock provider's key for `just up` (it is a mock)
MIN_NATS = (2, 12)  # async-nats 0.51 needs a current server for KV; Debian's 2.9 is too old
BINARIES = ("switchyard-nats", "switchyard-ingress", "switchyard-translator", "switchyard-batch",
            "mock-provider")
ADMIN = "switchyard-admin"  # needed only with Postgres (`just up`): migrates the database
BILLING_BIN = "switchyard-billing"  # only with Postgres: usage events into the billing tables
INFERENCE_BIN = "switchyard-inference"
CATALOG = REPO / "schemas" / "catalog" / "models.json"
DEFAULT_MODELS_DIR = REPO / ".models"

# Services in start order; `down` and `close()` stop them in reverse.
NATS, MOCK, TRANSLATOR, INGRESS = "nats-server", "mock-provider", "translator", "ingress"
AUTOSCALER = "autoscaler"
BILLING = "billing"
BATCH_ROUTER = "batch-router"


class StackError(RuntimeError):
    """The stack could not be started; the message says what to do."""


# --------------------------------------------------------------------------- helpers


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    # SO_REUSEADDR like the servers themselves (Go and Rust set it), so a port that only
    # has TIME_WAIT leftovers counts as free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class _Ports:
    """Hands out ports, never the same one twice in one stack."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def any_free(self) -> int:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in self.taken:
                self.taken.add(port)
                return port
        raise StackError("no free TCP port found")

    def preferred(self, port: int, scan: bool = False) -> int:
        """`port` when free; else (scan) the first free one above it, else any free one."""
        candidates = range(port, port + 100) if scan else [port]
        for p in candidates:
            if p not in self.taken and _port_free(p):
                self.taken.add(p)
                return p
        return self.any_free()


def _split_hostport(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise StackError(f"expected HOST:PORT, got {bind!r}")
    return host.strip("[]"), int(port)


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::", "*") else host


def _http_status(url: str, timeout: float = 1.0) -> Optional[int]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def _tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def nats_server_info(url: str, timeout: float = 2.0) -> dict:
    """The INFO a NATS server sends on connect (version, jetstream, ...), via plain TCP."""
    u = urllib.parse.urlparse(url if "://" in url else f"nats://{url}")
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 4222), timeout=timeout) as s:
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    line = buf.split(b"\r\n", 1)[0].decode()
    if not line.startswith("INFO "):
        raise StackError(f"{url} did not greet like a NATS server: {line[:80]!r}")
    return json.loads(line[5:])


def mask_url(url: str) -> str:
    """A URL fit to print: `nats://user:secret@host:4222` -> `nats://user:***@host:4222`."""
    u = urllib.parse.urlsplit(url)
    if u.password is None:
        return url
    host = u.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(u._replace(netloc=f"{u.username}:***@{host}"))


def _version_tuple(text: str) -> tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


def tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-64_000:].decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.splitlines()[-lines:])


def nats_password() -> str:
    """A new password for the internal NATS user. nats-server reads the value of
    `$SWITCHYARD_NATS_PASSWORD` as a config token, so one starting with `-` (which
    URL-safe base64 made 1 time in 64) or made of digits is taken for a number and the
    config does not load: letters and hex digits, a letter first."""
    return "sy" + secrets.token_hex(32)


def nats_password_ok(password: str) -> bool:
    """Whether nats-server takes `password` as a string (see `nats_password`)."""
    return bool(password) and password[0].isalpha() and password.isalnum()


def find_nats_server() -> Path:
    """The project's nats-server: $SWITCHYARD_NATS_SERVER, else .tools/bin/nats-server.

    Never whatever `nats-server` is on PATH: on Debian that is 2.9, too old for KV.
    """
    env = os.environ.get("SWITCHYARD_NATS_SERVER")
    path = Path(env) if env else REPO / ".tools" / "bin" / "nats-server"
    if not path.exists():
        raise StackError(f"{path} not found: run `bash infra/install-tools.sh` (or `just tools`)")
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10)
    if _version_tuple(out.stdout + out.stderr)[:2] < MIN_NATS:
        raise StackError(f"{path} is {out.stdout.strip()}; need >= {MIN_NATS[0]}.{MIN_NATS[1]}")
    return path


def open_models() -> list[dict]:
    """The open models of the catalog (entries with an `open` section)."""
    return [m for m in json.loads(CATALOG.read_text())["models"] if m.get("open")]


def built_open_models(models_dir: Path) -> list[str]:
    """Ids of the catalog's open models whose files are in `models_dir`."""
    ids = []
    for m in open_models():
        o = m["open"]
        if (models_dir / o["dir"] / o["model_file"]).is_file():
            ids.append(m["id"])
    return ids


def find_ort_lib() -> Optional[Path]:
    """SWITCHYARD_ORT_LIB, else the `onnxruntime` wheel's library in .tools/venv."""
    env = os.environ.get("SWITCHYARD_ORT_LIB")
    if env:
        return Path(env)
    found = sorted((REPO / ".tools" / "venv" / "lib").glob("python*/site-packages/onnxruntime/capi/libonnxruntime.so.*"))
    return found[0] if found else None


def default_bin_dir(profile: str = "debug") -> Path:
    """Where cargo put the binaries: $SWITCHYARD_BIN_DIR, $CARGO_TARGET_DIR/<profile>, the
    Justfile's default target dir, or <repo>/target/<profile> — the first holding them."""
    if os.environ.get("SWITCHYARD_BIN_DIR"):
        return Path(os.environ["SWITCHYARD_BIN_DIR"])
    cands = []
    if os.environ.get("CARGO_TARGET_DIR"):
        cands.append(Path(os.environ["CARGO_TARGET_DIR"]) / profile)
    cands += [Path.home() / ".cache" / "switchyard" / "target" / profile, REPO / "target" / profile]
    for c in cands:
        if (c / "switchyard-ingress").exists():
            return c
    return cands[0]


def _child_setup(cpus: Optional[set[int]], die_with_parent: bool) -> Callable[[], None]:
    def setup() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        if die_with_parent:
            # PR_SET_PDEATHSIG: a killed test run must not leave servers behind.
            try:
                import ctypes

                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
            except Exception:
                pass

    return setup


# --------------------------------------------------------------------------- config


@dataclasses.dataclass
class StackConfig:
    run_dir: Path
    bin_dir: Path = dataclasses.field(default_factory=default_bin_dir)
    # Daemon mode (`just up`): children outlive this process, state is written to run_dir.
    detach: bool = False
    # Prefer the documented default ports (4222, 8080, ...) when free; else any free port.
    default_ports: bool = False
    # External services / values; None = start or generate our own.
    nats_url: Optional[str] = None
    ingress_bind: Optional[str] = None
    # Provider base URLs; each unset one points at the mock provider (started when any is unset).
    openai_base_url: Optional[str] = None
    anthropic_base_url: Optional[str] = None
    gemini_base_url: Optional[str] = None
    dev_api_key: Optional[str] = None
    seal_key: Optional[str] = None
    seal_key_file: Optional[str] = None
    # The key our nats-server encrypts its JetStream store with (single.conf's `cipher`);
    # None = generated once into run_dir/nats-store.key and reused by the next `up`.
    nats_store_key: Optional[str] = None
    # False: our nats-server runs single.conf without its `cipher` (store in plaintext),
    # for tests that must see what the services themselves put on disk (sealing).
    nats_store_encryption: bool = True
    # Our nats-server with users and permissions (nats/README.md): the services get a
    # NATS_URL with the internal user's password (generated into run_dir/nats-password)
    # and log in with it (switchyard_nats::connect). False: no users (anyone may connect).
    nats_auth: bool = True
    database_url: Optional[str] = None
    postgres: bool = False  # make sure Postgres is up and the database exists
    mock_api_key: str = MOCK_API_KEY_UP
    mock_args: list[str] = dataclasses.field(default_factory=list)
    rust_log: str = "info"
    # Static inference instances (account `dev`), one per model named; None = one per
    # built model when there is no autoscaler, none when there is.
    open_models: Optional[list[str]] = None
    # Run the autoscaler (process backend): clusters start instances on demand.
    autoscaler: bool = False
    # Length of an idle-timeout "minute" for the autoscaler, in ms (tests shrink it).
    idle_minute_ms: int = 60_000
    models_dir: Path = DEFAULT_MODELS_DIR
    ort_lib: Optional[Path] = None  # None: find_ort_lib()
    # ONNX Runtime threads per inference instance (0: one per core).
    inference_threads: int = 0
    # Pin the stack's processes to these CPUs (benchmark).
    cpus: Optional[set[int]] = None
    ready_timeout: float = 60.0
    quiet: bool = True

    @classmethod
    def from_env(cls, run_dir: Path = DEFAULT_RUN_DIR, environ: Optional[dict[str, str]] = None,
                 **kw) -> "StackConfig":
        """`just up`: every variable of DESIGN's "Defaults and contracts" that is set wins."""
        e = (os.environ if environ is None else environ).get
        return cls(
            run_dir=run_dir,
            detach=True,
            default_ports=True,
            nats_url=e("NATS_URL"),
            ingress_bind=e("INGRESS_BIND"),
            openai_base_url=e("SWITCHYARD_OPENAI_BASE_URL"),
            anthropic_base_url=e("SWITCHYARD_ANTHROPIC_BASE_URL"),
            gemini_base_url=e("SWITCHYARD_GEMINI_BASE_URL"),
            dev_api_key=e("SWITCHYARD_DEV_API_KEY"),
            seal_key=e("SWITCHYARD_SEAL_KEY"),
            seal_key_file=e("SWITCHYARD_SEAL_KEY_FILE"),
            nats_store_key=e("SWITCHYARD_NATS_STORE_KEY"),
            nats_auth=(e("SWITCHYARD_NATS_AUTH") or "1").lower() not in ("0", "false", "no"),
            database_url=e("DATABASE_URL") or DEFAULT_DATABASE_URL,
            postgres=True,
            rust_log=e("RUST_LOG") or "info",
            models_dir=Path(e("SWITCHYARD_MODELS_DIR") or DEFAULT_MODELS_DIR),
            autoscaler=True,
            quiet=False,
            **kw,
        )

    @classmethod
    def ephemeral(cls, run_dir: Path, **kw) -> "StackConfig":
        """Tests and benchmark: everything of our own, on free ports, ignoring the env.
        No inference instances unless `open_models` names them."""
        kw.setdefault("open_models", [])
        return cls(run_dir=Path(run_dir), **kw)


# --------------------------------------------------------------------------- the stack


@dataclasses.dataclass
class Service:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    health_url: Optional[str] = None  # GET -> 200 means ready
    tcp: Optional[tuple[str, int]] = None  # else: accepting connections means ready
    proc: Optional[subprocess.Popen] = None


class Stack:
    """The running stack. Use as a context manager, or `start()` / `close()`."""

    def __init__(self, cfg: StackConfig):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir).resolve()
        self.log_dir = self.run_dir / "logs"
        self.services: dict[str, Service] = {}
        self.ports = _Ports()
        self.postgres_started = False
        self.nats_url = ""
        self.nats_monitor_url: Optional[str] = None
        self.nats_store_dir: Optional[Path] = None  # None when NATS is external
        self.ingress_url = ""  # http://host:port
        self.translator_url = ""
        self.batch_url = ""
        self.billing_url = ""
        self.autoscaler_url = ""
        self.mock_url: Optional[str] = None  # http://host:port/v1
        self.openai_base_url = ""
        self.anthropic_base_url = ""
        self.gemini_base_url = ""
        self.dev_api_key = cfg.dev_api_key or ""
        self.mock_api_key = cfg.mock_api_key
        self.seal_key_file: Optional[Path] = None
        self.database_url = cfg.database_url

    # -- public ------------------------------------------------------------------

    @property
    def api_base(self) -> str:
        """The OpenAI-compatible base URL: give it to an SDK as base_url."""
        return f"{self.ingress_url}/v1"

    @property
    def logs(self) -> dict[str, Path]:
        return {name: s.log for name, s in self.services.items()}

    def __enter__(self) -> "Stack":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "Stack":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every process this Stack started, newest first."""
        for name in reversed(list(self.services)):
            self.stop_service(name)

    def stop_service(self, name: str, timeout: float = 10.0) -> None:
        svc = self.services[name]
        if svc.proc is not None and svc.proc.poll() is None:
            svc.proc.terminate()
            try:
                svc.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                svc.proc.kill()
                svc.proc.wait()
        svc.proc = None

    def start_service(self, name: str) -> None:
        """(Re)start one service with its original command and environment."""
        svc = self.services[name]
        self._spawn(svc)
        self._wait_ready(svc)

    def log_text(self, name: str) -> str:
        return self.services[name].log.read_text(errors="replace")

    def env_vars(self) -> dict[str, str]:
        """What a client (or `source .run/env`) needs to talk to this stack."""
        env = {
            "NATS_URL": self.nats_url,
            "SWITCHYARD_API_URL": self.api_base,
            "SWITCHYARD_DEV_API_KEY": self.dev_api_key,
            "INGRESS_BIND": self.services[INGRESS].env["INGRESS_BIND"] if INGRESS in self.services else "",
            "SWITCHYARD_OPENAI_BASE_URL": self.openai_base_url,
            "SWITCHYARD_ANTHROPIC_BASE_URL": self.anthropic_base_url,
            "SWITCHYARD_GEMINI_BASE_URL": self.gemini_base_url,
        }
        if self.seal_key_file:
            env["SWITCHYARD_SEAL_KEY_FILE"] = str(self.seal_key_file)
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        if self.mock_url:
            env["SWITCHYARD_MOCK_URL"] = self.mock_url[: -len("/v1")]
            env["SWITCHYARD_MOCK_API_KEY"] = self.mock_api_key
        return env

    # -- start-up ----------------------------------------------------------------

    def _say(self, msg: str) -> None:
        if not self.cfg.quiet:
            print(msg, flush=True)

    def _needs_mock(self) -> bool:
        cfg = self.cfg
        return not (cfg.openai_base_url and cfg.anthropic_base_url and cfg.gemini_base_url)

    def _start(self) -> None:
        cfg = self.cfg
        self.log_dir.mkdir(parents=True, exist_ok=True)
        needed = BINARIES + ((ADMIN, BILLING_BIN) if cfg.postgres else ())
        missing = [b for b in needed if not (cfg.bin_dir / b).exists()]
        if not self._needs_mock():
            missing = [b for b in missing if b != "mock-provider"]
        if missing:
            raise StackError(
                f"missing binaries in {cfg.bin_dir}: {', '.join(missing)} "
                "(build them: cargo build --workspace --bins, or `just build`)"
            )
        if not self.dev_api_key:
            self.dev_api_key = self._persisted("dev-api-key", lambda: f"sy-dev-{uuid.uuid4().hex}")
        base_env = self._base_env()

        if cfg.postgres:
            self._ensure_postgres()
            self._migrate(base_env)
        self._start_nats()
        self._apply_nats(base_env)

        if self._needs_mock():
            port = self.ports.preferred(9090) if cfg.default_ports else self.ports.any_free()
            bind = f"127.0.0.1:{port}"
            # One mock serves every provider's wire format on its own paths.
            self.mock_url = f"http://{bind}/v1"
            self._add(Service(
                MOCK,
                [str(cfg.bin_dir / "mock-provider"), "--bind", bind, *cfg.mock_args],
                # The key by env, not argv: argv is world-readable in /proc and `ps`.
                {**base_env, "MOCK_API_KEY": self.mock_api_key},
                self.log_dir / "mock-provider.log",
                tcp=("127.0.0.1", port),
            ))
        mock_root = self.mock_url[: -len("/v1")] if self.mock_url else ""
        self.openai_base_url = (cfg.openai_base_url or self.mock_url or "").rstrip("/")
        self.anthropic_base_url = (cfg.anthropic_base_url or mock_root).rstrip("/")
        self.gemini_base_url = (cfg.gemini_base_url or mock_root).rstrip("/")

        port = self.ports.preferred(8081) if cfg.default_ports else self.ports.any_free()
        tbind = f"127.0.0.1:{port}"
        self.translator_url = f"http://{tbind}"
        self._add(Service(
            TRANSLATOR,
            [str(cfg.bin_dir / "switchyard-translator")],
            {**base_env, "TRANSLATOR_BIND": tbind,
             "SWITCHYARD_OPENAI_BASE_URL": self.openai_base_url,
             "SWITCHYARD_ANTHROPIC_BASE_URL": self.anthropic_base_url,
             "SWITCHYARD_GEMINI_BASE_URL": self.gemini_base_url},
            self.log_dir / "translator.log",
            health_url=f"{self.translator_url}/healthz",
        ))

        # Batch jobs publish straight to NATS (batch.<account>.<job>); the router checks,
        # seals and queues their requests for the workers (schemas/BATCH.md).
        port = self.ports.preferred(8085) if cfg.default_ports else self.ports.any_free()
        bbind = f"127.0.0.1:{port}"
        self.batch_url = f"http://{bbind}"
        self._add(Service(
            BATCH_ROUTER,
            [str(cfg.bin_dir / "switchyard-batch")],
            {**base_env, "BATCH_BIND": bbind},
            self.log_dir / "batch-router.log",
            health_url=f"{self.batch_url}/healthz",
        ))

        if cfg.postgres:
            # Billing needs the migrated database; it consumes USAGE (durable consumer
            # `billing`), so events published while it was down wait for it.
            port = self.ports.preferred(8083) if cfg.default_ports else self.ports.any_free()
            bbind = f"127.0.0.1:{port}"
            self.billing_url = f"http://{bbind}"
            self._add(Service(
                BILLING,
                [str(cfg.bin_dir / BILLING_BIN)],
                {**base_env, "BILLING_BIND": bbind},
                self.log_dir / "billing.log",
                health_url=f"{self.billing_url}/healthz",
            ))

        self._start_inference(base_env)

        if cfg.ingress_bind:
            ibind = cfg.ingress_bind
        else:
            host, port = _split_hostport(DEFAULT_INGRESS_BIND)
            port = self.ports.preferred(port) if cfg.default_ports else self.ports.any_free()
            ibind = f"{host}:{port}"
        ihost, iport = _split_hostport(ibind)
        self.ingress_url = f"http://{_url_host(ihost)}:{iport}"
        self._add(Service(
            INGRESS,
            [str(cfg.bin_dir / "switchyard-ingress")],
            {**base_env, "INGRESS_BIND": ibind, "SWITCHYARD_DEV_API_KEY": self.dev_api_key},
            self.log_dir / "ingress.log",
            health_url=f"{self.ingress_url}/healthz",
        ))

    def _inference_env(self) -> dict[str, str]:
        """What every inference instance needs beyond the base environment."""
        cfg = self.cfg
        if not (cfg.bin_dir / INFERENCE_BIN).exists():
            raise StackError(f"missing binary {cfg.bin_dir / INFERENCE_BIN} (build it: `just build`)")
        lib = cfg.ort_lib or find_ort_lib()
        if lib is None or not Path(lib).is_file():
            raise StackError("no ONNX Runtime library: run `bash infra/install-tools.sh` or set SWITCHYARD_ORT_LIB")
        return {"SWITCHYARD_ORT_LIB": str(lib), "SWITCHYARD_MODELS_DIR": str(Path(cfg.models_dir).resolve()),
                "INFERENCE_THREADS": str(cfg.inference_threads),
                "INFERENCE_TRT_CACHE_DIR": str(self.run_dir / "tensorrt-cache")}

    def _start_autoscaler(self, base_env: dict[str, str]) -> None:
        """The autoscaler, which starts and stops inference instances per cluster."""
        cfg = self.cfg
        if not (cfg.bin_dir / "switchyard-autoscaler").exists():
            raise StackError(f"missing binary {cfg.bin_dir / 'switchyard-autoscaler'} (build it: `just build`)")
        port = self.ports.preferred(8082) if cfg.default_ports else self.ports.any_free()
        bind = f"127.0.0.1:{port}"
        self.autoscaler_url = f"http://{bind}"
        (self.log_dir / "instances").mkdir(parents=True, exist_ok=True)
        self._add(Service(
            AUTOSCALER,
            [str(cfg.bin_dir / "switchyard-autoscaler")],
            {**base_env, **self._inference_env(), "AUTOSCALER_BIND": bind,
             "AUTOSCALER_LOG_DIR": str(self.log_dir / "instances"),
             "AUTOSCALER_IDLE_MINUTE_MS": str(cfg.idle_minute_ms),
             "AUTOSCALER_INFERENCE_BIN": str(cfg.bin_dir / INFERENCE_BIN)},
            self.log_dir / "autoscaler.log",
            health_url=f"{self.autoscaler_url}/healthz",
        ))

    def _start_inference(self, base_env: dict[str, str]) -> None:
        """Static instances (account `dev`): one per model of `open_models`, or, without an
        autoscaler, one per built model."""
        cfg = self.cfg
        if cfg.autoscaler:
            self._start_autoscaler(base_env)
        models_dir = Path(cfg.models_dir).resolve()
        if cfg.open_models is not None:
            wanted = cfg.open_models
        elif cfg.autoscaler:
            wanted = []
        else:
            wanted = built_open_models(models_dir)
        if not wanted:
            if cfg.open_models is None and not cfg.autoscaler:
                self._say(f"inference: no open models built in {models_dir} (run `just models`)")
            return
        inference_env = self._inference_env()
        for model in wanted:
            port = self.ports.any_free()
            bind = f"127.0.0.1:{port}"
            name = "inference-" + model.rsplit("/", 1)[-1]
            self._add(Service(
                name,
                [str(cfg.bin_dir / INFERENCE_BIN)],
                {**base_env, **inference_env, "INFERENCE_MODEL": model, "INFERENCE_ACCOUNT": "dev",
                 "INFERENCE_BIND": bind},
                self.log_dir / f"{name}.log",
                health_url=f"http://{bind}/healthz",
            ))

    def _persisted(self, name: str, make: Callable[[], str],
                   valid: Callable[[str], bool] = lambda _: True) -> str:
        """A generated secret kept in the run dir (0600), reused by the next `up` (made
        anew if the kept one is not `valid`)."""
        path = self.run_dir / name
        if path.exists():
            kept = path.read_text().strip()
            if valid(kept):
                return kept
        value = make()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        return value

    def _base_env(self) -> dict[str, str]:
        cfg = self.cfg
        env = dict(os.environ)
        if not cfg.detach:
            # Tests and benchmark: nothing from the caller's environment tunes our services.
            env = {k: v for k, v in env.items()
                   if not k.startswith(("SWITCHYARD_", "NATS_", "INGRESS_", "TRANSLATOR_", "INFERENCE_", "MOCK_", "LOADGEN_",
                                      "BATCH_"))}
            # Nor a developer's database: accounts' keys only where the config asks for them.
            env.pop("DATABASE_URL", None)
        env["RUST_LOG"] = cfg.rust_log
        env["NO_COLOR"] = "1"  # logs go to files: no ANSI escapes (tracing-subscriber honours it)
        env.pop("RUST_LOG_STYLE", None)
        # The store key and the NATS password variable are nats-server's alone.
        env.pop("SWITCHYARD_NATS_STORE_KEY", None)
        env.pop("SWITCHYARD_NATS_PASSWORD", None)
        # Exactly one of the two seal-key variables reaches the services.
        env.pop("SWITCHYARD_SEAL_KEY", None)
        env.pop("SWITCHYARD_SEAL_KEY_FILE", None)
        if cfg.seal_key:
            env["SWITCHYARD_SEAL_KEY"] = cfg.seal_key
        else:
            if cfg.seal_key_file:
                self.seal_key_file = Path(cfg.seal_key_file)
            else:
                self._persisted("seal.key", lambda: base64.b64encode(os.urandom(32)).decode())
                self.seal_key_file = self.run_dir / "seal.key"
            env["SWITCHYARD_SEAL_KEY_FILE"] = str(self.seal_key_file)
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        return env  # NATS_URL is added once known

    def _start_nats(self) -> None:
        cfg = self.cfg
        if cfg.nats_url:
            try:
                info = nats_server_info(cfg.nats_url)
            except (OSError, ValueError) as e:
                raise StackError(f"NATS_URL={mask_url(cfg.nats_url)} is not reachable: {e}") from e
            version = info.get("version", "?")
            if _version_tuple(version)[:2] < MIN_NATS or not info.get("jetstream"):
                raise StackError(
                    f"NATS_URL={mask_url(cfg.nats_url)} is nats-server {version} "
                    f"(jetstream={info.get('jetstream')}); Switchyard needs >= "
                    f"{MIN_NATS[0]}.{MIN_NATS[1]} with JetStream. Unset NATS_URL to use our own."
                )
            self.nats_url = cfg.nats_url
            self._say(f"nats: using NATS_URL={mask_url(cfg.nats_url)} (nats-server {version})")
            return
        server = find_nats_server()
        if cfg.default_ports:
            port = self.ports.preferred(4222, scan=True)  # DESIGN: 4222 when free, else 4223..
            mport = self.ports.preferred(8222)
        else:
            port, mport = self.ports.any_free(), self.ports.any_free()
        self.nats_store_dir = self.run_dir / "nats"
        self.nats_url = f"nats://127.0.0.1:{port}"  # with a password below when nats_auth
        self.nats_monitor_url = f"http://127.0.0.1:{mport}"
        # single.conf encrypts the store with $SWITCHYARD_NATS_STORE_KEY (by env, not argv:
        # argv is world-readable). The key stays with the store: a different key would
        # leave the old streams unreadable. nats-server takes an empty key as "no
        # encryption", so refuse one.
        conf, env = SINGLE_CONF, dict(os.environ)
        env.pop("SWITCHYARD_NATS_STORE_KEY", None)
        env.pop("SWITCHYARD_NATS_PASSWORD", None)
        if cfg.nats_store_encryption:
            if cfg.nats_store_key is not None and not cfg.nats_store_key.strip():
                raise StackError("SWITCHYARD_NATS_STORE_KEY is set but empty: unset it (one is generated) "
                                 "or give a key; an empty key would leave the NATS store unencrypted")
            env["SWITCHYARD_NATS_STORE_KEY"] = cfg.nats_store_key or self._persisted(
                "nats-store.key", lambda: base64.b64encode(os.urandom(32)).decode())
        else:
            conf = self.run_dir / "nats-plaintext.conf"
            conf.write_text("".join(
                line for line in SINGLE_CONF.read_text().splitlines(keepends=True)
                if not line.lstrip().startswith(("cipher:", "key:"))))
        if cfg.nats_auth:
            # `just up` uses the users file `switchyard-nats batch-user` edits by default (so
            # `batch-user add` + `kill -HUP $(cat .run/nats-server.pid)` works); tests and
            # the benchmark one of their own. `init` makes it, or refreshes permissions.
            users = REPO / "nats" / "auth" / "batch-users.conf" if cfg.detach else self.run_dir / "nats-batch-users.conf"
            init = [str(cfg.bin_dir / "switchyard-nats"), "batch-user", "init", "--users-file", str(users)]
            res = subprocess.run(init, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=REPO)
            if res.returncode != 0:
                raise StackError(f"`{shlex.join(init)}` exited {res.returncode}: {res.stderr.strip()}")
            password = self._persisted("nats-password", nats_password, valid=nats_password_ok)
            env["SWITCHYARD_NATS_PASSWORD"] = password
            # nats-server resolves includes relative to the including file only.
            top = self.run_dir / "nats-server.conf"
            top.write_text(f'include "{os.path.relpath(conf, self.run_dir)}"\n'
                           f'include "{os.path.relpath(users, self.run_dir)}"\n')
            conf = top
            self.nats_url = f"nats://switchyard:{password}@127.0.0.1:{port}"
        self._add(Service(
            NATS,
            [str(server), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port),
             "-m", str(mport), "-sd", str(self.nats_store_dir)],
            env,
            self.log_dir / "nats-server.log",
            health_url=f"{self.nats_monitor_url}/healthz?js-enabled-only=true",
        ))

    def _apply_nats(self, base_env: dict[str, str]) -> None:
        base_env["NATS_URL"] = self.nats_url
        log = self.log_dir / "nats-apply.log"
        # NATS_URL by env (base_env), not argv: it may carry a password.
        cmd = [str(self.cfg.bin_dir / "switchyard-nats"), "apply", "--dir", str(REPO / "nats")]
        def run(args: list[str]) -> int:
            with open(log, "ab") as f:
                return subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=base_env, cwd=REPO, timeout=120).returncode

        rc = run(cmd)
        # A dev store made by an older build may hold a stream whose settings NATS cannot
        # change in place (e.g. REQUESTS' persist mode). On a server this stack started
        # itself the messages are throwaway, so recreate it; never on someone else's.
        recreate = sorted(set(re.findall(r"--recreate (\w+)", tail(log))))
        if rc != 0 and recreate and NATS in self.services:
            self._say(f"nats: recreating stream(s) {', '.join(recreate)} (settings changed since this store was made)")
            cmd = cmd + ["--recreate", ",".join(recreate)]
            rc = run(cmd)
        if rc != 0:
            raise StackError(f"`{shlex.join(cmd)}` exited {rc}; {log}:\n{tail(log)}")
        self._say(f"nats: applied {REPO / 'nats'} to {mask_url(self.nats_url)}")

    def _add(self, svc: Service) -> None:
        self.services[svc.name] = svc
        self._spawn(svc)
        self._wait_ready(svc)
        self._say(f"{svc.name}: ready (pid {svc.proc.pid if svc.proc else '?'}, log {svc.log})")

    def _spawn(self, svc: Service) -> None:
        logf = open(svc.log, "ab")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        logf.write(f"--- {stamp} infra/stack.py starts {svc.name}: {shlex.join(svc.cmd)}\n".encode())
        logf.flush()
        try:
            svc.proc = subprocess.Popen(
                svc.cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=svc.env,
                cwd=REPO,
                # Own session: a Ctrl-C in the terminal that ran `just up` does not reach them.
                start_new_session=True,
                preexec_fn=_child_setup(self.cfg.cpus, die_with_parent=not self.cfg.detach),
            )
        finally:
            logf.close()

    def _wait_ready(self, svc: Service) -> None:
        deadline = time.monotonic() + self.cfg.ready_timeout
        while True:
            assert svc.proc is not None
            rc = svc.proc.poll()
            if rc is not None:
                raise StackError(f"{svc.name} exited with {rc} during start-up; {svc.log}:\n{tail(svc.log)}")
            if svc.health_url:
                if _http_status(svc.health_url) == 200:
                    return
            elif svc.tcp and _tcp_open(*svc.tcp):
                return
            if time.monotonic() > deadline:
                what = svc.health_url or f"tcp {svc.tcp}"
                raise StackError(
                    f"{svc.name} not ready after {self.cfg.ready_timeout:.0f}s ({what}); "
                    f"{svc.log}:\n{tail(svc.log)}"
                )
            time.sleep(0.1)

    # -- postgres ----------------------------------------------------------------

    def _ensure_postgres(self) -> None:
        url = urllib.parse.urlparse(self.database_url or DEFAULT_DATABASE_URL)
        host, port = url.hostname or "127.0.0.1", url.port or 5432
        dbname = url.path.lstrip("/") or "switchyard"
        local = host in ("127.0.0.1", "localhost", "::1")
        if not _tcp_open(host, port):
            if not local:
                raise StackError(f"Postgres at {host}:{port} (DATABASE_URL) is not reachable")
            self._start_local_postgres()
            deadline = time.monotonic() + 30
            while not _tcp_open(host, port):
                if time.monotonic() > deadline:
                    raise StackError(f"started Postgres, but {host}:{port} still refuses connections")
                time.sleep(0.2)
        psql = shutil.which("psql")
        if not psql:
            self._say(f"postgres: psql not found; `{ADMIN} migrate` will create database "
                      f"{dbname!r} if it is missing")
            return
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", dbname):
            raise StackError(f"unexpected database name {dbname!r} in DATABASE_URL")
        admin = urllib.parse.urlunparse(url._replace(path="/postgres"))
        exists = subprocess.run(
            [psql, "-d", admin, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{dbname}'"],
            capture_output=True, text=True, timeout=30,
        )
        if exists.returncode != 0:
            raise StackError(f"psql {admin} failed: {exists.stderr.strip()}")
        if exists.stdout.strip() != "1":
            ident = '"' + dbname.replace('"', '""') + '"'
            made = subprocess.run([psql, "-d", admin, "-c", f"CREATE DATABASE {ident}"],
                                  capture_output=True, text=True, timeout=30)
            if made.returncode != 0:
                raise StackError(f"could not create database {dbname!r}: {made.stderr.strip()}")
            self._say(f"postgres: created database {dbname!r}")
        self._say(f"postgres: {host}:{port}/{dbname} ready")

    def _migrate(self, base_env: dict[str, str]) -> None:
        """`switchyard-admin migrate`: creates the database if missing, applies the sea-orm
        migrations (idempotent). base_env carries DATABASE_URL, also to the ingress."""
        log = self.log_dir / "migrate.log"
        cmd = [str(self.cfg.bin_dir / ADMIN), "migrate"]
        with open(log, "ab") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=base_env, cwd=REPO, timeout=120).returncode
        if rc != 0:
            raise StackError(f"`{shlex.join(cmd)}` exited {rc}; {log}:\n{tail(log)}")
        self._say(f"postgres: migrated ({ADMIN} migrate; accounts and keys: {ADMIN} --help)")

    def _start_local_postgres(self) -> None:
        conf = Path("/etc/postgresql")
        ctl = shutil.which("pg_ctlcluster")
        if not ctl or not conf.is_dir() or not any(conf.iterdir()):
            raise StackError("Postgres is not running on this machine and no local cluster to "
                             "start was found (pg_ctlcluster, /etc/postgresql). Start one, or set "
                             "DATABASE_URL (or pass --no-postgres).")
        version = sorted(p.name for p in conf.iterdir())[-1]
        cmd = [ctl, "--skip-systemctl-redirect", version, "main", "start"]
        self._say(f"postgres: not running; {shlex.join(cmd)}")
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise StackError(f"`{shlex.join(cmd)}` failed: {(res.stderr or res.stdout).strip()}")
        self.postgres_started = True


# --------------------------------------------------------------------------- daemon mode


STATE = "state.json"
EXPORTED = "exported-env.json"


def _environ_for_up(run_dir: Path) -> dict[str, str]:
    """os.environ without the values a previous `up` exported in .run/env: after
    `. .run/env; just down; just up`, NATS_URL would point at the server `down` stopped."""
    env = dict(os.environ)
    try:
        exported = json.loads((run_dir / EXPORTED).read_text())
    except (OSError, ValueError):
        return env
    ignored = []
    for key, value in exported.items():
        if env.get(key) == value and key != "SWITCHYARD_DEV_API_KEY":
            del env[key]
            ignored.append(key)
    if ignored:
        print(f"ignoring {', '.join(ignored)}: values a previous `just up` exported in .run/env")
    return env


def _start_time(pid: int) -> Optional[int]:
    """The process's start time (clock ticks since boot), or None if it is gone.

    pid + start time names one process for good: a recycled pid has a later start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may contain spaces
    if fields[0] == "Z":  # a zombie has exited
        return None
    return int(fields[19])


def _pid_matches(svc: dict) -> bool:
    """Is the recorded process still running (and not a recycled pid)?"""
    return svc.get("start_time") is not None and _start_time(svc["pid"]) == svc["start_time"]


def _write_state(stack: Stack) -> None:
    run = stack.run_dir
    state = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_dir": str(run),
        "services": [
            {"name": s.name, "pid": s.proc.pid, "start_time": _start_time(s.proc.pid),
             "cmd": s.cmd, "log": str(s.log)}
            for s in stack.services.values() if s.proc is not None
        ],
        "postgres_started": stack.postgres_started,
        "env": stack.env_vars(),
        "mock_api_key": stack.mock_api_key if stack.mock_url else None,
    }
    (run / STATE).write_text(json.dumps(state, indent=2) + "\n")
    # Kept after `down`: lets the next `up` tell our own values (from a sourced .run/env)
    # from ones the developer set on purpose.
    (run / EXPORTED).write_text(json.dumps(state["env"], indent=2) + "\n")
    lines = ["# written by `just up` (infra/stack.py); source it: . .run/env"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in state["env"].items()]
    (run / "env").write_text("\n".join(lines) + "\n")
    # NATS_URL may carry the NATS password.
    for name in (STATE, EXPORTED, "env"):
        os.chmod(run / name, 0o600)
    for s in state["services"]:
        (run / f"{s['name']}.pid").write_text(f"{s['pid']}\n")


def _read_state(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((run_dir / STATE).read_text())
    except (OSError, ValueError):
        return None


def _alive(state: dict) -> list[dict]:
    return [s for s in state["services"] if _pid_matches(s)]


def curl_line(api_base: str, dev_key: str, provider_key: str) -> str:
    body = json.dumps({"model": "openai/gpt-4o-mini",
                       "messages": [{"role": "user", "content": "Hello, Switchyard!"}]})
    return (f"curl -sS {api_base}/chat/completions \\\n"
            f"  -H \"Authorization: Bearer {dev_key}\" \\\n"
            f"  -H \"provider-key: {provider_key}\" \\\n"
            f"  -H 'Content-Type: application/json' \\\n"
            f"  -d '{body}'")


def _print_banner(state: dict) -> None:
    env = state["env"]
    mock_url = env.get("SWITCHYARD_MOCK_URL")
    openai_mocked = bool(mock_url) and env.get("SWITCHYARD_OPENAI_BASE_URL", "").startswith(mock_url)
    provider_key = state.get("mock_api_key") if openai_mocked else "$OPENAI_API_KEY"
    print()
    print(f"Switchyard is up.  API: {env['SWITCHYARD_API_URL']}")
    print(f"  dev API key:  {env['SWITCHYARD_DEV_API_KEY']}")
    print(f"  NATS:         {mask_url(env['NATS_URL'])}")
    for name in ("OPENAI", "ANTHROPIC", "GEMINI"):
        url = env.get(f"SWITCHYARD_{name}_BASE_URL", "")
        mocked = bool(mock_url) and url.startswith(mock_url)
        key = state.get("mock_api_key")
        print(f"  {name.lower() + ':':13} {url}" + (f"  (mock; provider key {key})" if mocked else ""))
    print(f"  env file:     {state.get('run_dir', '.run')}/env  (logs: just logs; stop: just down)")
    print()
    print(curl_line(env["SWITCHYARD_API_URL"], env["SWITCHYARD_DEV_API_KEY"], provider_key))


def smoke_test(stack: Stack) -> Optional[str]:
    """One request through the stack, as the printed curl line makes it. None when it works."""
    body = json.dumps({"model": "openai/gpt-4o-mini",
                       "messages": [{"role": "user", "content": "ping"}]}).encode()
    req = urllib.request.Request(
        f"{stack.api_base}/chat/completions", data=body, method="POST",
        headers={"Authorization": f"Bearer {stack.dev_api_key}", "provider-key": stack.mock_api_key,
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            reply = json.loads(r.read())
        content = reply["choices"][0]["message"]["content"]
        return None if content == "echo: ping" else f"unexpected reply {content!r}"
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}: {e.read()[:300]!r}"
    except (OSError, ValueError, KeyError, IndexError) as e:
        return str(e)


def cmd_up(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = _read_state(run_dir)
    if state:
        alive = _alive(state)
        if len(alive) == len(state["services"]):
            print("already up (`just down` first to restart)")
            _print_banner(state)
            return 0
        print(f"a previous stack is partly running ({len(alive)} of {len(state['services'])}); stopping it")
        _down(run_dir, state)
    cfg = StackConfig.from_env(run_dir, environ=_environ_for_up(run_dir),
                               bin_dir=Path(args.bin_dir) if args.bin_dir else default_bin_dir())
    cfg.postgres = not args.no_postgres
    stack = Stack(cfg)
    try:
        stack.start()
    except StackError as e:
        print(f"\nup failed: {e}", file=sys.stderr)
        if stack.postgres_started:
            print("(Postgres was started and is left running)", file=sys.stderr)
        return 1
    _write_state(stack)
    if stack.mock_url and stack.openai_base_url == stack.mock_url:
        problem = smoke_test(stack)
        if problem:
            print(f"\nWARNING: a test request through the stack failed: {problem}\n"
                  f"  see {stack.log_dir}/ingress.log and translator.log", file=sys.stderr)
    _print_banner(_read_state(run_dir) or {})
    return 0


def _down(run_dir: Path, state: dict) -> None:
    procs = [s for s in reversed(state["services"]) if _pid_matches(s)]
    for s in procs:
        os.kill(s["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 15
    for s in procs:
        while _pid_matches(s) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_matches(s):
            print(f"{s['name']} (pid {s['pid']}) ignored SIGTERM; killing it")
            os.kill(s["pid"], signal.SIGKILL)
        print(f"stopped {s['name']} (pid {s['pid']})")
    for s in state["services"]:
        (run_dir / f"{s['name']}.pid").unlink(missing_ok=True)
    if state.get("postgres_started"):
        # `down` stops exactly what `up` started: that includes Postgres if it was down before.
        conf = Path("/etc/postgresql")
        version = sorted(p.name for p in conf.iterdir())[-1]
        cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "stop"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        print(f"stopped Postgres ({shlex.join(cmd)}: exit {res.returncode})")
    (run_dir / STATE).unlink(missing_ok=True)
    (run_dir / "env").unlink(missing_ok=True)


def cmd_down(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    state = _read_state(run_dir)
    if not state:
        print("nothing to stop (no .run/state.json)")
        return 0
    _down(run_dir, state)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = _read_state(Path(args.run_dir))
    if not state:
        print("down")
        return 1
    alive = {s["name"] for s in _alive(state)}
    for s in state["services"]:
        print(f"{s['name']:14} pid {s['pid']:>7}  {'running' if s['name'] in alive else 'DEAD'}  {s['log']}")
    _print_banner(state)
    return 0 if len(alive) == len(state["services"]) else 1


def cmd_logs(args: argparse.Namespace) -> int:
    log_dir = Path(args.run_dir) / "logs"
    files = sorted(log_dir.glob(f"{args.service}*.log" if args.service else "*.log"))
    if not files:
        print(f"no logs under {log_dir}")
        return 1
    cmd = ["tail", "-n", str(args.lines)] + (["-F"] if args.follow else []) + [str(f) for f in files]
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=str(DEFAULT_RUN_DIR), help="state, logs, keys (default .run/)")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the stack in the background; returns when ready")
    up.add_argument("--bin-dir", help="where the binaries are (default: cargo's debug dir)")
    up.add_argument("--no-postgres", action="store_true", help="do not check or start Postgres")
    sub.add_parser("down", help="stop what `up` started")
    sub.add_parser("status", help="show what runs")
    lg = sub.add_parser("logs", help="show (and follow) the logs")
    lg.add_argument("service", nargs="?", help="nats-server, nats-apply, mock-provider, translator, inference-<model>, ingress")
    lg.add_argument("-n", "--lines", type=int, default=40)
    lg.add_argument("-f", "--follow", action="store_true")
    args = p.parse_args(argv)
    if args.cmd in ("status", "logs"):
        # `just status | head` is not an error. Not for `up`: killed mid-way by SIGPIPE it
        # could not stop what it had started; a BrokenPipeError lets it clean up.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status, "logs": cmd_logs}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
