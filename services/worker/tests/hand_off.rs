//! Handing a request to its next fallback model, through a real nats-server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use futures::StreamExt;
use schemas::subjects;
use schemas::{
    ChatRequest, Message, Params, ReplyTarget, RequestEnvelope, Role, SealKey, SealedRequest,
};
use switchyard_nats::testing::NatsServer;
use switchyard_worker::Intake;
use uuid::Uuid;

#[tokio::test]
async fn a_closed_request_goes_on_to_its_open_fallback_with_its_keys() {
    let nats = NatsServer::start().unwrap();
    let client = nats.connect_and_apply().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let seal = SealKey::from_base64("k1", &SealKey::generate_base64()).unwrap();
    let intake = Intake {
        client: client.clone(),
        js: js.clone(),
        seal: seal.clone(),
        stream: subjects::REQUESTS_STREAM.into(),
        consumer: subjects::TRANSLATOR_CONSUMER.into(),
        dead_letters: Default::default(),
        expired: Default::default(),
    };
    let open = "HuggingFaceTB/SmolLM2-135M-Instruct";
    let token = subjects::model_token(open).unwrap();
    let consumer = switchyard_nats::ensure_open_model_consumer(&js, &token, "acct")
        .await
        .unwrap();

    let request_id = Uuid::now_v7();
    let sealed = SealedRequest {
        request: ChatRequest {
            model: "openai/gpt-4o-mini".into(),
            messages: vec![Message::text(Role::User, "hi")],
            params: Params::default(),
            tools: vec![],
            tool_choice: None,
            stream: true,
            fallback_models: vec![open.into(), "anthropic/claude-haiku-4-5".into()],
            response_format: None,
        },
        provider_key: Some("sk-openai".into()),
        provider_keys: [("anthropic".to_string(), "sk-ant".to_string())].into(),
        task: None,
    };
    let now = chrono::Utc::now();
    let envelope = RequestEnvelope {
        schema_version: schemas::SCHEMA_VERSION,
        request_id,
        account: "acct".into(),
        created_at: now,
        deadline: now + chrono::Duration::seconds(30),
        reply: ReplyTarget::Stream {
            subject: subjects::reply("ing1", request_id),
        },
        model: "openai/gpt-4o-mini".into(),
        body: seal
            .seal(request_id, &schemas::encode(&sealed).unwrap())
            .unwrap(),
        start_by: None,
        // The ingress's limit for its own publish, passed long before the hand-off.
        enqueue_by: Some(now - chrono::Duration::seconds(60)),
    };
    let rest = sealed.request.fallback_models.clone();
    intake
        .hand_off(&envelope, &sealed, &rest, None)
        .await
        .unwrap();
    // Published twice (a retry): deduplicated by its message id.
    intake
        .hand_off(&envelope, &sealed, &rest, None)
        .await
        .unwrap();

    let mut batch = consumer
        .fetch()
        .max_messages(10)
        .expires(std::time::Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let message = batch.next().await.unwrap().unwrap();
    assert_eq!(
        message.subject.as_str(),
        subjects::open_request(&token, "acct")
    );
    let handed: RequestEnvelope = schemas::decode(&message.payload).unwrap();
    assert_eq!(handed.request_id, request_id);
    assert_eq!(handed.model, open);
    assert_eq!(handed.reply, envelope.reply);
    assert_eq!(handed.deadline, envelope.deadline);
    assert_eq!(
        handed.enqueue_by, None,
        "the hand-off is not held to the ingress's limit"
    );
    let opened: SealedRequest =
        schemas::decode(&seal.open(request_id, &handed.body).unwrap()).unwrap();
    assert_eq!(opened.request.model, open);
    assert_eq!(
        opened.request.fallback_models,
        vec!["anthropic/claude-haiku-4-5".to_string()]
    );
    assert_eq!(opened.provider_key, None);
    assert_eq!(opened.key_for("anthropic", "switchyard"), Some("sk-ant"));
    assert_eq!(opened.key_for("openai", "switchyard"), Some("sk-openai"));
    message.ack().await.unwrap();
    assert!(
        batch.next().await.is_none(),
        "the retried hand-off was deduplicated"
    );

    // The account had no cluster of the open model: it has one now, with the defaults,
    // so the autoscaler starts an instance for the handed request.
    let clusters = js.get_key_value(subjects::CLUSTERS_BUCKET).await.unwrap();
    let spec: schemas::cluster::ClusterSpec = serde_json::from_slice(
        &clusters
            .get(schemas::cluster::spec_key("acct", open).unwrap())
            .await
            .unwrap()
            .expect("a cluster spec"),
    )
    .unwrap();
    assert_eq!(spec.model_id, open);
    assert_eq!(spec.capacity.min, 0);
    assert_eq!(spec.instance_type, "cpu");

    // Nothing left to hand to.
    assert!(
        intake
            .hand_off(&envelope, &sealed, &[], None)
            .await
            .is_err()
    );
}
