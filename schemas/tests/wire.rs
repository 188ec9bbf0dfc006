//! Codec round trips, versioned fixtures and the exported JSON Schema.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use schemas::*;
use uuid::Uuid;

fn sample_request() -> ChatRequest {
    ChatRequest {
        model: "openai/gpt-4o-mini".into(),
        messages: vec![
            Message::text(Role::System, "You are terse."),
            Message {
                role: Role::User,
                content: vec![
                    ContentPart::Text {
                        text: "What is in this image?".into(),
                    },
                    ContentPart::Image {
                        url: "data:image/png;base64,iVBORw0KGgo=".into(),
                        detail: Some("low".into()),
                    },
                ],
                name: Some("ada".into()),
                tool_calls: vec![],
                tool_call_id: None,
            },
            Message {
                role: Role::Assistant,
                content: vec![],
                name: None,
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                }],
                tool_call_id: None,
            },
            Message {
                role: Role::Tool,
                content: vec![ContentPart::Text {
                    text: "18C, sunny".into(),
                }],
                name: None,
                tool_calls: vec![],
                tool_call_id: Some("call_1".into()),
            },
        ],
        params: Params {
            temperature: Some(0.25),
            top_p: Some(0.5),
            top_k: None,
            max_tokens: Some(64),
            stop: vec!["\n\n".into()],
            seed: Some(7),
            presence_penalty: None,
            frequency_penalty: Some(0.5),
            user: None,
            ..Params::default()
        },
        tools: vec![Tool {
            name: "get_weather".into(),
            description: Some("Current weather".into()),
            parameters_json: Some(
                r#"{"type":"object","properties":{"city":{"type":"string"}}}"#.into(),
            ),
        }],
        tool_choice: Some(ToolChoice::Function {
            name: "get_weather".into(),
        }),
        stream: true,
        fallback_models: vec![],
        response_format: None,
    }
}

fn fixed_id() -> Uuid {
    Uuid::parse_str("01937a4e-7d2c-7b3e-9f10-1234567890ab").unwrap()
}

fn sample_envelope() -> RequestEnvelope {
    RequestEnvelope {
        schema_version: 1,
        request_id: fixed_id(),
        account: "dev".into(),
        created_at: Utc.with_ymd_and_hms(2026, 11, 22, 1, 2, 3).unwrap(),
        deadline: Utc.with_ymd_and_hms(2026, 11, 22, 1, 7, 3).unwrap(),
        reply: ReplyTarget::Stream {
            subject: subjects::reply("ing0", fixed_id()),
        },
        model: "openai/gpt-4o-mini".into(),
        body: Sealed {
            key_id: "default".into(),
            nonce: vec![7; 12],
            ciphertext: vec![1, 2, 3, 4, 5, 250, 251],
        },
        start_by: None,
        enqueue_by: None,
    }
}

fn sample_sealed_request() -> SealedRequest {
    SealedRequest {
        request: sample_request(),
        provider_key: Some("sk-fixture".into()),
        provider_keys: Default::default(),
        task: None,
    }
}

fn sample_chunks() -> Vec<ReplyChunk> {
    let id = fixed_id();
    vec![
        ReplyChunk {
            delta: Some(Delta {
                role: Some(Role::Assistant),
                content: Some("Hel".into()),
                tool_calls: vec![],
            }),
            provider: Some("openai".into()),
            model: Some("gpt-4o-mini-2024-07-18".into()),
            ..ReplyChunk::new(id, 0)
        },
        ReplyChunk {
            delta: Some(Delta {
                role: None,
                content: None,
                tool_calls: vec![ToolCallDelta {
                    index: 0,
                    id: Some("call_1".into()),
                    name: Some("get_weather".into()),
                    arguments: Some("{\"ci".into()),
                }],
            }),
            ..ReplyChunk::new(id, 1)
        },
        ReplyChunk {
            finish_reason: Some(FinishReason::ToolCalls),
            usage: Some(Usage {
                input_tokens: 12,
                output_tokens: 5,
                cached_input_tokens: Some(3),
            }),
            last: true,
            ..ReplyChunk::new(id, 2)
        },
        ReplyChunk::failure(
            id,
            3,
            ErrorBody {
                kind: ErrorKind::RateLimited,
                message: "slow down".into(),
                param: None,
                retry_after_ms: Some(1500),
                provider_status: Some(429),
            },
        ),
    ]
}

