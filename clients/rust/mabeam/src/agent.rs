//! External agents: a Rust process that *is* an agent on the mesh.
//!
//! It attaches to its host's meshd over one `MeshService.AttachAgent` stream, registers names and
//! groups, and handles casts and calls one at a time, in order; agentd's agents call it by name and
//! it calls them. When the stream drops it reconnects with exponential backoff and attaches again.
//! Payloads follow agentd's msgpack convention (docs/sdks.md); a call made through the handler's
//! [`Context`] keeps what is left of the handled call's deadline.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::error::{code_from_name, Error, Result};
use crate::v1::mesh_service_client::MeshServiceClient;
use crate::v1::{self, agent_stream_in, agent_stream_out, AgentRef};
use crate::channel;
use crate::security::Security;

type Reply = Pin<Box<dyn Future<Output = Result<Value>> + Send>>;
type Done = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The handlers of an agent.
#[derive(Clone, Default)]
pub struct Handler {
    on_call: Option<Arc<dyn Fn(Value, Context) -> Reply + Send + Sync>>,
    on_cast: Option<Arc<dyn Fn(Value, Context) -> Done + Send + Sync>>,
}

/// What a handler gets besides the message.
#[derive(Clone)]
pub struct Context {
    /// Who sent it.
    pub sender: Option<AgentRef>,
    /// True when the sender waits for a reply.
    pub is_call: bool,
    /// The deadline of the call being handled (None for a cast).
    pub deadline: Option<SystemTime>,
    /// The data-plane header.
    pub envelope: v1::Envelope,
    /// The agent, to call and cast from the handler.
    pub agent: AgentHandle,
}

impl Context {
    /// Call an agent by name within what is left of the handled call's deadline (5 s for a cast).
    pub async fn call<M: Serialize + ?Sized, R: DeserializeOwned>(&self, to: &str, msg: &M) -> Result<R> {
        let timeout = match self.deadline {
            Some(deadline) => deadline.duration_since(SystemTime::now()).map_err(|_| {
                Error::msg(Code::DeadlineExceeded, "the call being handled is past its deadline")
            })?,
            None => Duration::from_secs(5),
        };
        self.agent.call(to, msg, timeout).await
    }
}

struct Shared {
    names: Vec<String>,
    out: Mutex<Option<mpsc::UnboundedSender<v1::AgentStreamIn>>>,
    results: Mutex<HashMap<u64, oneshot::Sender<v1::AgentOutboundResult>>>,
    next_id: AtomicU64,
    reference: Mutex<Option<AgentRef>>,
    attachments: AtomicU64,
}

/// A cheap handle to a running agent: its address, and calls and casts from it.
#[derive(Clone)]
pub struct AgentHandle {
    shared: Arc<Shared>,
}

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    msg: Value,
    #[serde(default)]
    ok: Option<Value>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize, Serialize)]
struct ErrorBody {
    code: String,
    message: String,
}

fn pack(value: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap_or_default()
}

impl AgentHandle {
    /// The agent's address while attached.
    pub fn reference(&self) -> Option<AgentRef> {
        self.shared.reference.lock().unwrap().clone()
    }

    /// How often the agent attached (1 + reconnects).
    pub fn attachments(&self) -> u64 {
        self.shared.attachments.load(Ordering::SeqCst)
    }

    async fn outbound(&self, mut req: v1::AgentOutbound) -> Result<v1::AgentOutboundResult> {
        let (tx, rx) = oneshot::channel();
        {
            let out = self.shared.out.lock().unwrap();
            let out = out.as_ref().ok_or_else(|| Error::msg(Code::Unavailable, "the agent is not attached"))?;
            req.request_id = self.shared.next_id.fetch_add(1, Ordering::SeqCst) + 1;
            self.shared.results.lock().unwrap().insert(req.request_id, tx);
            out.send(v1::AgentStreamIn { body: Some(agent_stream_in::Body::Outbound(req)) })
                .map_err(|_| Error::msg(Code::Unavailable, "the agent is not attached"))?;
        }
        let result = rx.await.map_err(|_| Error::msg(Code::Unavailable, "the agent's stream ended"))?;
        if result.code != 0 {
            return Err(Error::msg(Code::from(result.code), result.message));
        }
        Ok(result)
    }

