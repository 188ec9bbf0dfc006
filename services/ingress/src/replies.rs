//! Routes streamed reply chunks to the requests waiting for them.
//!
//! One wildcard subscription per ingress (`reply.<ingress>.*`) instead of one per
//! request: no SUB/UNSUB round of server interest per request. A request registers its
//! id *before* it publishes, so no chunk can arrive unrouted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use schemas::{ErrorBody, ErrorKind, ReplyChunk, subjects};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

type Routes = Mutex<HashMap<Uuid, mpsc::UnboundedSender<ReplyChunk>>>;

/// The reply router of one ingress.
#[derive(Debug)]
pub struct Replies {
    ingress_id: String,
    routes: Arc<Routes>,
}

/// A request's claim on its replies; dropping it stops routing them.
#[derive(Debug)]
pub struct Registration {
    pub id: Uuid,
    pub rx: mpsc::UnboundedReceiver<ReplyChunk>,
    routes: Arc<Routes>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Replies {
    /// Subscribes to this ingress's replies and routes them until `shutdown`.
    pub async fn start(
        client: &async_nats::Client,
        ingress_id: String,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Self, async_nats::SubscribeError> {
        let mut sub = client
            .subscribe(subjects::reply_wildcard(&ingress_id))
            .await?;
        let routes: Arc<Routes> = Arc::default();
        let table = routes.clone();
        tracker.spawn(async move {
            loop {
                let msg = tokio::select! {
                    msg = sub.next() => msg,
                    () = shutdown.cancelled() => None,
                };
                let Some(msg) = msg else { break };
                let Some(id) = subjects::request_id_of_reply(&msg.subject) else {
                    tracing::warn!(subject = %msg.subject, "reply on a subject without a request id");
                    continue;
                };
                let chunk = match schemas::decode::<ReplyChunk>(&msg.payload) {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        tracing::warn!(request_id = %id, error = %e, "undecodable reply chunk");
                        ReplyChunk::failure(
                            id,
                            u32::MAX,
                            ErrorBody::new(ErrorKind::Internal, "a worker sent a reply this ingress cannot read"),
                        )
                    }
                };
                let mut routes = table.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(tx) = routes.get(&id)
                    && tx.send(chunk).is_err()
                {
                    routes.remove(&id);
                }
            }
            let _ = sub.unsubscribe().await;
        });
        Ok(Self { ingress_id, routes })
    }

    /// The subject a worker answers `id` on.
    pub fn subject(&self, id: Uuid) -> String {
        subjects::reply(&self.ingress_id, id)
    }

    /// Starts routing `id`'s replies to the returned registration.
    pub fn register(&self, id: Uuid) -> Registration {
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        Registration {
            id,
            rx,
            routes: self.routes.clone(),
        }
    }

    /// Requests waiting for replies right now.
    pub fn waiting(&self) -> usize {
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
