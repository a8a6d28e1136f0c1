//! CoordinatorService through whichever coordinator is active: a standby's WRONG_NODE answer names
//! the leader and the client follows it; during a failover calls are retried until
//! `failover_timeout` (safe: every mutating call carries an idempotency key).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::Code;

use crate::agents::to_json;
use crate::error::{Error, Result};
use crate::v1::coordinator_service_client::CoordinatorServiceClient;
use crate::v1;
use crate::request;
use crate::security::{Security, Transport};

type Stub = CoordinatorServiceClient<Transport>;

fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn json_text<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    let v = serde_json::to_value(value).map_err(|e| Error::msg(Code::InvalidArgument, e.to_string()))?;
    Ok(match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// The optional fields of an instance.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Makes the create idempotent; generated when empty.
    pub instance_id: String,
    pub escrow: bool,
    pub seller: String,
    pub bind_variable: String,
    pub bind_field: String,
}

struct State {
    stubs: HashMap<String, Stub>,
    current: String,
    tried: usize,
    redirects: usize,
}

/// A CoordinatorService client that finds and follows the active coordinator.
#[derive(Clone)]
pub struct CoordinatorClient {
    endpoints: Vec<String>,
    /// None: the environment's ([`Security::default_from_env`]).
    security: Option<Security>,
    state: Arc<Mutex<State>>,
    /// Tenant of every request; empty means the token's ("default" without security; another: admin tokens only).
    pub tenant: String,
    /// Deadline of each attempt.
    pub timeout: Duration,
    /// How long a call keeps retrying without a leader.
    pub failover_timeout: Duration,
}

impl CoordinatorClient {
    /// A client for the coordinators at these host:port endpoints (any of them), with the environment's
    /// credentials ([`Security::default_from_env`]).
    pub fn connect(endpoints: &[&str]) -> Result<CoordinatorClient> {
        Security::default_from_env()?;
        CoordinatorClient::build(endpoints, None)
    }

    /// A client for the coordinators at these endpoints with these credentials (token, TLS).
    pub fn connect_with(endpoints: &[&str], security: &Security) -> Result<CoordinatorClient> {
        CoordinatorClient::build(endpoints, Some(security.clone()))
    }

    fn build(endpoints: &[&str], security: Option<Security>) -> Result<CoordinatorClient> {
        if endpoints.is_empty() {
            return Err(Error::msg(Code::InvalidArgument, "at least one coordinator endpoint is required"));
        }
        Ok(CoordinatorClient {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            security,
            state: Arc::new(Mutex::new(State { stubs: HashMap::new(), current: endpoints[0].to_string(), tried: 0, redirects: 0 })),
            tenant: String::new(),
            timeout: Duration::from_secs(10),
            failover_timeout: Duration::from_secs(15),
        })
    }

    /// How often a WRONG_NODE answer sent the client to another node.
    pub fn redirects(&self) -> usize {
        self.state.lock().unwrap().redirects
    }

    fn stub(&self) -> Result<(Stub, String)> {
        let mut state = self.state.lock().unwrap();
        let endpoint = state.current.clone();
        if !state.stubs.contains_key(&endpoint) {
            let transport = match &self.security {
                Some(security) => security.channel(&endpoint, true)?,
                None => Security::default_from_env()?.channel(&endpoint, true)?,
            };
            let stub = CoordinatorServiceClient::new(transport);
            state.stubs.insert(endpoint.clone(), stub);
        }
        Ok((state.stubs[&endpoint].clone(), endpoint))
    }

    /// After `error` from `endpoint`: Ok(delay) to retry on the (new) leader, or Err to give up.
    fn failed_over(&self, error: Error, endpoint: &str, deadline: Instant) -> std::result::Result<Duration, Error> {
        // A connection torn down under a live call (a killed coordinator) can surface as INTERNAL,
        // UNKNOWN or CANCELLED with no mabeam reason: as safe to repeat as UNAVAILABLE.
        let torn = matches!(error.code(), Code::Internal | Code::Unknown | Code::Cancelled) && error.reason().is_empty();
        let retryable = matches!(error, Error::Unavailable(_))
            && ["WRONG_NODE", "NOT_DURABLE", "ETCD_UNAVAILABLE", ""].contains(&error.reason());
        if !(retryable || torn) || Instant::now() > deadline {
            return Err(error);
        }
        let mut state = self.state.lock().unwrap();
        if let Some(hint) = error.details().metadata.get("leader") {
            if error.reason() == "WRONG_NODE" && !hint.is_empty() && hint != endpoint {
                state.current = hint.clone();
                state.redirects += 1;
                return Ok(Duration::ZERO);
            }
        }
        state.tried += 1;
        state.current = self.endpoints[state.tried % self.endpoints.len()].clone();
        Ok(Duration::from_millis((50 * state.tried as u64).min(200)))
    }

