#!/usr/bin/env bash
# Install the LiteLLM proxy, the reference peer of the gateway benchmark
# (`just bench-peer`, loadtest/bench.py --peer litellm), into its own venv:
#   .tools/litellm-venv   litellm[proxy] with the pins of requirements.txt + constraints.txt
# On demand only: not part of `just tools`, `just test` or CI, and never in .tools/venv.
# Idempotent: a stamp keyed by the pins, this script and the Python used makes a second
# run a no-op. Override the interpreter with PYTHON=...
#   bash loadtest/litellm/install.sh            install (or say it is up to date)
#   bash loadtest/litellm/install.sh --freeze   resolve requirements.txt afresh and
#                                               rewrite constraints.txt from the result
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/.tools/litellm-venv"
req="$here/requirements.txt"
constraints="$here/constraints.txt"
python="${PYTHON:-python3}"
freeze=0
case "${1:-}" in
  "") ;;
  --freeze) freeze=1 ;;
  *) echo "usage: $0 [--freeze]" >&2; exit 2 ;;
esac

say() { echo "litellm-install: $*" >&2; }

if ! command -v "$python" >/dev/null 2>&1; then
  say "$python not found (need Python >= 3.10 with venv)"
  exit 1
fi

key="$( { cat "$req" "$constraints" "${BASH_SOURCE[0]}"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
stamp="$venv/.switchyard-stamp"
version() { "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))'; }

if [[ $freeze -eq 0 && -f "$stamp" && "$(cat "$stamp")" == "$key" && -x "$venv/bin/litellm" ]]; then
  say "up to date: litellm $(version) in ${venv#"$repo"/}"
  exit 0
fi

# A fresh venv whenever the key changed: nothing of an older pin set is left behind.
say "creating ${venv#"$repo"/} with $("$python" --version 2>&1)"
rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input)
if [[ $freeze -eq 1 ]]; then
  say "pip install -r ${req#"$repo"/} (no constraints: resolving afresh)"
  "${pip[@]}" -r "$req"
  {
    echo "# Every package $(grep -E '^litellm' "$req" | head -1) resolved to on Python $("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') (pip freeze), so the peer"
    echo "# is the same proxy on every machine. Regenerate: bash loadtest/litellm/install.sh --freeze"
    "$venv/bin/python" -m pip freeze --disable-pip-version-check
  } > "$constraints"
  say "wrote ${constraints#"$repo"/} ($(grep -vc '^#' "$constraints") packages)"
  # The constraints file changed, so the stamp is keyed anew.
  key="$( { cat "$req" "$constraints" "${BASH_SOURCE[0]}"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
else
  say "pip install -r ${req#"$repo"/} -c ${constraints#"$repo"/} (about 40 s, 750 MB)"
  "${pip[@]}" -r "$req" -c "$constraints"
fi
LITELLM_LOCAL_MODEL_COST_MAP=True "$venv/bin/litellm" --version >/dev/null 2>&1 || { say "the litellm command does not run"; exit 1; }
echo "$key" > "$stamp"
say "ok: litellm $(version) in ${venv#"$repo"/} ($(du -sh "$venv" | cut -f1))"
