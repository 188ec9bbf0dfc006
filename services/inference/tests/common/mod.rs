//! Shared by the inference tests: where ONNX Runtime and the models are.
#![allow(dead_code)]

use std::path::PathBuf;

/// The workspace root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `SWITCHYARD_ORT_LIB`, or the library of the `onnxruntime` wheel in `.tools/venv`
/// (installed by `infra/install-tools.sh`).
pub fn ort_lib() -> PathBuf {
    if let Some(p) = std::env::var_os("SWITCHYARD_ORT_LIB") {
        return PathBuf::from(p);
    }
    let lib = repo().join(".tools/venv/lib");
    let found = std::fs::read_dir(&lib)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|py| py.path().join("site-packages/onnxruntime/capi"))
        .flat_map(|capi| std::fs::read_dir(capi).ok().into_iter().flatten().flatten())
        .map(|f| f.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so."))
        });
    found.unwrap_or_else(|| {
        panic!(
            "no ONNX Runtime library: set SWITCHYARD_ORT_LIB or run infra/install-tools.sh (looked in {})",
            lib.display()
        )
    })
}

/// `SWITCHYARD_MODELS_DIR`, or `.models` (built by `infra/models/setup.py`).
pub fn models_dir() -> PathBuf {
    std::env::var_os("SWITCHYARD_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".models"))
}

/// The project's Python (with onnxruntime and numpy), for reference computations.
pub fn python() -> PathBuf {
    repo().join(".tools/venv/bin/python")
}

pub const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
pub const SMOLLM: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// A configuration for `model` (no NATS needed to load it).
pub fn config(model: &str) -> switchyard_inference::Config {
    use clap::Parser;
    switchyard_inference::Config::parse_from([
        "switchyard-inference",
        "--model",
        model,
        "--account",
        "dev",
        "--seal-key",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "--ort-lib",
        ort_lib().to_str().unwrap(),
        "--models-dir",
        models_dir().to_str().unwrap(),
        "--execution-providers",
        "cpu",
        "--threads",
        "1",
    ])
}