    async fn invoke<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(Stub, Option<Duration>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.failover_timeout;
        loop {
            let (stub, endpoint) = self.stub()?;
            let error = match call(stub, Some(self.timeout)).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => Error::from(status),
            };
            let delay = self.failed_over(error, &endpoint, deadline)?;
            tokio::time::sleep(delay).await;
        }
    }

    pub async fn leader(&self) -> Result<v1::GetCoordinatorLeaderResponse> {
        self.invoke(|mut s, t| async move { s.get_coordinator_leader(request(v1::GetCoordinatorLeaderRequest {}, t)).await }).await
    }

    async fn create<C: Serialize + ?Sized>(&self, family: &str, kind: &str, config: &C, o: CreateOptions) -> Result<v1::Instance> {
        let req = v1::CreateInstanceRequest {
            tenant: self.tenant.clone(), kind: kind.to_string(), config_json: json_text(config)?,
            instance_id: if o.instance_id.is_empty() { new_id() } else { o.instance_id },
            escrow: o.escrow, seller: o.seller, bind_variable: o.bind_variable, bind_field: o.bind_field,
            ..Default::default()
        };
        let family = family.to_string();
        self.invoke(|mut s, t| {
            let req = request(req.clone(), t);
            let family = family.clone();
            async move {
                match family.as_str() {
                    "negotiation" => s.create_negotiation(req).await,
                    "vote" => s.create_vote(req).await,
                    "market" => s.create_market(req).await,
                    _ => s.create_auction(req).await,
                }
            }
        }).await
    }

    /// Create an auction (sealed, english, dutch, multi_unit, combinatorial); times are absolute ms.
    pub async fn create_auction<C: Serialize + ?Sized>(&self, kind: &str, config: &C, o: CreateOptions) -> Result<v1::Instance> {
        self.create("auction", kind, config, o).await
    }
    pub async fn create_negotiation<C: Serialize + ?Sized>(&self, kind: &str, config: &C, o: CreateOptions) -> Result<v1::Instance> {
        self.create("negotiation", kind, config, o).await
    }
    pub async fn create_vote<C: Serialize + ?Sized>(&self, config: &C, o: CreateOptions) -> Result<v1::Instance> {
        self.create("vote", "vote", config, o).await
    }
    pub async fn create_market<C: Serialize + ?Sized>(&self, kind: &str, config: &C, o: CreateOptions) -> Result<v1::Instance> {
        self.create("market", kind, config, o).await
    }

    pub async fn get(&self, id: &str) -> Result<v1::Instance> {
        let req = v1::GetInstanceRequest { id: id.to_string() };
        self.invoke(|mut s, t| { let r = request(req.clone(), t); async move { s.get_auction(r).await } }).await
    }
    pub async fn list(&self, state: &str) -> Result<Vec<v1::Instance>> {
        let req = v1::ListInstancesRequest { tenant: self.tenant.clone(), state: state.to_string() };
        Ok(self.invoke(|mut s, t| { let r = request(req.clone(), t); async move { s.list_auctions(r).await } }).await?.instances)
    }
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<v1::Instance> {
        let req = v1::CancelInstanceRequest { id: id.to_string(), reason: reason.to_string() };
        self.invoke(|mut s, t| { let r = request(req.clone(), t); async move { s.cancel_auction(r).await } }).await
    }
    pub async fn close_instance(&self, id: &str) -> Result<v1::Instance> {
        let req = v1::CloseInstanceRequest { id: id.to_string() };
        self.invoke(|mut s, t| { let r = request(req.clone(), t); async move { s.close_instance(r).await } }).await
    }

    async fn submit<E: Serialize + ?Sized>(&self, method: &'static str, id: &str, event: &E, client_event_id: Option<&str>) -> Result<v1::SubmitEventResponse> {
        let req = v1::SubmitEventRequest { id: id.to_string(), event_json: json_text(event)?,
            client_event_id: client_event_id.map(str::to_string).unwrap_or_else(new_id), ..Default::default() };
        self.invoke(|mut s, t| {
            let r = request(req.clone(), t);
            async move {
                match method {
                    "negotiate" => s.negotiate(r).await,
                    "vote" => s.cast_vote(r).await,
                    "order" => s.place_order(r).await,
                    _ => s.submit_bid(r).await,
                }
            }
        }).await
    }
    /// One bid, acknowledged once durable; the same client_event_id makes a retry safe.
    pub async fn submit_bid<E: Serialize + ?Sized>(&self, id: &str, event: &E, client_event_id: Option<&str>) -> Result<v1::SubmitEventResponse> {
        self.submit("bid", id, event, client_event_id).await
    }
    pub async fn negotiate<E: Serialize + ?Sized>(&self, id: &str, event: &E, client_event_id: Option<&str>) -> Result<v1::SubmitEventResponse> {
        self.submit("negotiate", id, event, client_event_id).await
    }
    pub async fn cast_vote<E: Serialize + ?Sized>(&self, id: &str, event: &E, client_event_id: Option<&str>) -> Result<v1::SubmitEventResponse> {
        self.submit("vote", id, event, client_event_id).await
    }
    pub async fn place_order<E: Serialize + ?Sized>(&self, id: &str, event: &E, client_event_id: Option<&str>) -> Result<v1::SubmitEventResponse> {
        self.submit("order", id, event, client_event_id).await
    }
    pub async fn cancel_order(&self, id: &str, order_id: &str, trader: &str) -> Result<v1::SubmitEventResponse> {
        let req = v1::CancelOrderRequest { id: id.to_string(), order_id: order_id.to_string(), trader: trader.to_string(), client_event_id: new_id() };
        self.invoke(|mut s, t| { let r = request(req.clone(), t); async move { s.cancel_order(r).await } }).await
    }
    pub async fn book(&self, id: &str) -> Result<v1::BookSnapshot> {
        let req = v1::GetInstanceRequest { id: id.to_string() };
        self.invoke(|mut s, t| { let r = request(req.clone(), t); async move { s.get_book(r).await } }).await
    }

    /// An instance's accepted events from `from_seq`, then a final one with final_state set.
    /// A watch's items. Watches are served by every node from etcd, so when the stream breaks the way a
    /// killed coordinator breaks it (UNAVAILABLE, or INTERNAL/UNKNOWN/CANCELLED without a reason) it is
    /// opened again on the next node from the cursor after the last item (`resume` moves it), until the
    /// failover timeout passes without an item: every item once, in order, and no transport error.
    /// Dropping the stream stops it.
    fn watching<R, T, O, Fut>(&self, mut req: R, open: O, resume: fn(&mut R, &T)) -> ReceiverStream<Result<T>>
    where
        R: Clone + Send + 'static,
        T: Send + 'static,
        O: Fn(Stub, R) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>> + Send,
    {
        let (tx, rx) = mpsc::channel(64);
        let client = self.clone();
        tokio::spawn(async move {
            let mut deadline = Instant::now() + client.failover_timeout;
            loop {
                let (stub, endpoint) = match client.stub() {
                    Ok(found) => found,
                    Err(error) => { let _ = tx.send(Err(error)).await; return; }
                };
                let error = match open(stub, req.clone()).await {
                    Err(status) => Error::from(status),
                    Ok(response) => {
                        let mut items = response.into_inner();
                        loop {
                            let next = tokio::select! { next = items.next() => next, _ = tx.closed() => return };
                            match next {
                                None => return,
                                Some(Err(status)) => break Error::from(status),
                                Some(Ok(item)) => {
                                    resume(&mut req, &item);
                                    deadline = Instant::now() + client.failover_timeout;
                                    if tx.send(Ok(item)).await.is_err() {
                                        return; // the caller dropped the stream
                                    }
                                }
                            }
                        }
                    }
                };
                match client.failed_over(error, &endpoint, deadline) {
                    Err(error) => { let _ = tx.send(Err(error)).await; return; }
                    Ok(delay) => tokio::time::sleep(delay).await,
                }
            }
        });
        ReceiverStream::new(rx)
    }

    /// An instance's accepted events from `from_seq`, then a final one (resumed elsewhere if a coordinator dies).
    pub async fn watch(&self, id: &str, from_seq: i64) -> Result<impl Stream<Item = Result<v1::InstanceEvent>>> {
        Ok(self.watching(v1::WatchInstanceRequest { id: id.to_string(), from_seq },
            |mut s, r| async move { s.watch_auction(r).await },
            |r, e| if e.seq > 0 { r.from_seq = e.seq + 1 }))
    }
    /// A market's trades from `from_seq` (resumed from the last trade's seq, as the Python SDK).
    pub async fn watch_trades(&self, id: &str, from_seq: i64) -> Result<impl Stream<Item = Result<v1::TradeEvent>>> {
        Ok(self.watching(v1::WatchInstanceRequest { id: id.to_string(), from_seq },
            |mut s, r| async move { s.watch_trades(r).await },
            |r, t| r.from_seq = t.seq))
    }

    pub async fn create_variable<S: Serialize + ?Sized, V: Serialize + ?Sized>(&self, name: &str, schema: &S, initial: &V, history_limit: i32) -> Result<v1::Variable> {
        let req = v1::CreateVariableRequest { tenant: self.tenant.clone(), name: name.to_string(), schema_json: json_text(schema)?,
            initial_json: to_json(initial)?, history_limit };
        self.invoke(|mut s, t| { let r = request(req.clone(), t); async move { s.create_variable(r).await } }).await
    }
    pub async fn variable(&self, name: &str) -> Result<v1::Variable> {
        let req = v1::GetVariableRequest { tenant: self.tenant.clone(), name: name.to_string() };
        self.invoke(|mut s, t| { let r = request(req.clone(), t); async move { s.get_variable(r).await } }).await
    }
    pub async fn variables(&self) -> Result<Vec<v1::Variable>> {
        let req = v1::ListVariablesRequest { tenant: self.tenant.clone() };
        Ok(self.invoke(|mut s, t| { let r = request(req.clone(), t); async move { s.list_variables(r).await } }).await?.variables)
    }
    /// Compare-and-set: Aborted (reason VERSION_MISMATCH) when `expected_version` is stale.
    pub async fn set_variable<V: Serialize + ?Sized>(&self, name: &str, value: &V, expected_version: i64) -> Result<v1::Variable> {
        let req = v1::SetVariableRequest { tenant: self.tenant.clone(), name: name.to_string(), value_json: to_json(value)?, expected_version };
        self.invoke(|mut s, t| { let r = request(req.clone(), t); async move { s.set_variable(r).await } }).await
    }
    pub async fn variable_history(&self, name: &str) -> Result<Vec<v1::Variable>> {
        let req = v1::VariableHistoryRequest { tenant: self.tenant.clone(), name: name.to_string() };
        Ok(self.invoke(|mut s, t| { let r = request(req.clone(), t); async move { s.variable_history(r).await } }).await?.versions)
    }
    /// Versions from `from_version` (0: the current one), then each new one in order.
    /// Versions from `from_version` (0: the current one), then each new one (resumed elsewhere if a coordinator dies).
    pub async fn watch_variable(&self, name: &str, from_version: i64) -> Result<impl Stream<Item = Result<v1::Variable>>> {
        let req = v1::WatchVariableRequest { tenant: self.tenant.clone(), name: name.to_string(), from_version };
        Ok(self.watching(req, |mut s, r| async move { s.watch_variable(r).await }, |r, v| r.from_version = v.version + 1))
    }

    pub async fn deposit(&self, agent: &str, amount: i64) -> Result<v1::Balance> {
        let req = v1::DepositRequest { tenant: self.tenant.clone(), agent: agent.to_string(), amount, client_op_id: new_id() };
        self.invoke(|mut s, t| { let r = request(req.clone(), t); async move { s.deposit(r).await } }).await
    }
    /// Move credit (FailedPrecondition, reason INSUFFICIENT_FUNDS, rather than overdraw).
    pub async fn transfer(&self, from: &str, to: &str, amount: i64) -> Result<v1::TransferResponse> {
        let req = v1::TransferRequest { tenant: self.tenant.clone(), from_agent: from.to_string(), to_agent: to.to_string(), amount, client_op_id: new_id() };
        self.invoke(|mut s, t| { let r = request(req.clone(), t); async move { s.transfer(r).await } }).await
    }
    pub async fn balance(&self, agent: &str) -> Result<v1::Balance> {
        let req = v1::GetBalanceRequest { tenant: self.tenant.clone(), agent: agent.to_string() };
        self.invoke(|mut s, t| { let r = request(req.clone(), t); async move { s.get_balance(r).await } }).await
    }
    pub async fn balances(&self) -> Result<Vec<v1::Balance>> {
        let req = v1::ListBalancesRequest { tenant: self.tenant.clone() };
        Ok(self.invoke(|mut s, t| { let r = request(req.clone(), t); async move { s.list_balances(r).await } }).await?.balances)
    }

    /// A SubmitBids stream that follows the leader and resends unacknowledged bids (see [`BidStream`]).
    pub fn bid_stream(&self) -> BidStream {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_bid_stream(self.clone(), rx));
        BidStream { tx }
    }
}

