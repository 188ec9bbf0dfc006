//! What an instance reports about itself: lifecycle events and instance-second periods
//! to the USAGE stream, and a heartbeat in the KV bucket `instances`.
//!
//! Periods are consecutive and non-overlapping, `[billed_until, now)`, every
//! [`Reporter::period`]; each has the deterministic id `period:<instance>:<start_ms>`,
//! so a retried publish is counted once. The heartbeat carries `billed_until_ms`: when
//! an instance dies without saying so, the autoscaler bills the rest from there to the
//! death it noticed, under the id this instance would have used.
//!
//! A period whose PubAck never came (NATS away) may still be stored: the client sends
//! what it buffered once it reconnects. So an event, once published, never changes: the
//! unconfirmed period is retried exactly as it was, and the next one starts where it
//! ends. (Re-cutting it to end later under the same id would be taken for a duplicate
//! of the buffered copy, and the seconds between the two ends would never be billed.)

use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use schemas::cluster::{InstanceHeartbeat, heartbeat_key};
use schemas::{InstanceState, UsageBody, UsageEvent};

/// Who this instance is, for its events.
#[derive(Debug, Clone)]
pub struct Identity {
    pub instance_id: String,
    pub account: String,
    pub model: String,
    pub instance_type: String,
    pub execution_provider: String,
}