    /// Call an agent by name with `timeout` as the call's deadline.
    pub async fn call<M: Serialize + ?Sized, R: DeserializeOwned>(&self, to: &str, msg: &M, timeout: Duration) -> Result<R> {
        let msg = serde_json::to_value(msg).map_err(|e| Error::msg(Code::InvalidArgument, e.to_string()))?;
        let payload = pack(&json!({"to": to, "msg": msg}));
        let result = self.outbound(v1::AgentOutbound {
            to: Some(v1::agent_outbound::To::ToName(to.to_string())), payload, call: true,
            timeout_ms: timeout.as_millis().max(1) as u32, ..Default::default()
        }).await?;
        let body: Body = rmp_serde::from_slice(&result.payload)
            .map_err(|e| Error::msg(Code::Internal, format!("undecodable reply: {e}")))?;
        if let Some(error) = body.error {
            return Err(Error::msg(code_from_name(&error.code), error.message));
        }
        serde_json::from_value(body.ok.unwrap_or(Value::Null)).map_err(|e| Error::msg(Code::Internal, e.to_string()))
    }

    /// Cast to an agent by name (NotFound at once for an unknown name).
    pub async fn cast<M: Serialize + ?Sized>(&self, to: &str, msg: &M) -> Result<()> {
        let msg = serde_json::to_value(msg).map_err(|e| Error::msg(Code::InvalidArgument, e.to_string()))?;
        let payload = pack(&json!({"to": to, "msg": msg, "sender": self.shared.names.first()}));
        self.outbound(v1::AgentOutbound { to: Some(v1::agent_outbound::To::ToName(to.to_string())), payload, ..Default::default() }).await?;
        Ok(())
    }

    /// Cast to every member of a group cluster-wide (`one` false) or to one in turn.
    pub async fn cast_group<M: Serialize + ?Sized>(&self, group: &str, msg: &M, one: bool) -> Result<()> {
        let msg = serde_json::to_value(msg).map_err(|e| Error::msg(Code::InvalidArgument, e.to_string()))?;
        let mode = if one { "one" } else { "all" };
        let payload = pack(&json!({"group": group, "mode": mode, "msg": msg, "sender": self.shared.names.first()}));
        let address = v1::GroupAddress { group: group.to_string(),
            mode: if one { v1::GroupMode::One as i32 } else { v1::GroupMode::All as i32 } };
        self.outbound(v1::AgentOutbound { to: Some(v1::agent_outbound::To::ToGroup(address)), payload, ..Default::default() }).await?;
        Ok(())
    }
}

/// An external agent, configured with a builder and started with [`ExternalAgent::start`].
pub struct ExternalAgent {
    endpoint: String,
    tenant: String,
    names: Vec<String>,
    groups: Vec<String>,
    max_pending: u32,
    handler: Handler,
    backoff: (Duration, Duration),
    security: Option<Security>,
}