type Answer = oneshot::Sender<Result<v1::SubmitEventResponse>>;

/// Bids over one SubmitBids stream. When the stream ends with UNAVAILABLE (WRONG_NODE, NOT_DURABLE, a
/// killed coordinator) it is reopened on the leader and every unacknowledged bid is sent again with the
/// same client_event_id, which the coordinator answers once. Cheap to clone; submit from many tasks.
#[derive(Clone)]
pub struct BidStream {
    tx: mpsc::UnboundedSender<(v1::SubmitEventRequest, Answer)>,
}

impl BidStream {
    /// Submit one bid; Ok once durable, or the error it was refused with.
    pub async fn submit<E: Serialize + ?Sized>(&self, id: &str, event: &E, client_event_id: Option<&str>) -> Result<v1::SubmitEventResponse> {
        let req = v1::SubmitEventRequest { id: id.to_string(), event_json: json_text(event)?,
            client_event_id: client_event_id.map(str::to_string).unwrap_or_else(new_id), ..Default::default() };
        let (answer, wait) = oneshot::channel();
        self.tx.send((req, answer)).map_err(|_| Error::msg(Code::FailedPrecondition, "the bid stream is closed"))?;
        wait.await.map_err(|_| Error::msg(Code::Unavailable, "the bid stream stopped"))?
    }
}

