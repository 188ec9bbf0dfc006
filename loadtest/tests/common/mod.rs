//! Starts the mock provider in-process on a free loopback port.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;

use switchyard_loadtest::mock::openai::{self, MockConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running mock; stopped when dropped.
pub struct Mock {
    pub addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Mock {
    pub async fn start(config: MockConfig) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(openai::serve(
            listener,
            config,
            stop.clone().cancelled_owned(),
        ));
        tasks.close();
        Mock { addr, stop, tasks }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/chat/completions", self.addr)
    }

    /// Stops the server and waits until it has finished.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