/// A started agent: its handle, and `stop` to detach.
pub struct RunningAgent {
    /// Calls and casts from the agent, its address.
    pub handle: AgentHandle,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningAgent {
    /// Detach (the names go) and stop reconnecting.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl ExternalAgent {
    /// An agent that will attach to the meshd at host:port.
    pub fn new(endpoint: &str) -> ExternalAgent {
        ExternalAgent { endpoint: endpoint.to_string(), tenant: String::new(), names: vec![], groups: vec![], max_pending: 0,
            handler: Handler::default(), backoff: (Duration::from_millis(50), Duration::from_secs(2)), security: None }
    }
    /// A name to register while attached.
    pub fn name(mut self, name: &str) -> Self { self.names.push(name.to_string()); self }
    /// A group to join while attached.
    pub fn group(mut self, group: &str) -> Self { self.groups.push(group.to_string()); self }
    pub fn tenant(mut self, tenant: &str) -> Self { self.tenant = tenant.to_string(); self }
    /// Credentials (token, TLS) for the stream to meshd; default: the environment's ([`Security::default_from_env`]).
    pub fn security(mut self, security: &Security) -> Self { self.security = Some(security.clone()); self }
    /// Mailbox bound at meshd: senders beyond it get ResourceExhausted (0: 1024).
    pub fn max_pending(mut self, bound: u32) -> Self { self.max_pending = bound; self }
    /// Reconnect delay bounds.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self { self.backoff = (min, max); self }
    /// The call handler; an `Err` keeps its code at the caller.
    pub fn on_call<F, Fut>(mut self, f: F) -> Self
    where F: Fn(Value, Context) -> Fut + Send + Sync + 'static, Fut: Future<Output = Result<Value>> + Send + 'static {
        self.handler.on_call = Some(Arc::new(move |m, c| Box::pin(f(m, c))));
        self
    }
    /// The cast handler.
    pub fn on_cast<F, Fut>(mut self, f: F) -> Self
    where F: Fn(Value, Context) -> Fut + Send + Sync + 'static, Fut: Future<Output = ()> + Send + 'static {
        self.handler.on_cast = Some(Arc::new(move |m, c| Box::pin(f(m, c))));
        self
    }

    /// Start serving in a task and wait until attached (or fail with the attach error after `wait`).
    pub async fn start(self, wait: Duration) -> Result<RunningAgent> {
        let shared = Arc::new(Shared { names: self.names.clone(), out: Mutex::new(None), results: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0), reference: Mutex::new(None), attachments: AtomicU64::new(0) });
        let handle = AgentHandle { shared };
        let (stop_tx, stop_rx) = oneshot::channel();
        let (state_tx, mut state_rx) = watch::channel::<Option<Result<()>>>(None);
        let task = tokio::spawn(self.run(handle.clone(), stop_rx, state_tx));
        let waited = tokio::time::timeout(wait, async {
            loop {
                if let Some(state) = state_rx.borrow_and_update().clone() {
                    return state;
                }
                if state_rx.changed().await.is_err() {
                    return Err(Error::msg(Code::Unavailable, "the agent stopped"));
                }
            }
        }).await;
        match waited {
            Ok(Ok(())) => Ok(RunningAgent { handle, stop: Some(stop_tx), task }),
            Ok(Err(error)) => { let _ = stop_tx.send(()); Err(error) }
            Err(_) => { let _ = stop_tx.send(()); Err(Error::msg(Code::DeadlineExceeded, "not attached in time")) }
        }
    }

    async fn run(self, handle: AgentHandle, mut stop: oneshot::Receiver<()>, state: watch::Sender<Option<Result<()>>>) {
        let mut delay = self.backoff.0;
        loop {
            let before = handle.attachments();
            let outcome = tokio::select! {
                _ = &mut stop => return,
                outcome = self.serve_once(&handle, &state) => outcome,
            };
            if let Err(error) = outcome {
                if handle.attachments() == 0 && (error.code() == Code::InvalidArgument || state.borrow().is_none()) {
                    let fatal = error.code() == Code::InvalidArgument;
                    state.send_replace(Some(Err(error)));
                    if fatal { return; }
                    state.send_replace(None);
                }
            }
            if handle.attachments() > before { delay = self.backoff.0; }
            let jitter = delay.mul_f64(0.5 + rand::random::<f64>());
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(jitter) => {}
            }
            delay = (delay * 2).min(self.backoff.1);
        }
    }

    async fn serve_once(&self, handle: &AgentHandle, state: &watch::Sender<Option<Result<()>>>) -> Result<()> {
        let transport = match &self.security {
            Some(security) => security.channel(&self.endpoint, false)?,
            None => channel(&self.endpoint)?,
        };
        let mut stub = MeshServiceClient::new(transport);
        let (out_tx, out_rx) = mpsc::unbounded_channel::<v1::AgentStreamIn>();
        out_tx.send(v1::AgentStreamIn { body: Some(agent_stream_in::Body::Attach(v1::AttachAgentRequest {
            tenant: self.tenant.clone(), agent_id: String::new(), names: self.names.clone(), groups: self.groups.clone(),
            max_pending: self.max_pending })) }).ok();
        let mut inbound = stub.attach_agent(UnboundedReceiverStream::new(out_rx)).await?.into_inner();
        let (deliveries_tx, mut deliveries_rx) = mpsc::unbounded_channel::<v1::AgentDelivery>();
        let handler = self.handler.clone();
        let agent = handle.clone();
        let handled_tx = out_tx.clone();
        let worker = tokio::spawn(async move {
            while let Some(delivery) = deliveries_rx.recv().await {
                let envelope = delivery.envelope.clone().unwrap_or_default();
                if envelope.kind == v1::MessageKind::Error as i32 {
                    continue; // a cast of ours bounced; the sender learns nothing more here
                }
                let reply = dispatch(&handler, &agent, &delivery.payload, envelope).await;
                let _ = handled_tx.send(v1::AgentStreamIn { body: Some(agent_stream_in::Body::Handled(v1::AgentHandled {
                    delivery_id: delivery.delivery_id, reply, ..Default::default() })) });
            }
        });
        let result = loop {
            match inbound.next().await {
                None => break Err(Error::msg(Code::Unavailable, "the stream ended")),
                Some(Err(status)) => break Err(Error::from(status)),
                Some(Ok(message)) => match message.body {
                    Some(agent_stream_out::Body::Attached(attached)) => {
                        *handle.shared.reference.lock().unwrap() = attached.endpoint;
                        *handle.shared.out.lock().unwrap() = Some(out_tx.clone());
                        handle.shared.attachments.fetch_add(1, Ordering::SeqCst);
                        state.send_replace(Some(Ok(())));
                    }
                    Some(agent_stream_out::Body::Delivery(delivery)) => { let _ = deliveries_tx.send(delivery); }
                    Some(agent_stream_out::Body::Result(result)) => {
                        if let Some(tx) = handle.shared.results.lock().unwrap().remove(&result.request_id) {
                            let _ = tx.send(result);
                        }
                    }
                    None => {}
                },
            }
        };
        worker.abort();
        *handle.shared.out.lock().unwrap() = None;
        *handle.shared.reference.lock().unwrap() = None;
        handle.shared.results.lock().unwrap().clear(); // waiting callers see the stream end
        result
    }
}