async fn run_bid_stream(client: CoordinatorClient, mut rx: mpsc::UnboundedReceiver<(v1::SubmitEventRequest, Answer)>) {
    let mut pending: HashMap<(String, String), (v1::SubmitEventRequest, Answer)> = HashMap::new();
    let mut deadline: Option<Instant> = None;
    let mut closed = false;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some((req, answer)) => { pending.insert((req.id.clone(), req.client_event_id.clone()), (req, answer)); }
                None => return,
            }
        }
        let (mut stub, endpoint) = match client.stub() {
            Ok(s) => s,
            Err(e) => { for (_, (_, a)) in pending.drain() { let _ = a.send(Err(e.clone())); } continue; }
        };
        let (out_tx, out_rx) = mpsc::unbounded_channel::<v1::SubmitBidsRequest>();
        let all: Vec<_> = pending.values().map(|(r, _)| r.clone()).collect();
        for chunk in all.chunks(256) {
            let _ = out_tx.send(v1::SubmitBidsRequest { bids: chunk.to_vec() });
        }
        let error = match stub.submit_bids(UnboundedReceiverStream::new(out_rx)).await {
            Err(status) => Error::from(status),
            Ok(response) => {
                let mut acks = response.into_inner();
                let mut out_tx = Some(out_tx);
                loop {
                    tokio::select! {
                        next = rx.recv(), if !closed => match next {
                            Some((req, answer)) => {
                                if let Some(tx) = &out_tx { let _ = tx.send(v1::SubmitBidsRequest { bids: vec![req.clone()] }); }
                                pending.insert((req.id.clone(), req.client_event_id.clone()), (req, answer));
                            }
                            None => { closed = true; if pending.is_empty() { out_tx = None; } }
                        },
                        message = acks.next() => match message {
                            Some(Ok(batch)) => {
                                deadline = None;
                                for ack in batch.acks {
                                    if let Some((_, answer)) = pending.remove(&(ack.id.clone(), ack.client_event_id.clone())) {
                                        let _ = answer.send(match ack.outcome {
                                            Some(v1::bid_ack::Outcome::Error(e)) => Err(Error::new(Code::from(e.code),
                                                crate::Details { message: e.message, reason: e.reason, ..Default::default() })),
                                            Some(v1::bid_ack::Outcome::Result(r)) => Ok(r),
                                            None => Err(Error::msg(Code::Internal, "an ack without an outcome")),
                                        });
                                    }
                                }
                                if closed && pending.is_empty() { out_tx = None; }
                            }
                            Some(Err(status)) => break Error::from(status),
                            None if pending.is_empty() => break Error::msg(Code::Ok, ""),
                            None => break Error::msg(Code::Unavailable, "the bid stream ended with bids unanswered"),
                        },
                    }
                }
            }
        };
        if error.code() == Code::Ok {
            if closed { return; }
            continue;
        }
        let limit = *deadline.get_or_insert_with(|| Instant::now() + client.failover_timeout);
        match client.failed_over(error, &endpoint, limit) {
            Ok(delay) => tokio::time::sleep(delay).await,
            Err(error) => {
                for (_, (_, answer)) in pending.drain() {
                    let _ = answer.send(Err(error.clone()));
                }
                deadline = None;
            }
        }
    }
}
