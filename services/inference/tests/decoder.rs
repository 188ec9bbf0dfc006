//! SmolLM2 on the real (converted, 4-bit) model and the real ONNX Runtime (CPU).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use schemas::{FinishReason, Message, Role};
use switchyard_inference::decoder::{Decoder, GenEvent, GenRequest, Sampling};
use switchyard_inference::metrics::Metrics;
use switchyard_inference::{Engine, load_model};

fn decoder() -> Decoder {
    decoder_with(&Metrics::default())
}

fn decoder_with(metrics: &Metrics) -> Decoder {
    decoder_from(&common::config(common::SMOLLM), metrics)
}

fn decoder_from(config: &switchyard_inference::Config, metrics: &Metrics) -> Decoder {
    let model = load_model(config, metrics).unwrap();
    assert_eq!(model.provider, "CPUExecutionProvider");
    match model.engine {
        Engine::Decoder(d) => d,
        Engine::Encoder(_) => panic!("SmolLM2 loaded as an encoder"),
    }
}

/// The France question. Asked bare, the source model's first answer token is a near
/// tie ("The" 0.152, "L" 0.140) that the 4-bit graph's int8 activations tip the other
/// way (see infra/models/README.md); asked for one sentence, it is not.
const FRANCE: &str = "What is the capital of France? Answer in one sentence.";

const GREEDY: Sampling = Sampling {
    temperature: 0.0,
    top_p: 1.0,
    top_k: 0,
    seed: Some(1),
};

