//! RunService: durable runs — start, append input frames, stream events with a resume cursor, cancel, inspect.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::agents::to_json;
use crate::error::{Error, Result};
use crate::v1::run_service_client::RunServiceClient;
use crate::v1;
use crate::security::{Security, Transport};
use crate::{channel, request, retrying};

/// A RunService client.
#[derive(Clone)]
pub struct RunClient {
    stub: RunServiceClient<Transport>,
    /// Tenant of start and list; empty means the token's ("default" without security; another: admin tokens only).
    pub tenant: String,
    /// Deadline of unary calls.
    pub timeout: Duration,
    /// How long `stream` keeps reconnecting without receiving an event.
    pub resume_for: Duration,
}

impl RunClient {
    /// A client for the agentd at host:port, with the environment's credentials ([`Security::default_from_env`]).
    pub fn connect(target: &str) -> Result<RunClient> {
        Ok(RunClient { stub: RunServiceClient::new(channel(target)?), tenant: String::new(), timeout: Duration::from_secs(10),
            resume_for: Duration::from_secs(15) })
    }

    /// A client for the agentd at host:port with these credentials (token, TLS).
    pub fn connect_with(target: &str, security: &Security) -> Result<RunClient> {
        Ok(RunClient { stub: RunServiceClient::new(security.channel(target, false)?), tenant: String::new(),
            timeout: Duration::from_secs(10), resume_for: Duration::from_secs(15) })
    }

    /// Start a run (idempotent by run_id: a repeat returns the run with created=false).
    pub async fn start<I: Serialize + ?Sized>(&self, run_id: &str, agent_type: &str, input: &I, labels: HashMap<String, String>)
        -> Result<v1::StartRunResponse> {
        let req = v1::StartRunRequest { run_id: run_id.to_string(), tenant: self.tenant.clone(), agent_type: agent_type.to_string(),
            input_json: to_json(input)?, labels, ..Default::default() };
        retrying(|| { let mut s = self.stub.clone(); let r = request(req.clone(), Some(self.timeout)); async move { s.start_run(r).await } })
            .await.map(|r| r.into_inner())
    }

    /// Append an input frame, idempotent by frame_id.
    pub async fn append<P: Serialize + ?Sized>(&self, run_id: &str, frame_id: &str, frame_type: &str, payload: &P)
        -> Result<v1::AppendFrameResponse> {
        let req = v1::AppendFrameRequest { run_id: run_id.to_string(), frame_id: frame_id.to_string(), r#type: frame_type.to_string(),
            payload_json: to_json(payload)? };
        retrying(|| { let mut s = self.stub.clone(); let r = request(req.clone(), Some(self.timeout)); async move { s.append_frame(r).await } })
            .await.map(|r| r.into_inner())
    }

    /// Approve a tool call waiting for a human (a "tool.approval_requested" event of the run names its
    /// `tool_call_id`); `note` says why, for the log and the model. The decision is a durable input of the
    /// run: the same decision again answers `duplicate` with the first seq (so it is retried on UNAVAILABLE).
    /// Errors (see [`Error::error_reason`]): `NotFound` with `ApprovalNotFound` (the run never asked about
    /// that call), `FailedPrecondition` with `ApprovalDecided` (denied already: a decision is final),
    /// `ApprovalExpired` (its deadline passed first) or `RunTerminal`.
    pub async fn approve(&self, run_id: &str, tool_call_id: &str, note: &str) -> Result<v1::ToolCallDecisionResponse> {
        let req = v1::ToolCallDecisionRequest { run_id: run_id.to_string(), tool_call_id: tool_call_id.to_string(),
            note: note.to_string() };
        retrying(|| { let mut s = self.stub.clone(); let r = request(req.clone(), Some(self.timeout)); async move { s.approve_tool_call(r).await } })
            .await.map(|r| r.into_inner())
    }

    /// Deny a tool call waiting for a human (the model is told, and may try something else); as `approve`.
    pub async fn deny(&self, run_id: &str, tool_call_id: &str, note: &str) -> Result<v1::ToolCallDecisionResponse> {
        let req = v1::ToolCallDecisionRequest { run_id: run_id.to_string(), tool_call_id: tool_call_id.to_string(),
            note: note.to_string() };
        retrying(|| { let mut s = self.stub.clone(); let r = request(req.clone(), Some(self.timeout)); async move { s.deny_tool_call(r).await } })
            .await.map(|r| r.into_inner())
    }

    pub async fn cancel(&self, run_id: &str, reason: &str) -> Result<v1::CancelRunResponse> {
        let req = v1::CancelRunRequest { run_id: run_id.to_string(), reason: reason.to_string() };
        retrying(|| { let mut s = self.stub.clone(); let r = request(req.clone(), Some(self.timeout)); async move { s.cancel_run(r).await } })
            .await.map(|r| r.into_inner())
    }

    pub async fn get(&self, run_id: &str) -> Result<v1::Run> {
        let req = v1::GetRunRequest { run_id: run_id.to_string() };
        retrying(|| { let mut s = self.stub.clone(); let r = request(req.clone(), Some(self.timeout)); async move { s.get_run(r).await } })
            .await.map(|r| r.into_inner().run.unwrap_or_default())
    }

    pub async fn list(&self, agent_type: &str, status: &str, page_size: i32, page_token: &str) -> Result<v1::ListRunsResponse> {
        let req = v1::ListRunsRequest { tenant: self.tenant.clone(), agent_type: agent_type.to_string(), status: status.to_string(),
            page_size, page_token: page_token.to_string() };
        retrying(|| { let mut s = self.stub.clone(); let r = request(req.clone(), Some(self.timeout)); async move { s.list_runs(r).await } })
            .await.map(|r| r.into_inner())
    }

    /// A run's events after `cursor` (0: from the beginning), gap-free and in seq order; with `follow`,
    /// new ones as they come. A broken stream (UNAVAILABLE) is reopened with the last seq received as
    /// the cursor. Dropping the stream stops it.
    pub fn stream(&self, run_id: &str, cursor: i64, follow: bool) -> ReceiverStream<Result<v1::RunEvent>> {
        let (tx, rx) = mpsc::channel(64);
        let (client, run_id) = (self.clone(), run_id.to_string());
        tokio::spawn(async move {
            let (mut last, mut quiet_since, mut delay) = (cursor, Instant::now(), Duration::from_millis(50));
            loop {
                let req = v1::StreamRunRequest { run_id: run_id.clone(), cursor: last, follow, ..Default::default() };
                let error = match client.stub.clone().stream_run(req).await {
                    Err(status) => Error::from(status),
                    Ok(response) => {
                        let mut events = response.into_inner();
                        loop {
                            match events.next().await {
                                None => return,
                                Some(Err(status)) => break Error::from(status),
                                Some(Ok(event)) if event.seq <= last => continue, // a resend: already delivered
                                Some(Ok(event)) => {
                                    (last, quiet_since, delay) = (event.seq, Instant::now(), Duration::from_millis(50));
                                    if tx.send(Ok(event)).await.is_err() {
                                        return; // the caller dropped the stream
                                    }
                                }
                            }
                        }
                    }
                };
                if error.code() != Code::Unavailable || quiet_since.elapsed() > client.resume_for {
                    let _ = tx.send(Err(error)).await;
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        });
        ReceiverStream::new(rx)
    }
}
