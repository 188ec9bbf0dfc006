//! The handling of one request message on an inference instance.

use std::sync::Arc;

use async_nats::jetstream;
use schemas::catalog::OpenModel;
use schemas::{ContentPart, Delta, ErrorBody, ErrorKind, Role, TaskInput, TaskOutput, Usage};
use switchyard_worker::{Cancels, ChunkSink, Intake, Received, Supervised};
use tracing::Instrument;

use crate::decoder::{Decoder, GenEvent, GenRequest, Sampling};
use crate::encoder::{Encoder, HYPOTHESIS_TEMPLATE, zero_shot_scores};
use crate::metrics::{Metrics, OutcomeLabels};

/// Who answers open-model requests, on the reply's first chunk.
pub const PROVIDER: &str = "switchyard";

/// The model engine of this instance.
#[derive(Debug, Clone)]
pub enum Engine {
    Encoder(Encoder),
    Decoder(Decoder),
}

/// Shared by every request this instance handles.
#[derive(Debug)]
pub struct Worker {
    pub model_id: String,
    pub open: OpenModel,
    pub engine: Engine,
    pub intake: Intake,
    pub cancels: Cancels,
    pub metrics: Metrics,
    /// The deliveries running now (listed in the heartbeat).
    pub in_flight: switchyard_worker::InFlight,
}

fn invalid(message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorKind::InvalidRequest, message)
}

fn with_param(mut e: ErrorBody, param: &str) -> ErrorBody {
    e.param = Some(param.to_string());
    e
}

/// Handles one message; always acks, naks or terminates it.
pub async fn handle(worker: Arc<Worker>, message: jetstream::Message) {
    let _running = worker.in_flight.track(&message);
    let Some(Received {
        envelope,
        sealed,
        mut sink,
        traceparent,
    }) = worker.intake.receive(&message, |_| PROVIDER).await
    else {
        return;
    };
    let span = tracing::info_span!(
        "request",
        request_id = %envelope.request_id,
        model = %envelope.model,
        traceparent = traceparent.as_deref().unwrap_or_default(),
    );
    async {
        let task = sealed.task.as_ref().map_or("chat", TaskInput::name);
        let outcome = if envelope.model != worker.model_id || sealed.request.model != envelope.model
        {
            Err(invalid(format!(
                "this instance serves '{}', not '{}'",
                worker.model_id, envelope.model
            )))
        } else {
            let cancel = worker.cancels.watch(envelope.request_id);
            let work = run(&worker, &sealed, envelope.request_id, &mut sink);
            match switchyard_worker::supervise(&message, &cancel.token, envelope.deadline, work)
                .await
            {
                Supervised::Done(result) => result,
                Supervised::Cancelled => {
                    tracing::info!("cancelled by the caller");
                    Err(invalid("cancelled by the caller"))
                }
                Supervised::DeadlinePassed => Err(ErrorBody::new(
                    ErrorKind::Timeout,
                    "the model did not finish before the request deadline",
                )),
            }
        };
        // A model failure (e.g. out of memory) before anything reached the caller goes
        // on to the request's next fallback model, if it names one.
        let outcome = match outcome {
            Err(e)
                if e.kind == ErrorKind::Internal
                    && !sink.started()
                    && !sealed.request.fallback_models.is_empty() =>
            {
                match worker
                    .intake
                    .hand_off(
                        &envelope,
                        &sealed,
                        &sealed.request.fallback_models,
                        traceparent.as_deref(),
                    )
                    .await
                {
                    Ok(()) => Handled::HandedOff,
                    Err(reason) => {
                        tracing::warn!(error = %reason, "cannot hand the request to its fallback");
                        Handled::Done(Err(e))
                    }
                }
            }
            other => Handled::Done(other),
        };
        let label = match &outcome {
            Handled::Done(Ok(())) => "ok",
            Handled::Done(Err(e)) => e.kind.as_str(),
            Handled::HandedOff => "handed_off",
        };
        worker
            .metrics
            .requests
            .get_or_create(&OutcomeLabels {
                task: task.to_string(),
                outcome: label.to_string(),
            })
            .inc();
        if let Handled::Done(Err(error)) = outcome {
            tracing::info!(kind = error.kind.as_str(), "request failed");
            if let Err(e) = sink.fail(error).await {
                tracing::warn!(error = %e, "cannot send the failure");
            }
        }
        switchyard_worker::usage::finish_and_report(&message, &sink, &worker.intake.js, &envelope)
            .await;
    }
    .instrument(span)
    .await
}

