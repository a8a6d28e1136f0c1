//! The Rust SDK for mabeam, on tokio and tonic.
//!
//! * [`MeshClient`]: membership, leaders, names, groups and the data plane's gRPC face (send, call, subscribe).
//! * [`AgentClient`]: spawn, stop, inspect and message agentd's agents (JSON values).
//! * [`CoordinatorClient`]: auctions (with a leader-following [`BidStream`]), negotiation, votes, markets,
//!   variables with watch, the ledger — through whichever coordinator is active.
//! * [`ExternalAgent`]: a Rust process that *is* an agent on the mesh.
//! * [`RunClient`]: durable runs (start, append, stream with resume from the last seq, cancel).
//!
//! Every call returns [`Result`] with the typed [`Error`] enum (one variant per gRPC code, each with
//! the ErrorInfo reason and metadata, RetryInfo and BadRequest details). Deadlines: calls that wait
//! for an answer take a timeout, which becomes the gRPC deadline; dropping a future cancels its call.

pub mod agent;
pub mod agents;
pub mod coordinator;
pub mod error;
pub mod mesh;
pub mod runs;
pub mod security;

/// The generated messages and clients (tonic + prost), from proto/mabeam/v1.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!("gen/mabeam.v1.rs");
}

pub use agent::{Context, ExternalAgent, Handler};
pub use agents::{AgentClient, SpawnOptions};
pub use coordinator::{BidStream, CoordinatorClient, CreateOptions};
pub use error::{code_name, Details, Error, Result};
pub use v1::ErrorReason;
pub use mesh::{Destination, MeshClient};
pub use runs::RunClient;
pub use security::{Security, Transport};

use std::time::Duration;

/// A lazily connecting channel to host:port or a full URL, with [`Security::default_from_env`]'s
/// credentials (the MABEAM_TOKEN / MABEAM_TLS_* environment; plaintext without them: loopback dev clusters).
pub fn channel(target: &str) -> Result<Transport> {
    Security::default_from_env()?.channel(target, false)
}

/// A channel like [`channel`] with HTTP/2 keepalive: a ping every 2 s unanswered for 2 s drops the
/// connection, so a stream on a server that went silent (host cut off, process paused) breaks instead
/// of waiting forever (the coordinator client; the coordinator accepts pings this often).
pub fn keepalive_channel(target: &str) -> Result<Transport> {
    Security::default_from_env()?.channel(target, true)
}

/// A request with a deadline.
pub(crate) fn request<T>(message: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// Repeat a call that is safe to repeat while the server answers UNAVAILABLE (4 attempts, RetryInfo honoured).
pub(crate) async fn retrying<T, F, Fut>(mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
{
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(status) => {
                let error = Error::from(status);
                if !matches!(error, Error::Unavailable(_)) || attempt >= 4 {
                    return Err(error);
                }
                tokio::time::sleep(error.details().retry_after.unwrap_or(delay)).await;
                delay *= 2;
                attempt += 1;
            }
        }
    }
}
