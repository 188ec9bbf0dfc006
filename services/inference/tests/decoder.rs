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
    let model = load_model(&common::config(common::SMOLLM), &Metrics::default()).unwrap();
    assert_eq!(model.provider, "CPUExecutionProvider");
    match model.engine {
        Engine::Decoder(d) => d,
        Engine::Encoder(_) => panic!("SmolLM2 loaded as an encoder"),
    }
}

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
        .prompt(&[Message::text(Role::User, "What is the capital of France?")])
        .unwrap();
    GenRequest {
        prompt,
        max_tokens,
        sampling: GREEDY,
        stop: vec![],
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
async fn concurrent_generations_each_get_their_own_answer() {
    let d = decoder();
    let alone = collect(&d, france(&d, 12)).await.0;
    let other_prompt = d
        .prompt(&[Message::text(Role::User, "Name a primary colour.")])
        .unwrap();
    let other = GenRequest {
        prompt: other_prompt,
        max_tokens: 12,
        sampling: GREEDY,
        stop: vec![],
    };
    let other_alone = collect(&d, other.clone()).await.0;
    let (a, b) = tokio::join!(collect(&d, france(&d, 12)), collect(&d, other));
    assert_eq!(a.0, alone, "interleaved steps must not mix KV caches");
    assert_eq!(b.0, other_alone);
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