/// Publishes an instance's usage and heartbeat.
#[derive(Debug)]
pub struct Reporter {
    js: jetstream::Context,
    kv: Option<jetstream::kv::Store>,
    me: Identity,
    started_ms: i64,
    billed_until_ms: i64,
    /// The period published but not confirmed, retried as it is.
    unconfirmed: Option<UsageEvent>,
    /// The deliveries running, listed in each heartbeat.
    in_flight: switchyard_worker::InFlight,
    /// The deliveries the last heartbeat listed.
    beaten_acks: Vec<String>,
    state: InstanceState,
    /// How often a period is reported (and the heartbeat written).
    pub period: Duration,
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Reporter {
    /// Starts the record: the `started` event, the first heartbeat.
    pub async fn start(
        js: jetstream::Context,
        me: Identity,
        period: Duration,
        in_flight: switchyard_worker::InFlight,
    ) -> Self {
        let kv = match js.get_key_value(schemas::subjects::INSTANCES_BUCKET).await {
            Ok(kv) => Some(kv),
            Err(e) => {
                tracing::warn!(error = %e, "no instances bucket: no heartbeats (run `switchyard-nats apply`)");
                None
            }
        };
        let now = now_ms();
        let mut r = Self {
            js,
            kv,
            me,
            started_ms: now,
            billed_until_ms: now,
            unconfirmed: None,
            in_flight,
            beaten_acks: Vec::new(),
            state: InstanceState::Started,
            period,
        };
        r.lifecycle(InstanceState::Started).await;
        r
    }

    /// Records a state change (`ready`, `draining`, `stopped`).
    pub async fn lifecycle(&mut self, state: InstanceState) {
        self.state = state;
        let at = now_ms();
        self.publish(&UsageEvent {
            schema_version: schemas::SCHEMA_VERSION,
            event_id: UsageEvent::lifecycle_id(&self.me.instance_id, state),
            account: self.me.account.clone(),
            emitted_at: Utc::now(),
            body: UsageBody::Lifecycle {
                cluster: self.me.model.clone(),
                model: self.me.model.clone(),
                instance_type: self.me.instance_type.clone(),
                instance_id: self.me.instance_id.clone(),
                state,
                at_ms: at,
            },
        })
        .await;
        self.beat().await;
    }

    /// Reports the period since the last one, then beats.
    ///
    /// Cancel-safe: the event is kept as unconfirmed *before* it is sent, so a tick
    /// dropped between the send and the PubAck (the reporting loop ends when consuming
    /// does) leaves it to be retried as it was. Cut anew, the same period would carry
    /// the same id and a later end: the server would keep the first copy as the
    /// original and the seconds between the two ends would never be billed.
    pub async fn tick(&mut self) {
        // An unconfirmed period first, as it was; once it is stored, the rest up to now.
        if self.confirm().await {
            let now = now_ms();
            if now > self.billed_until_ms {
                self.unconfirmed = Some(self.period_event(self.billed_until_ms, now));
                self.confirm().await;
            }
        }
        self.beat().await;
    }

    /// Publishes the unconfirmed period, if there is one; true when none is left. Only a
    /// stored period moves the mark.
    async fn confirm(&mut self) -> bool {
        let Some(event) = &self.unconfirmed else {
            return true;
        };
        let end = period_end(event).unwrap_or(self.billed_until_ms);
        if !self.publish(event).await {
            return false;
        }
        self.unconfirmed = None;
        self.billed_until_ms = end;
        true
    }

    /// The period `[start_ms, end_ms)` of this instance, under its deterministic id.
    fn period_event(&self, start_ms: i64, end_ms: i64) -> UsageEvent {
        UsageEvent::instance_period(
            &self.me.account,
            &self.me.model,
            &self.me.instance_type,
            &self.me.instance_id,
            start_ms,
            end_ms,
        )
    }

    /// The last period, `stopped`, and the heartbeat removed.
    pub async fn stop(&mut self) {
        self.tick().await;
        self.lifecycle(InstanceState::Stopped).await;
        if let (Some(kv), Ok(key)) = (&self.kv, self.key()) {
            let _ = kv.delete(key).await;
        }
    }

    fn key(&self) -> Result<String, schemas::subjects::ModelIdError> {
        heartbeat_key(&self.me.account, &self.me.model, &self.me.instance_id)
    }

    /// A heartbeat now if the deliveries running are not the ones the last one listed:
    /// the autoscaler NAKs what a dead instance's heartbeat lists (redelivered at once),
    /// and a delivery taken since the last period's beat would otherwise wait out the
    /// 30 s ack wait.
    pub async fn beat_if_in_flight_changed(&mut self) {
        let in_flight_acks = self.in_flight.acks();
        if in_flight_acks != self.beaten_acks {
            self.beat_listing(in_flight_acks).await;
        }
    }

    async fn beat(&mut self) {
        self.beat_listing(self.in_flight.acks()).await;
    }

    /// Writes the heartbeat listing `in_flight_acks`, the deliveries running now.
    async fn beat_listing(&mut self, in_flight_acks: Vec<String>) {
        let Some(kv) = &self.kv else { return };
        let beat = InstanceHeartbeat {
            instance_id: self.me.instance_id.clone(),
            account: self.me.account.clone(),
            model: self.me.model.clone(),
            instance_type: self.me.instance_type.clone(),
            state: self.state,
            started_ms: self.started_ms,
            billed_until_ms: self.billed_until_ms,
            unconfirmed_until_ms: self.unconfirmed.as_ref().and_then(period_end),
            in_flight_acks: in_flight_acks.clone(),
            beat_ms: now_ms(),
            execution_provider: Some(self.me.execution_provider.clone()),
            pid: Some(std::process::id()),
            period_ms: Some(u64::try_from(self.period.as_millis()).unwrap_or(u64::MAX)),
        };
        let (Ok(key), Ok(value)) = (self.key(), serde_json::to_vec(&beat)) else {
            return;
        };
        match kv.put(key, value.into()).await {
            Ok(_) => self.beaten_acks = in_flight_acks,
            Err(e) => tracing::warn!(error = %e, "heartbeat not written"),
        }
    }

    /// JetStream publish with an awaited PubAck and the event id as `Nats-Msg-Id`.
    async fn publish(&self, event: &UsageEvent) -> bool {
        let (Ok(subject), Ok(payload)) = (event.subject(), schemas::encode(&event)) else {
            return false;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(schemas::headers::MSG_ID, event.event_id.as_str());
        match self
            .js
            .publish_with_headers(subject, headers, payload.into())
            .await
        {
            Ok(ack) => match ack.await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "usage event not stored");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "usage event not published");
                false
            }
        }
    }
}

/// The end of a period event.
fn period_end(event: &UsageEvent) -> Option<i64> {
    match &event.body {
        UsageBody::InstancePeriod { end_ms, .. } => Some(*end_ms),
        _ => None,
    }
}
