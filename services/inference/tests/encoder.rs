//! The MiniLM encoder on the real model and the real ONNX Runtime (CPU).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use switchyard_inference::encoder::{self, Encoder, HYPOTHESIS_TEMPLATE, zero_shot_scores};
use switchyard_inference::metrics::Metrics;
use switchyard_inference::{Engine, load_model};

fn encoder() -> (Encoder, &'static str) {
    encoder_with_runners(1)
}

fn encoder_with_runners(runners: u16) -> (Encoder, &'static str) {
    let mut config = common::config(common::MINILM);
    config.encoder_runners = runners;
    let model = load_model(&config, &Metrics::default()).unwrap();
    match model.engine {
        Engine::Encoder(e) => (e, model.provider),
        Engine::Decoder(_) => panic!("MiniLM loaded as a decoder"),
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn embeddings_are_unit_vectors_that_track_meaning() {
    let (encoder, provider) = encoder();
    assert_eq!(provider, "CPUExecutionProvider");
    let texts = [
        "A man is playing a guitar.",
        "Someone is playing an instrument.",
        "The stock market fell sharply on Tuesday.",
    ];
    let out = encoder
        .embed(texts.iter().map(|t| t.to_string()).collect())
        .await
        .unwrap();
    assert_eq!(out.vectors.len(), 3);
    for v in &out.vectors {
        assert_eq!(v.len(), 384);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    let related = cosine(&out.vectors[0], &out.vectors[1]);
    let unrelated = cosine(&out.vectors[0], &out.vectors[2]);
    assert!(
        related > unrelated + 0.3,
        "related {related}, unrelated {unrelated}"
    );
    // [CLS] … [SEP] around the word pieces.
    assert!(out.tokens >= 3 * 5, "tokens {}", out.tokens);
}

#[tokio::test]
async fn concurrent_requests_get_their_own_vectors() {
    concurrent_requests_get_their_own_vectors_with(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_their_own_vectors_from_two_runners() {
    concurrent_requests_get_their_own_vectors_with(2).await;
}

async fn concurrent_requests_get_their_own_vectors_with(runners: u16) {
    let (encoder, _) = encoder_with_runners(runners);
    let texts: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "sentence number {i} about {}",
                ["cats", "ships", "rain", "jazz"][i % 4]
            )
        })
        .collect();
    let alone: Vec<Vec<f32>> = {
        let mut v = Vec::new();
        for t in &texts {
            v.push(
                encoder
                    .embed(vec![t.clone()])
                    .await
                    .unwrap()
                    .vectors
                    .remove(0),
            );
        }
        v
    };
    // The same texts at once, in requests of varying size: batched together, sorted by
    // length, padded per batch — every caller must still get exactly its own vectors.
    let mut tasks = Vec::new();
    let mut at = 0;
    for size in [1, 3, 7, 2, 11, 16] {
        let chunk = texts[at..at + size].to_vec();
        at += size;
        let encoder = encoder.clone();
        tasks.push(tokio::spawn(
            async move { encoder.embed(chunk).await.unwrap() },
        ));
    }
    let mut together = Vec::new();
    for t in tasks {
        together.extend(t.await.unwrap().vectors);
    }
    assert_eq!(together.len(), texts.len());
    for (a, b) in alone.iter().zip(&together) {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "batched vector differs by {diff}");
    }
}

#[tokio::test]
async fn rust_matches_python_onnxruntime() {
    let (encoder, _) = encoder();
    let texts = [
        "Switchyard routes requests.",
        "A much longer sentence, with punctuation; numbers like 42 and 3.14, and ÜNICODE.",
        "short",
    ];
    let rust = encoder
        .embed(texts.iter().map(|t| t.to_string()).collect())
        .await
        .unwrap();
    // The same token ids, padded to the longest, through Python's onnxruntime.
    let tok = encoder::load_tokenizer(
        &common::models_dir().join("all-MiniLM-L6-v2/tokenizer.json"),
        256,
    )
    .unwrap();
    let enc = tok.encode_batch(texts.to_vec(), true).unwrap();
    let longest = enc.iter().map(|e| e.len()).max().unwrap();
    let pad = |v: Vec<u32>| {
        let mut v: Vec<u32> = v;
        v.resize(longest, 0);
        v
    };
    let request = serde_json::json!({
        "model": common::models_dir().join("all-MiniLM-L6-v2/model.onnx"),
        "threads": 1,
        "input_ids": enc.iter().map(|e| pad(e.get_ids().to_vec())).collect::<Vec<_>>(),
        "attention_mask": enc.iter().map(|e| pad(e.get_attention_mask().to_vec())).collect::<Vec<_>>(),
        "token_type_ids": enc.iter().map(|e| pad(e.get_type_ids().to_vec())).collect::<Vec<_>>(),
    });
    // "hello"-style sanity of the tokenizer itself: BERT's [CLS] and [SEP].
    assert_eq!(enc[2].get_ids(), &[101, 2460, 102]);
    let mut child = Command::new(common::python())
        .arg(common::repo().join("services/inference/tests/reference.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "reference.py failed");
    let python: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let python: Vec<Vec<f32>> = serde_json::from_value(python["vectors"].clone()).unwrap();
    assert_eq!(python.len(), rust.vectors.len());
    for (r, p) in rust.vectors.iter().zip(&python) {
        let diff = r
            .iter()
            .zip(p)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "Rust and Python differ by {diff}");
    }
}

#[tokio::test]
async fn zero_shot_ranks_the_obvious_label_first() {
    let (encoder, _) = encoder();
    let labels: Vec<String> = ["sports", "cooking", "politics"].map(String::from).to_vec();
    let mut texts =
        vec!["The striker scored twice in the second half and the team won the cup.".to_string()];
    texts.extend(labels.iter().map(|l| HYPOTHESIS_TEMPLATE.replace("{}", l)));
    let out = encoder.embed(texts).await.unwrap();
    let (ranked, scores) = zero_shot_scores(&out.vectors[0], &out.vectors[1..], &labels, false);
    assert_eq!(ranked[0], "sports");
    assert!((scores.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    assert!(scores[0] > scores[1]);
}
