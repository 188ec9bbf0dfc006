//! Cancellation of running requests: one wildcard subscription (`cancel.*`) per
//! process, routed to the request it names, instead of a subscription per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use schemas::subjects;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

type Table = Mutex<HashMap<Uuid, CancellationToken>>;

/// The requests this process runs that a caller may cancel.
#[derive(Debug, Default)]
pub struct Cancels {
    table: Arc<Table>,
}

/// A running request's cancellation token; dropping it forgets the request.
#[derive(Debug)]
pub struct Watch {
    id: Uuid,
    pub token: CancellationToken,
    table: Arc<Table>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Cancels {
    /// Subscribes to `cancel.*` and cancels the named requests until `shutdown`.
    pub async fn start(
        client: &async_nats::Client,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Self, async_nats::SubscribeError> {
        let mut sub = client.subscribe(subjects::cancel_wildcard()).await?;
        let cancels = Self::default();
        let table = cancels.table.clone();
        tracker.spawn(async move {
            loop {
                let msg = tokio::select! {
                    msg = sub.next() => msg,
                    () = shutdown.cancelled() => None,
                };
                let Some(msg) = msg else { break };
                let Some(id) = subjects::request_id_of_cancel(&msg.subject) else {
                    continue;
                };
                let token = table
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&id)
                    .cloned();
                if let Some(token) = token {
                    token.cancel();
                }
            }
            let _ = sub.unsubscribe().await;
        });
        Ok(cancels)
    }

    /// Watches `id` for cancellation while the returned [`Watch`] lives.
    pub fn watch(&self, id: Uuid) -> Watch {
        let token = CancellationToken::new();
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, token.clone());
        Watch {
            id,
            token,
            table: self.table.clone(),
        }
    }
}
