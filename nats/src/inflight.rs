//! The deliveries a worker is running, by their JetStream ack subjects.
//!
//! An inference instance lists them in its heartbeat. When it dies, the autoscaler NAKs
//! them (an ack is a publish to the delivery's reply subject, from any connection), so
//! they are redelivered at once instead of after the consumer's ack wait (30 s) — a
//! streaming caller's answer starts over on the replacement within a tick.
//!
//! nats-server checks only that a NAK's stream sequence is still pending, not which
//! delivery it names: a NAK must therefore come promptly after the death, before the
//! ack wait could have handed the message to someone else (the autoscaler sends them
//! only for an exit it has just reaped).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_nats::jetstream;

/// Prefix of every JetStream ack subject; nothing else is ever NAKed.
pub const ACK_PREFIX: &str = "$JS.ACK.";

/// The set of deliveries in progress (cheap to clone; clones share it).
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<Mutex<BTreeSet<String>>>);

/// Removes its delivery from the set when dropped.
#[derive(Debug)]
pub struct Running {
    set: InFlight,
    ack: Option<String>,
}

impl InFlight {
    /// Tracks `message` until the returned guard is dropped.
    pub fn track(&self, message: &jetstream::Message) -> Running {
        let ack = message
            .reply
            .as_ref()
            .map(ToString::to_string)
            .filter(|s| s.starts_with(ACK_PREFIX));
        if let (Some(ack), Ok(mut set)) = (&ack, self.0.lock()) {
            set.insert(ack.clone());
        }
        Running {
            set: self.clone(),
            ack,
        }
    }

    /// The ack subjects of the deliveries in progress.
    pub fn acks(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let (Some(ack), Ok(mut set)) = (&self.ack, self.set.0.lock()) {
            set.remove(ack);
        }
    }
}