enum Handled {
    Done(Result<(), ErrorBody>),
    /// The next fallback model's worker answers the caller now.
    HandedOff,
}

fn sent(e: switchyard_worker::SendError) -> ErrorBody {
    ErrorBody::new(ErrorKind::Internal, e.to_string())
}

async fn run(
    worker: &Worker,
    sealed: &schemas::SealedRequest,
    request_id: uuid::Uuid,
    sink: &mut ChunkSink,
) -> Result<(), ErrorBody> {
    match (&sealed.task, &worker.engine) {
        (None, Engine::Decoder(decoder)) => {
            // Free text where JSON was asked for would break the caller's parsing.
            if let Some(why) = sealed
                .request
                .response_format
                .as_ref()
                .and_then(|f| f.refusal(None))
            {
                return Err(with_param(invalid(why), "response_format"));
            }
            chat(worker, decoder, &sealed.request, request_id, sink).await
        }
        (Some(TaskInput::FeatureExtraction { inputs }), Engine::Encoder(encoder)) => {
            if inputs.is_empty() {
                return Err(with_param(invalid("no inputs to embed"), "input"));
            }
            let embedded = encoder.embed(inputs.clone()).await.map_err(model_error)?;
            sink.send_output(
                TaskOutput::FeatureExtraction {
                    embeddings: embedded.vectors,
                },
                Usage {
                    input_tokens: embedded.tokens,
                    output_tokens: 0,
                    cached_input_tokens: None,
                },
                &worker.model_id,
            )
            .await
            .map_err(sent)
        }
        (
            Some(TaskInput::ZeroShotClassification {
                text,
                candidate_labels,
                multi_label,
            }),
            Engine::Encoder(encoder),
        ) => {
            if candidate_labels.is_empty() {
                return Err(with_param(
                    invalid("candidate_labels is empty"),
                    "candidate_labels",
                ));
            }
            let mut texts = vec![text.clone()];
            texts.extend(
                candidate_labels
                    .iter()
                    .map(|l| HYPOTHESIS_TEMPLATE.replace("{}", l)),
            );
            let embedded = encoder.embed(texts).await.map_err(model_error)?;
            let (labels, scores) = zero_shot_scores(
                &embedded.vectors[0],
                &embedded.vectors[1..],
                candidate_labels,
                *multi_label,
            );
            sink.send_output(
                TaskOutput::ZeroShotClassification { labels, scores },
                Usage {
                    input_tokens: embedded.tokens,
                    output_tokens: 0,
                    cached_input_tokens: None,
                },
                &worker.model_id,
            )
            .await
            .map_err(sent)
        }
        (task, _) => Err(invalid(format!(
            "the model '{}' does not do {}",
            worker.model_id,
            task.as_ref().map_or("chat", TaskInput::name)
        ))),
    }
}

/// A sampling seed from a request id: its two halves folded (a v7 id's first half is
/// mostly its timestamp, the second mostly random).
fn seed_of(request_id: uuid::Uuid) -> u64 {
    let (high, low) = request_id.as_u64_pair();
    high ^ low
}

fn model_error(e: String) -> ErrorBody {
    tracing::warn!(error = %e, "model error");
    ErrorBody::new(ErrorKind::Internal, format!("the model failed: {e}"))
}