fn round_trip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = encode(value).unwrap();
    let back: T = decode(&bytes).unwrap();
    assert_eq!(&back, value);
}

#[test]
fn every_message_round_trips() {
    round_trip(&sample_request());
    round_trip(&sample_envelope());
    round_trip(&sample_sealed_request());
    for chunk in sample_chunks() {
        round_trip(&chunk);
    }
    round_trip(&ErrorBody::new(ErrorKind::NotFound, "no such model"));
}

#[test]
fn encoding_is_a_named_map_with_string_ids() {
    let bytes = encode(&sample_envelope()).unwrap();
    // A map with field names (not a positional array) ...
    assert_eq!(
        bytes[0] & 0xf0,
        0x80,
        "top level must be a MessagePack fixmap"
    );
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("request_id"));
    assert!(text.contains("schema_version"));
    // ... with the UUID as its canonical string, readable from any language.
    assert!(text.contains("01937a4e-7d2c-7b3e-9f10-1234567890ab"));
}

#[test]
fn unknown_fields_and_enum_values_from_newer_peers_are_tolerated() {
    #[derive(serde::Serialize)]
    struct NewerChunk<'a> {
        request_id: Uuid,
        seq: u32,
        finish_reason: &'a str,
        last: bool,
        brand_new_field: u64,
    }
    let bytes = encode(&NewerChunk {
        request_id: fixed_id(),
        seq: 4,
        finish_reason: "a_reason_from_the_future",
        last: true,
        brand_new_field: 9,
    })
    .unwrap();
    let chunk: ReplyChunk = decode(&bytes).unwrap();
    assert_eq!(chunk.seq, 4);
    assert_eq!(chunk.finish_reason, Some(FinishReason::Other));
    assert!(chunk.last);
    assert_eq!(chunk.delta, None);
}

#[test]
fn response_formats_round_trip_and_name_who_cannot_honour_them() {
    use schemas::ResponseFormat;
    use schemas::subjects::Provider;
    let schema = ResponseFormat::JsonSchema {
        name: "event".into(),
        description: None,
        schema_json: r#"{"type":"object"}"#.into(),
        strict: Some(true),
    };
    for format in [ResponseFormat::JsonObject, schema.clone()] {
        let mut request = sample_request();
        request.response_format = Some(format.clone());
        round_trip(&request);
        // A tagged map other languages can write: {"type": "json_object"}.
        let text = String::from_utf8_lossy(&encode(&request).unwrap()).into_owned();
        assert!(text.contains("response_format") && text.contains(format.kind()));
    }
    // Absent, the field is not written: a request without one encodes as before.
    let plain = String::from_utf8_lossy(&encode(&sample_request()).unwrap()).into_owned();
    assert!(!plain.contains("response_format"));

    for provider in [Provider::OpenAi, Provider::Google] {
        assert_eq!(ResponseFormat::JsonObject.refusal(Some(provider)), None);
        assert_eq!(schema.refusal(Some(provider)), None);
    }
    assert_eq!(schema.refusal(Some(Provider::Anthropic)), None);
    let why = ResponseFormat::JsonObject
        .refusal(Some(Provider::Anthropic))
        .unwrap();
    assert!(why.contains("json_schema"), "{why}");
    for format in [ResponseFormat::JsonObject, schema] {
        let why = format.refusal(None).unwrap();
        assert!(
            why.contains("open models") && why.contains(format.kind()),
            "{why}"
        );
    }
}