/// Decode a delivery, run the handler, encode the reply (agentd's payload convention).
pub(crate) async fn dispatch(handler: &Handler, agent: &AgentHandle, payload: &[u8], envelope: v1::Envelope) -> Vec<u8> {
    let is_call = envelope.kind == v1::MessageKind::Call as i32;
    let msg = match rmp_serde::from_slice::<Body>(payload) {
        Ok(body) => body.msg,
        Err(error) => {
            return if is_call {
                pack(&json!({"error": {"code": "INVALID_ARGUMENT", "message": format!("undecodable payload: {error}")}}))
            } else {
                vec![]
            };
        }
    };
    let deadline = (is_call && envelope.deadline_unix_ms > 0)
        .then(|| UNIX_EPOCH + Duration::from_millis(envelope.deadline_unix_ms as u64));
    let ctx = Context { sender: envelope.sender.clone(), is_call, deadline, envelope, agent: agent.clone() };
    if !is_call {
        if let Some(on_cast) = &handler.on_cast {
            on_cast(msg, ctx).await;
        }
        return vec![];
    }
    let reply = match &handler.on_call {
        Some(on_call) => on_call(msg, ctx).await,
        None => Err(Error::msg(Code::Unimplemented, "this agent does not handle calls")),
    };
    match reply {
        Ok(value) => pack(&json!({"ok": value})),
        Err(error) => pack(&json!({"error": {"code": error.code_name(), "message": error.details().message}})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dispatch_follows_agentds_payload_convention() {
        let handler = ExternalAgent::new("127.0.0.1:1")
            .on_call(|msg: Value, ctx: Context| async move {
                assert!(ctx.deadline.is_some(), "the handler sees the call's deadline");
                if msg["fail"] == json!(true) {
                    return Err(Error::msg(Code::NotFound, "nope"));
                }
                Ok(json!({"got": msg["x"]}))
            })
            .handler;
        let agent = AgentHandle { shared: Arc::new(Shared { names: vec![], out: Mutex::new(None), results: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0), reference: Mutex::new(None), attachments: AtomicU64::new(0) }) };
        let deadline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64 + 1000;
        let envelope = v1::Envelope { kind: v1::MessageKind::Call as i32, deadline_unix_ms: deadline, ..Default::default() };
        let reply = dispatch(&handler, &agent, &pack(&json!({"to": "me", "msg": {"x": 7}})), envelope.clone()).await;
        assert_eq!(rmp_serde::from_slice::<Value>(&reply).unwrap(), json!({"ok": {"got": 7}}));
        let reply = dispatch(&handler, &agent, &pack(&json!({"to": "me", "msg": {"fail": true}})), envelope).await;
        assert_eq!(rmp_serde::from_slice::<Value>(&reply).unwrap(), json!({"error": {"code": "NOT_FOUND", "message": "nope"}}));
        let error = agent.call::<_, Value>("x", &1, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(error, Error::Unavailable(_)));
    }
}
