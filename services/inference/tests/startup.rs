//! A worker that cannot run its model says why and exits non-zero, before touching NATS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard-inference"))
        .args(args)
        .env(
            "SWITCHYARD_SEAL_KEY",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        // Nothing listens here: a worker that got as far as NATS would say so instead.
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("INFERENCE_ACCOUNT", "dev")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_missing_onnx_runtime_library_is_a_clear_error() {
    let models = common::models_dir();
    let (code, text) = run(&[
        "--model",
        common::MINILM,
        "--ort-lib",
        "/nonexistent/libonnxruntime.so.1.31.1",
        "--models-dir",
        models.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        text.contains("cannot load the ONNX Runtime library /nonexistent/libonnxruntime.so.1.31.1"),
        "{text}"
    );
    assert!(text.contains("no such file"), "{text}");
}

#[test]
fn a_library_that_is_not_onnx_runtime_is_a_clear_error() {
    let not_ort = std::env::temp_dir().join(format!("not-ort-{}.so", std::process::id()));
    std::fs::write(&not_ort, b"this is not a shared library").unwrap();
    let models = common::models_dir();
    let (code, text) = run(&[
        "--model",
        common::MINILM,
        "--ort-lib",
        not_ort.to_str().unwrap(),
        "--models-dir",
        models.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&not_ort);
    assert_ne!(code, 0);
    assert!(
        text.contains("cannot load the ONNX Runtime library"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn a_missing_model_file_is_a_clear_error() {
    let empty = tempfile::tempdir().unwrap();
    let lib = common::ort_lib();
    let (code, text) = run(&[
        "--model",
        common::MINILM,
        "--ort-lib",
        lib.to_str().unwrap(),
        "--models-dir",
        empty.path().to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(text.contains("is missing"), "{text}");
    assert!(text.contains("just models"), "{text}");
}

#[test]
fn an_unknown_or_closed_model_is_refused() {
    let lib = common::ort_lib();
    let (code, text) = run(&[
        "--model",
        "acme/nothing",
        "--ort-lib",
        lib.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        text.contains("'acme/nothing' is not an open model of the catalog"),
        "{text}"
    );
    let (code, text) = run(&[
        "--model",
        "openai/gpt-4o-mini",
        "--ort-lib",
        lib.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(text.contains("closed model"), "{text}");
}

#[test]
fn help_explains_the_flags() {
    let (code, text) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--model",
        "--ort-lib",
        "--execution-providers",
        "--models-dir",
        "--trt-cache-dir",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help");
    }
}