#[test]
fn garbage_does_not_decode() {
    assert!(decode::<RequestEnvelope>(b"\xc1\xc1\xc1").is_err());
    assert!(decode::<RequestEnvelope>(&encode(&sample_request()).unwrap()).is_err());
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

/// Fixtures are written once (when missing) and never regenerated: they pin what
/// version 1 peers send, and every later build must still read them.
fn check_fixture<T>(name: &str, value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let path = fixtures_dir().join(format!("{name}.msgpack"));
    if !path.exists() {
        assert!(
            std::env::var_os("WRITE_MISSING_FIXTURES").is_some(),
            "fixture {} is missing; create it with WRITE_MISSING_FIXTURES=1",
            path.display()
        );
        std::fs::create_dir_all(fixtures_dir()).unwrap();
        std::fs::write(&path, encode(value).unwrap()).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    let decoded: T = decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&decoded, value, "{}", path.display());
}

#[test]
fn v1_fixtures_decode() {
    check_fixture("request_envelope", &sample_envelope());
    check_fixture("chat_request", &sample_request());
    check_fixture("sealed_request", &sample_sealed_request());
    for (i, chunk) in sample_chunks().iter().enumerate() {
        check_fixture(&format!("reply_chunk_{i}"), chunk);
    }
    assert!(fixtures_dir().read_dir().unwrap().count() >= 7);
}

#[test]
fn sealed_request_round_trips_through_the_seal() {
    let key = SealKey::from_base64("default", &SealKey::generate_base64()).unwrap();
    let id = Uuid::now_v7();
    let plain = encode(&sample_sealed_request()).unwrap();
    let sealed = key.seal(id, &plain).unwrap();
    let text = String::from_utf8_lossy(&sealed.ciphertext);
    assert!(!text.contains("sk-fixture"));
    let opened: SealedRequest = decode(&key.open(id, &sealed).unwrap()).unwrap();
    assert_eq!(opened, sample_sealed_request());
    assert!(
        !format!("{opened:?}").contains("sk-fixture"),
        "Debug must redact the key"
    );
}

#[test]
fn json_schema_is_fresh() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (name, schema) in json_schema::all() {
        let text = json_schema::render(&schema).unwrap();
        let path = dir.join(format!("{name}.schema.json"));
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "JSON Schema out of date: {stale:?}; run `just schemas` and commit schemas/json/"
    );
}

#[test]
fn json_schema_names_every_field() {
    let (_, schema) = json_schema::all()
        .into_iter()
        .find(|(n, _)| *n == "request_envelope")
        .unwrap();
    let value = serde_json::to_value(&schema).unwrap();
    let required: Vec<&str> = value["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for field in [
        "schema_version",
        "request_id",
        "account",
        "created_at",
        "deadline",
        "reply",
        "model",
        "body",
    ] {
        assert!(
            required.contains(&field),
            "{field} missing from {required:?}"
        );
    }
}

#[test]
fn a_request_stored_after_its_enqueue_by_and_the_grace_is_too_late() {
    let by = Utc.with_ymd_and_hms(2026, 11, 22, 1, 2, 8).unwrap();
    let grace = chrono::Duration::milliseconds(schemas::envelope::ENQUEUE_GRACE_MS);
    let ms = chrono::Duration::milliseconds;
    let limited = RequestEnvelope {
        enqueue_by: Some(by),
        ..sample_envelope()
    };
    assert!(!limited.enqueued_too_late(by - ms(300)));
    assert!(
        !limited.enqueued_too_late(by + grace),
        "clock skew within the grace"
    );
    assert!(limited.enqueued_too_late(by + grace + ms(1)));
    // No limit (batch work, hand-offs, older ingresses): never too late.
    assert!(!sample_envelope().enqueued_too_late(by + ms(3_600_000)));
    // Old envelopes without the field still decode.
    let bytes = schemas::encode(&sample_envelope()).unwrap();
    let decoded: RequestEnvelope = schemas::decode(&bytes).unwrap();
    assert_eq!(decoded.enqueue_by, None);
}