async fn collect(decoder: &Decoder, request: GenRequest) -> (String, FinishReason, u64, u64) {
    let mut events = decoder.generate(request);
    let mut text = String::new();
    while let Some(e) = events.recv().await {
        match e {
            GenEvent::Text(t) => text.push_str(&t),
            GenEvent::Done {
                finish,
                input_tokens,
                output_tokens,
            } => return (text, finish, input_tokens, output_tokens),
            GenEvent::Failed(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("no Done event")
}

fn france(decoder: &Decoder, max_tokens: u32) -> GenRequest {
    let prompt = decoder
        .prompt(&[Message::text(Role::User, FRANCE)])
        .unwrap();
    GenRequest {
        prompt,
        max_tokens,
        sampling: GREEDY,
        stop: vec![],
        logit_bias: vec![],
    }
}

#[tokio::test]
async fn greedy_answer_names_paris() {
    let d = decoder();
    let request = france(&d, 40);
    let prompt_len = request.prompt.len() as u64;
    let (text, finish, input, output) = collect(&d, request).await;
    assert!(text.contains("Paris"), "answer: {text:?}");
    assert_eq!(input, prompt_len);
    assert!(output > 0 && output <= 40);
    assert!(matches!(finish, FinishReason::Stop | FinishReason::Length));
}

#[tokio::test]
async fn the_prompt_uses_the_models_chat_template() {
    let d = decoder();
    let ids = d.prompt(&[Message::text(Role::User, "Hi")]).unwrap();
    // <|im_start|> is a special token of its own, first, once per turn (system + user + assistant).
    let im_start = ids[0];
    assert_eq!(ids.iter().filter(|&&t| t == im_start).count(), 3);
}

#[tokio::test]
async fn max_tokens_and_stop_sequences_end_generation() {
    let d = decoder();
    let (_, finish, _, output) = collect(&d, france(&d, 3)).await;
    assert_eq!(finish, FinishReason::Length);
    assert_eq!(output, 3);
    let mut request = france(&d, 40);
    request.stop = vec!["Paris".into()];
    let (text, finish, _, _) = collect(&d, request).await;
    assert_eq!(finish, FinishReason::Stop);
    assert!(
        !text.contains("Paris"),
        "the stop sequence is not part of the answer: {text:?}"
    );
}

#[tokio::test]
async fn logit_bias_bans_and_forces_tokens() {
    let d = decoder();
    let tokenizer = tokenizers::Tokenizer::from_file(
        common::models_dir()
            .join("SmolLM2-135M-Instruct")
            .join("tokenizer.json"),
    )
    .unwrap();
    let id = |text: &str| {
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids.len(), 1, "{text:?} is one token: {ids:?}");
        ids[0]
    };
    // Banned, "Paris" (with or without its leading space) cannot be said.
    let (text, _, _, _) = collect(&d, france(&d, 40)).await;
    assert!(text.contains(" Paris"), "answer: {text:?}");
    let mut request = france(&d, 40);
    request.logit_bias = vec![(id(" Paris"), -100.0), (id("Paris"), -100.0)];
    let (banned, _, _, _) = collect(&d, request).await;
    assert!(!banned.contains("Paris"), "answer: {banned:?}");
    assert_ne!(banned, text);
    // Forced, one token is all the answer is made of.
    let mut request = france(&d, 4);
    request.logit_bias = vec![(id(" banana"), 100.0)];
    let (forced, finish, _, output) = collect(&d, request).await;
    assert_eq!(
        (forced.trim(), finish, output),
        ("banana banana banana banana", FinishReason::Length, 4)
    );
}

fn ask(d: &Decoder, question: &str, max_tokens: u32) -> GenRequest {
    GenRequest {
        prompt: d.prompt(&[Message::text(Role::User, question)]).unwrap(),
        max_tokens,
        sampling: GREEDY,
        stop: vec![],
        logit_bias: vec![],
    }
}

/// (count of batches, count of batches of one) from the batch-size histogram.
fn batches(metrics: &Metrics) -> (f64, f64) {
    let text = metrics.render();
    let value = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("inference_batch_size_count"),
        value("inference_batch_size_bucket{le=\"1.0\"}"),
    )
}

/// SmolLM2's unquantized graph (built by `setup.py --keep-fp32`, as `just test` does)
/// in a models directory of its own, as if it were the model.
fn fp32_config() -> (tempfile::TempDir, switchyard_inference::Config) {
    let real = common::models_dir().join("SmolLM2-135M-Instruct");
    let fp32 = real.join("model_fp32.onnx");
    assert!(
        fp32.is_file(),
        "{} is missing: run infra/models/setup.py --keep-fp32 (just test does)",
        fp32.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("SmolLM2-135M-Instruct");
    std::fs::create_dir(&model_dir).unwrap();
    std::os::unix::fs::symlink(&fp32, model_dir.join("model.onnx")).unwrap();
    for f in ["tokenizer.json", "generation.json"] {
        std::os::unix::fs::symlink(real.join(f), model_dir.join(f)).unwrap();
    }
    let mut config = common::config(common::SMOLLM);
    config.models_dir = dir.path().to_path_buf();
    (dir, config)
}

#[tokio::test]
async fn concurrent_generations_decode_together_and_each_get_their_own_answer() {
    // On the fp32 graph, a batched run computes each row exactly as a run of one: any
    // difference would be caches mixed up between generations. (The 4-bit graph's int8
    // activations make batched and solo logits differ by rounding, see below.)
    let (_dir, config) = fp32_config();
    let metrics = Metrics::default();
    let d = decoder_from(&config, &metrics);
    // Prompts of different lengths: batched, their caches are left-padded differently.
    let questions = [
        FRANCE,
        "Name a primary colour.",
        "Write one sentence about the sea and the wind at night.",
    ];
    let mut alone = Vec::new();
    for q in questions {
        alone.push(collect(&d, ask(&d, q, 12)).await.0);
    }
    let (solo_batches, _) = batches(&metrics);
    let (a, b, c) = tokio::join!(
        collect(&d, ask(&d, questions[0], 12)),
        collect(&d, ask(&d, questions[1], 12)),
        collect(&d, ask(&d, questions[2], 12)),
    );
    assert_eq!(a.0, alone[0], "batched steps must not mix KV caches");
    assert_eq!(b.0, alone[1]);
    assert_eq!(c.0, alone[2]);
    let (all, ones) = batches(&metrics);
    assert!(all - solo_batches > 0.0);
    assert!(
        all > ones,
        "some decode steps ran several generations at once"
    );
}

#[tokio::test]
async fn the_shipped_graph_answers_right_when_batched() {
    let d = decoder();
    let (a, b) = tokio::join!(
        collect(&d, ask(&d, FRANCE, 24)),
        collect(
            &d,
            ask(
                &d,
                "Write one sentence about the sea and the wind at night.",
                24
            )
        ),
    );
    assert!(a.0.contains("Paris"), "answer: {:?}", a.0);
    assert!(b.1 == FinishReason::Stop || b.3 == 24);
}

#[tokio::test]
async fn seeded_sampling_repeats_and_dropping_the_receiver_stops_generation() {
    let d = decoder();
    let mut request = france(&d, 16);
    request.sampling = Sampling {
        temperature: 0.9,
        top_p: 0.95,
        top_k: 50,
        seed: Some(42),
    };
    let first = collect(&d, request.clone()).await.0;
    let second = collect(&d, request).await.0;
    assert_eq!(first, second, "the same seed gives the same text");

    // A caller that goes away: the generation ends at its next step, and the thread
    // goes on serving others.
    let mut long = france(&d, 2000);
    long.prompt = d
        .prompt(&[Message::text(
            Role::User,
            "Write a very long story about a lighthouse.",
        )])
        .unwrap();
    let mut events = d.generate(long);
    let first_piece = events.recv().await.unwrap();
    assert!(matches!(first_piece, GenEvent::Text(_)));
    drop(events);
    let (text, _, _, _) = collect(&d, france(&d, 40)).await;
    assert!(text.contains("Paris"));
}