async fn chat(
    worker: &Worker,
    decoder: &Decoder,
    request: &schemas::ChatRequest,
    request_id: uuid::Uuid,
    sink: &mut ChunkSink,
) -> Result<(), ErrorBody> {
    if !request.tools.is_empty() {
        return Err(with_param(
            invalid(format!(
                "the model '{}' does not call tools",
                worker.model_id
            )),
            "tools",
        ));
    }
    if request.messages.iter().any(|m| {
        m.content
            .iter()
            .any(|p| matches!(p, ContentPart::Image { .. }))
    }) {
        return Err(with_param(
            invalid(format!(
                "the model '{}' takes text only, not images",
                worker.model_id
            )),
            "messages",
        ));
    }
    if request.messages.is_empty() {
        return Err(with_param(invalid("messages is empty"), "messages"));
    }
    let prompt = decoder.prompt(&request.messages).map_err(invalid)?;
    let limit = worker.open.max_input_tokens.min(decoder.context_length());
    if prompt.len() > limit {
        return Err(with_param(
            invalid(format!(
                "the conversation is {} tokens; '{}' takes at most {limit}",
                prompt.len(),
                worker.model_id
            )),
            "messages",
        ));
    }
    let p = &request.params;
    let d = &worker.open.defaults;
    let room = decoder.context_length().saturating_sub(prompt.len()).max(1);
    let max_tokens = p
        .max_tokens
        .or(d.max_tokens)
        .unwrap_or(256)
        .min(room as u32);
    if max_tokens == 0 {
        return Err(with_param(
            invalid("max_tokens must be at least 1"),
            "max_tokens",
        ));
    }
    let sampling = Sampling {
        temperature: p.temperature.or(d.temperature).unwrap_or(1.0) as f32,
        top_p: p.top_p.or(d.top_p).unwrap_or(1.0) as f32,
        top_k: p.top_k.or(d.top_k).unwrap_or(0) as usize,
        // Without a caller's seed, one from the request id: a redelivered request (its
        // first worker died) gets the same answer again, so a streaming caller's
        // answer continues where it was (the ingress checks the repeated part).
        seed: Some(p.seed.map_or_else(|| seed_of(request_id), |s| s as u64)),
    };
    let vocab = decoder.vocab_size();
    let mut logit_bias = Vec::with_capacity(p.logit_bias.len());
    for (token, &bias) in &p.logit_bias {
        match token.parse::<u32>() {
            Ok(id) if (id as usize) < vocab => logit_bias.push((id, bias as f32)),
            _ => {
                return Err(with_param(
                    invalid(format!(
                        "'logit_bias' names token {token}, not in the vocabulary of '{}' (ids 0 to {})",
                        worker.model_id,
                        vocab.saturating_sub(1)
                    )),
                    "logit_bias",
                ));
            }
        }
    }
    sink.set_dropped_params(schemas::chat::names_set(
        [
            ("presence_penalty", p.presence_penalty.is_some()),
            ("frequency_penalty", p.frequency_penalty.is_some()),
            ("reasoning_effort", p.reasoning_effort.is_some()),
        ]
        .into_iter()
        // logit_bias is applied here, with the model's own token ids.
        .chain(
            p.openai_options()
                .into_iter()
                .filter(|(name, _)| *name != "logit_bias"),
        ),
    ));
    let mut events = decoder.generate(GenRequest {
        prompt,
        max_tokens,
        sampling,
        stop: p.stop.clone(),
        logit_bias,
    });
    let model = worker.model_id.as_str();
    let mut first = true;
    while let Some(event) = events.recv().await {
        match event {
            GenEvent::Text(text) => {
                let delta = Delta {
                    role: first.then_some(Role::Assistant),
                    content: Some(text),
                    tool_calls: Vec::new(),
                };
                first = false;
                sink.send(Some(delta), None, None, Some(model), false)
                    .await
                    .map_err(sent)?;
            }
            GenEvent::Done {
                finish,
                input_tokens,
                output_tokens,
            } => {
                let delta = first.then(|| Delta {
                    role: Some(Role::Assistant),
                    content: Some(String::new()),
                    tool_calls: Vec::new(),
                });
                let usage = Usage {
                    input_tokens,
                    output_tokens,
                    cached_input_tokens: None,
                };
                return sink
                    .send(delta, Some(finish), Some(usage), Some(model), true)
                    .await
                    .map_err(sent);
            }
            GenEvent::Failed(e) => return Err(model_error(e)),
        }
    }
    Err(model_error("the generation stopped unexpectedly".into()))
}

#[cfg(test)]
mod tests {
    use super::seed_of;

    #[test]
    fn a_request_id_gives_one_seed_and_ids_of_the_same_millisecond_differ() {
        let a = uuid::Uuid::now_v7();
        let b = uuid::Uuid::now_v7();
        assert_eq!(seed_of(a), seed_of(a));
        assert_ne!(seed_of(a), seed_of(b));
        let (high, low) = a.as_u64_pair();
        assert_eq!(seed_of(a), high ^ low);
    }
}
