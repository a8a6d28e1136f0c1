//! The Rust SDK's conformance runner (clients/conformance/README.md):
//!
//!     mabeam-conformance run --cluster cluster.json --scenarios DIR --run ID [--only NAME ...]
//!     mabeam-conformance serve --cluster cluster.json --node 1 --name relay-rust

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mabeam::agent::RunningAgent;
use mabeam::{AgentClient, BidStream, Context, CoordinatorClient, CreateOptions, Error, ExternalAgent, MeshClient, RunClient, Security, SpawnOptions};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

const LANG: &str = "rust";

#[derive(Debug)]
struct Failure(String);

type StepResult = std::result::Result<Value, Outcome>;

enum Outcome {
    Api(Error),
    Fail(Failure),
}

impl From<Error> for Outcome {
    fn from(e: Error) -> Outcome { Outcome::Api(e) }
}

fn fail(msg: impl Into<String>) -> Outcome { Outcome::Fail(Failure(msg.into())) }

fn substitute(value: &Value, vars: &HashMap<String, Value>) -> Value {
    match value {
        Value::String(s) => {
            if s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1 {
                return vars.get(&s[2..s.len() - 1]).cloned().unwrap_or(Value::Null);
            }
            let mut out = s.clone();
            for (k, v) in vars {
                let text = match v { Value::String(t) => t.clone(), other => other.to_string() };
                out = out.replace(&format!("${{{k}}}"), &text);
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, vars)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), substitute(v, vars))).collect()),
        other => other.clone(),
    }
}

fn lookup_path(result: &Value, path: &str) -> std::result::Result<Value, Failure> {
    let mut value = result.clone();
    for part in path.split('.') {
        value = match (&value, part) {
            (Value::Array(items), "#") => json!(items.len()),
            (Value::Object(map), key) if map.contains_key(key) => map[key].clone(),
            _ => return Err(Failure(format!("result has no {path:?}: {result}"))),
        };
    }
    Ok(value)
}

fn matches(actual: &Value, expected: &Value) -> bool {
    if let Value::Object(m) = expected {
        if m.len() == 1 {
            if let Some(bound) = m.get("lt").and_then(Value::as_f64) {
                return actual.as_f64().is_some_and(|a| a < bound);
            }
            if let Some(bound) = m.get("gt").and_then(Value::as_f64) {
                return actual.as_f64().is_some_and(|a| a > bound);
            }
        }
    }
    match (actual, expected) {
        (Value::Number(a), Value::Number(e)) => a.as_f64() == e.as_f64(),
        (Value::Array(a), Value::Array(e)) => a.len() == e.len() && a.iter().zip(e).all(|(x, y)| matches(x, y)),
        (Value::Object(a), Value::Object(e)) => a.len() == e.len() && e.iter().all(|(k, v)| a.get(k).is_some_and(|x| matches(x, v))),
        _ => actual == expected,
    }
}

fn check(step: &Value, result: &Value, error: Option<&Error>) -> std::result::Result<(), Failure> {
    if let Some(wanted) = step.get("error").filter(|e| !e.is_null()) {
        let Some(error) = error else {
            return Err(Failure(format!("expected {}, got a result: {result}", wanted["code"])));
        };
        if wanted["code"] != error.code_name() {
            return Err(Failure(format!("expected {}, got {}", wanted["code"], error)));
        }
        if let Some(reason) = wanted.get("reason") {
            if reason != error.reason() {
                return Err(Failure(format!("expected reason {reason}, got {error}")));
            }
        }
        if let Some(field) = wanted.get("field").and_then(Value::as_str) {
            if !error.details().field_violations.contains_key(field) {
                return Err(Failure(format!("expected a violation of {field:?}, got {:?}", error.details().field_violations)));
            }
        }
        return Ok(());
    }
    if let Some(error) = error {
        return Err(Failure(error.to_string()));
    }
    if let Some(Value::Object(expect)) = step.get("expect") {
        for (path, expected) in expect {
            let actual = lookup_path(result, path)?;
            if !matches(&actual, expected) {
                return Err(Failure(format!("{path}: expected {expected}, got {actual} in {result}")));
            }
        }
    }
    Ok(())
}

/// The relay behaviour every SDK implements (scenarios 05 and 08).
#[derive(Clone, Default)]
struct Relay {
    last: Arc<Mutex<Value>>,
}

impl Relay {
    async fn on_call(self, msg: Value, ctx: Context) -> mabeam::Result<Value> {
        if msg == json!("last") {
            let last = self.last.lock().unwrap().clone();
            return Ok(if last.is_null() { json!({"code": "NONE", "elapsed_ms": 0}) } else { last });
        }
        let mut hops = msg["hops"].as_array().cloned().unwrap_or_default();
        let mut trail = msg["trail"].as_array().cloned().unwrap_or_default();
        trail.push(json!(LANG));
        if hops.is_empty() {
            return Ok(json!({"hops": [], "trail": trail}));
        }
        let hop = hops.remove(0);
        let (to, body) = match &hop {
            Value::Object(h) => (h["to"].as_str().unwrap_or_default().to_string(), h["msg"].clone()),
            other => (other.as_str().unwrap_or_default().to_string(), json!({"hops": hops, "trail": trail})),
        };
        let started = Instant::now();
        let reply: mabeam::Result<Value> = ctx.call(&to, &body).await; // within the handled call's deadline
        let code = match &reply { Ok(_) => "OK", Err(e) => e.code_name() };
        *self.last.lock().unwrap() = json!({"code": code, "elapsed_ms": started.elapsed().as_millis() as u64});
        reply
    }
}

struct Runner {
    cluster: Value,
    run_id: String,
    meshes: HashMap<i64, MeshClient>,
    agentds: HashMap<i64, AgentClient>,
    coordinator: CoordinatorClient,
    agents: HashMap<String, (RunningAgent, tokio::sync::watch::Sender<bool>)>,
    bid_stream: Option<BidStream>,
    bids: Vec<tokio::task::JoinHandle<mabeam::Result<mabeam::v1::SubmitEventResponse>>>,
    /// The unary bid calls of bid_calls_start: (calls, their workers' errors).
    bid_calls: Option<(i64, tokio::task::JoinHandle<Vec<String>>)>,
}

/// Ask the harness to kill or restart a daemon (one JSON line each way; harness.Control).
async fn control(address: &str, op: &str, args: &Value) -> StepResult {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut conn = tokio::net::TcpStream::connect(address).await
        .map_err(|e| fail(format!("the harness's control channel {address:?}: {e}")))?;
    let request = json!({"op": op, "args": args}).to_string() + "\n";
    conn.write_all(request.as_bytes()).await.map_err(|e| fail(format!("{op}: {e}")))?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).await.map_err(|e| fail(format!("{op}: {e}")))?;
    let answer: Value = serde_json::from_str(&line).map_err(|e| fail(format!("{op}: {e}: {line:?}")))?;
    if answer["ok"] != json!(true) {
        return Err(fail(format!("{op}: {}", answer["error"])));
    }
    Ok(answer["result"].clone())
}

fn s(a: &Value, key: &str) -> String {
    match &a[key] { Value::String(t) => t.clone(), Value::Null => String::new(), other => other.to_string() }
}

fn secs(a: &Value, key: &str, default: f64) -> Duration {
    Duration::from_secs_f64(a[key].as_f64().unwrap_or(default))
}

impl Runner {
    fn new(cluster: Value, run_id: String) -> Runner {
        let endpoints: Vec<String> = cluster["nodes"].as_array().unwrap().iter()
            .filter_map(|n| n["coordinator"].as_str().map(str::to_string)).collect();
        let refs: Vec<&str> = endpoints.iter().map(String::as_str).collect();
        let mut coordinator = CoordinatorClient::connect(&refs).expect("coordinator endpoints");
        coordinator.failover_timeout = Duration::from_secs(20);
        Runner { cluster, run_id, meshes: HashMap::new(), agentds: HashMap::new(), coordinator, agents: HashMap::new(),
            bid_stream: None, bids: vec![], bid_calls: None }
    }

    fn node(&self, a: &Value) -> &Value {
        &self.cluster["nodes"][(a["node"].as_i64().unwrap_or(1) - 1) as usize]
    }

    fn mesh(&mut self, a: &Value) -> MeshClient {
        let i = a["node"].as_i64().unwrap_or(1);
        let endpoint = s(self.node(a), "meshd");
        self.meshes.entry(i).or_insert_with(|| MeshClient::connect(&endpoint).unwrap()).clone()
    }

    fn agentd(&mut self, a: &Value) -> AgentClient {
        let i = a["node"].as_i64().unwrap_or(1);
        let endpoint = s(self.node(a), "agentd");
        self.agentds.entry(i).or_insert_with(|| AgentClient::connect(&endpoint).unwrap()).clone()
    }

    async fn close(&mut self) {
        for (_, (agent, release)) in self.agents.drain() {
            let _ = release.send(true);
            agent.stop().await;
        }
        for task in self.bids.drain(..) {
            let _ = task.await;
        }
    }

    async fn op(&mut self, name: &str, a: &Value) -> StepResult {
        match name {
            "members" => {
                let members = self.mesh(a).members().await?;
                let mut ids: Vec<String> = members.iter().map(|m| m.node_id.clone()).collect();
                ids.sort();
                Ok(json!({"count": members.len(), "node_ids": ids}))
            }
            "leader" => {
                let leader = self.mesh(a).leader(&s(a, "role")).await?.unwrap_or_default();
                Ok(json!({"node_id": leader.node_id, "term": leader.term}))
            }
            "register_name" | "lookup" => {
                let mesh = self.mesh(a);
                let entry = if name == "register_name" {
                    mesh.register_name(&s(a, "name"), &s(a, "agent_id"), HashMap::new()).await?
                } else {
                    mesh.lookup(&s(a, "name")).await?
                };
                let target = entry.target.unwrap_or_default();
                Ok(json!({"name": entry.name, "node_id": target.node_id, "agent_id": target.agent_id}))
            }
            "group_members" => {
                let members = self.mesh(a).group_members(&s(a, "group")).await?;
                let mut ids: Vec<String> = members.iter().map(|m| m.member.clone().unwrap_or_default().node_id).collect();
                ids.sort();
                Ok(json!({"count": members.len(), "node_ids": ids}))
            }
            "attach_agent" => self.attach(a).await,
            "detach_agent" => {
                if let Some((agent, release)) = self.agents.remove(&s(a, "name")) {
                    let _ = release.send(true);
                    agent.stop().await;
                }
                Ok(json!({}))
            }
            "agent_call" => {
                let handle = self.agents[&s(a, "from")].0.handle.clone();
                let reply: Value = handle.call(&s(a, "to"), &a["msg"], secs(a, "timeout", 5.0)).await?;
                Ok(json!({"reply": reply}))
            }
            "agent_cast" => {
                self.agents[&s(a, "from")].0.handle.cast(&s(a, "to"), &a["msg"]).await?;
                Ok(json!({}))
            }
            "agent_cast_group" => {
                self.agents[&s(a, "from")].0.handle.cast_group(&s(a, "group"), &a["msg"], s(a, "mode") == "one").await?;
                Ok(json!({}))
            }
            "mesh_call" => {
                let reply = self.mesh(a).call(s(a, "to").as_str().into(), vec![0xc0], secs(a, "timeout", 5.0)).await?;
                Ok(json!({"payload_size": reply.payload.len()}))
            }
            "spawn" => {
                let args = if a["args"].is_null() { json!({}) } else { a["args"].clone() };
                let info = self.agentd(a).spawn(&s(a, "type"), &args, SpawnOptions { name: s(a, "name"), ..Default::default() }).await?;
                Ok(json!({"name": info.name, "type": info.r#type, "agent_id": info.agent_id}))
            }
            "call" => {
                let reply: Value = self.agentd(a).call(&s(a, "agent"), &a["msg"], secs(a, "timeout", 5.0)).await?;
                Ok(json!({"reply": reply}))
            }
            "cast" => { self.agentd(a).cast(&s(a, "agent"), &a["msg"]).await?; Ok(json!({})) }
            "stop_agent" => { self.agentd(a).stop(&s(a, "agent")).await?; Ok(json!({})) }
            "create_auction" => {
                let instance = self.coordinator.create_auction(&s(a, "kind"), &a["config"], CreateOptions::default()).await?;
                Ok(json!({"id": instance.id, "state": instance.state}))
            }
            "bid_stream_submit" => {
                let stream = self.bid_stream.get_or_insert_with(|| self.coordinator.bid_stream()).clone();
                let (first, count, base) = (a["first"].as_i64().unwrap_or(1), a["count"].as_i64().unwrap_or(1), a["amount_base"].as_i64().unwrap_or(0));
                for i in first..first + count {
                    let stream = stream.clone();
                    let auction = s(a, "auction");
                    self.bids.push(tokio::spawn(async move {
                        stream.submit(&auction, &json!({"type": "bid", "bidder": format!("bidder-{i}"), "amount": base + i - 1}), None).await
                    }));
                }
                Ok(json!({}))
            }
            "bid_stream_wait" => {
                let (mut acked, mut errors) = (0, vec![]);
                for task in self.bids.drain(..) {
                    match task.await {
                        Ok(Ok(_)) => acked += 1,
                        Ok(Err(e)) => errors.push(e.to_string()),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                Ok(json!({"acked": acked, "refused": errors.len(), "errors": errors.iter().take(3).collect::<Vec<_>>()}))
            }
            "bid_calls_start" => self.start_bid_calls(a).await,
            "bid_calls_wait" => {
                let (count, task) = self.bid_calls.take().ok_or_else(|| fail("bid_calls_wait before bid_calls_start"))?;
                let errors = task.await.map_err(|e| fail(e.to_string()))?;
                Ok(json!({"acked": count - errors.len() as i64, "failed": errors.len(),
                    "errors": errors.iter().take(3).collect::<Vec<_>>()}))
            }
            "kill_daemon" | "restart_daemon" => control(&s(&self.cluster, "control"), name, a).await,
            "members_with" => {
                // Credentials chosen by the step (options, not the environment): the cluster's token (true),
                // none (false) or the given string; TLS with the client certificate or not.
                let given = &self.cluster["security"];
                let token = match &a["token"] { Value::Bool(true) => s(given, "token"), Value::String(t) => t.clone(), _ => String::new() };
                let mut security = Security { token, ..Default::default() };
                if a["tls"].as_bool().unwrap_or(false) {
                    (security.tls_ca, security.tls_cert, security.tls_key) = (s(given, "tls_ca"), s(given, "tls_cert"), s(given, "tls_key"));
                }
                let mesh = MeshClient::connect_with(&s(self.node(a), "meshd"), &security)?;
                Ok(json!({"count": mesh.members().await?.len()}))
            }
            "kill_coordinator_leader" => {
                let leader = self.coordinator.leader().await?;
                for node in self.cluster["nodes"].as_array().unwrap() {
                    if node["node_id"] == leader.leader_node_id.as_str() {
                        let pid = node["coordinator_pid"].as_i64().unwrap_or(0) as i32;
                        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
                            return Err(fail(format!("kill {pid} failed")));
                        }
                    }
                }
                Ok(json!({"node_id": leader.leader_node_id}))
            }
            "close_instance" => {
                let instance = self.coordinator.close_instance(&s(a, "id")).await?;
                let outcome: Value = serde_json::from_str(&instance.outcome_json).unwrap_or(Value::Null);
                Ok(json!({"state": instance.state, "outcome": outcome}))
            }
            "create_variable" | "set_variable" | "get_variable" => {
                let var = match name {
                    "create_variable" => self.coordinator.create_variable(&s(a, "name"), &a["schema"], &a["initial"], 0).await?,
                    "set_variable" => self.coordinator.set_variable(&s(a, "name"), &a["value"], a["expected_version"].as_i64().unwrap_or(0)).await?,
                    _ => self.coordinator.variable(&s(a, "name")).await?,
                };
                let value: Value = serde_json::from_str(&var.value_json).unwrap_or(Value::Null);
                Ok(json!({"version": var.version, "value": value}))
            }
            other if other.starts_with("run_") => self.run_op(other, a).await,
            other => Err(fail(format!("unknown op {other:?}"))),
        }
    }

    /// Unary SubmitBid calls, `concurrency` at a time, each with its own idempotency key, in the background;
    /// returns once `acked_before` were answered (so the next step, a kill, lands in the middle of them).
    async fn start_bid_calls(&mut self, a: &Value) -> StepResult {
        let count = a["count"].as_i64().unwrap_or(1);
        let base = a["amount_base"].as_i64().unwrap_or(0);
        let enough_at = a["acked_before"].as_u64().unwrap_or(0) as usize;
        let next = Arc::new(std::sync::atomic::AtomicI64::new(1));
        let (answered_tx, mut answered_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..a["concurrency"].as_u64().unwrap_or(1) {
            let (coordinator, next, answered, auction) = (self.coordinator.clone(), next.clone(), answered_tx.clone(), s(a, "auction"));
            workers.spawn(async move {
                let mut errors = vec![];
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i > count { return errors; }
                    let event = json!({"type": "bid", "bidder": format!("bidder-{i}"), "amount": base + i - 1});
                    let key = format!("{auction}-{i}");
                    if let Err(e) = coordinator.submit_bid(&auction, &event, Some(key.as_str())).await {
                        errors.push(e.to_string());
                    }
                    let _ = answered.send(());
                }
            });
        }
        drop(answered_tx);
        let task = tokio::spawn(async move {
            let mut errors = vec![];
            while let Some(done) = workers.join_next().await {
                errors.extend(done.unwrap_or_else(|e| vec![e.to_string()]));
            }
            errors
        });
        let mut answered = 0;
        while answered < enough_at && answered_rx.recv().await.is_some() {
            answered += 1;
        }
        self.bid_calls = Some((count, task));
        Ok(json!({}))
    }

    /// The durable-run ops against the node's agentd (RunService).
    async fn run_op(&mut self, name: &str, a: &Value) -> StepResult {
        let runs = RunClient::connect(&s(self.node(a), "agentd"))?;
        match name {
            "run_start" => {
                let r = runs.start(&s(a, "run_id"), &s(a, "agent_type"), &a["input"], HashMap::new()).await?;
                Ok(json!({"created": r.created, "status": r.run.unwrap_or_default().status}))
            }
            "run_append" => {
                let r = runs.append(&s(a, "run_id"), &s(a, "frame_id"), &s(a, "type"), &a["payload"]).await?;
                Ok(json!({"duplicate": r.duplicate, "seq": r.seq}))
            }
            "run_stream" => {
                let mut events = runs.stream(&s(a, "run_id"), a["cursor"].as_i64().unwrap_or(0), a["follow"].as_bool().unwrap_or(false));
                let (mut seqs, mut last_type) = (Vec::<i64>::new(), String::new());
                while let Some(event) = tokio_stream::StreamExt::next(&mut events).await {
                    let event = event?;
                    seqs.push(event.seq);
                    last_type = event.r#type;
                }
                let gap_free = seqs.iter().enumerate().all(|(i, seq)| *seq == seqs[0] + i as i64);
                Ok(json!({"count": seqs.len(), "first_seq": seqs.first().copied().unwrap_or(0),
                    "last_seq": seqs.last().copied().unwrap_or(0), "gap_free": gap_free, "last_type": last_type}))
            }
            "run_get" => {
                let run = runs.get(&s(a, "run_id")).await?;
                Ok(json!({"status": run.status, "last_seq": run.last_seq}))
            }
            "run_wait_event" => {
                let mut events = runs.stream(&s(a, "run_id"), 0, true);
                while let Some(event) = tokio_stream::StreamExt::next(&mut events).await {
                    let event = event?;
                    if event.r#type == s(a, "type") {
                        let payload: Value = serde_json::from_str(&event.payload_json).unwrap_or(Value::Null);
                        return Ok(json!({"seq": event.seq, "payload": payload}));
                    }
                }
                Err(fail(format!("run {} ended without an event of type {:?}", s(a, "run_id"), s(a, "type"))))
            }
            "run_approve" | "run_deny" => {
                let (run_id, call_id, note) = (s(a, "run_id"), s(a, "tool_call_id"), s(a, "note"));
                let r = if name == "run_approve" { runs.approve(&run_id, &call_id, &note).await? }
                        else { runs.deny(&run_id, &call_id, &note).await? };
                Ok(json!({"duplicate": r.duplicate, "seq": r.seq}))
            }
            other => Err(fail(format!("unknown op {other:?}"))),
        }
    }

    async fn attach(&mut self, a: &Value) -> StepResult {
        let behaviour = s(a, "behaviour");
        let seen = Arc::new(Mutex::new(Vec::<Value>::new()));
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let relay = Relay::default();
        let mut agent = ExternalAgent::new(&s(self.node(a), "meshd")).name(&s(a, "name"))
            .max_pending(a["max_pending"].as_u64().unwrap_or(0) as u32);
        for group in a["groups"].as_array().cloned().unwrap_or_default() {
            agent = agent.group(group.as_str().unwrap_or_default());
        }
        let (b1, b2, seen1, seen2) = (behaviour.clone(), behaviour.clone(), seen.clone(), seen.clone());
        let agent = agent
            .on_call(move |msg, ctx| {
                let (behaviour, seen, relay) = (b1.clone(), seen1.clone(), relay.clone());
                async move {
                    if behaviour == "relay" { return relay.on_call(msg, ctx).await; }
                    if behaviour == "collect" && msg == json!("seen") { return Ok(Value::Array(seen.lock().unwrap().clone())); }
                    Ok(msg)
                }
            })
            .on_cast(move |msg, _ctx| {
                let (behaviour, seen, mut release) = (b2.clone(), seen2.clone(), release_rx.clone());
                async move {
                    seen.lock().unwrap().push(msg);
                    if behaviour == "block" {
                        let _ = release.wait_for(|r| *r).await;
                    }
                }
            });
        let running = agent.start(Duration::from_secs(15)).await?;
        let node_id = running.handle.reference().unwrap_or_default().node_id;
        self.agents.insert(s(a, "name"), (running, release_tx));
        Ok(json!({"node_id": node_id}))
    }

    async fn step(&mut self, step: &Value, vars: &mut HashMap<String, Value>) -> std::result::Result<(), Failure> {
        let args = substitute(&step["args"], vars);
        let mut resolved = step.clone();
        resolved["expect"] = substitute(&step["expect"], vars);
        resolved["error"] = substitute(&step["error"], vars);
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(step["eventually"].as_f64().unwrap_or(0.0));
        let result = loop {
            let (result, error) = match self.op(step["op"].as_str().unwrap_or_default(), &args).await {
                Ok(v) => (v, None),
                Err(Outcome::Api(e)) => (Value::Null, Some(e)),
                Err(Outcome::Fail(f)) => return Err(f),
            };
            match check(&resolved, &result, error.as_ref()) {
                Ok(()) => break result,
                Err(f) if Instant::now() >= deadline => return Err(f),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        if let Some(within) = step["within"].as_f64() {
            if started.elapsed().as_secs_f64() > within {
                return Err(Failure(format!("took {:.2}s, more than {within}s", started.elapsed().as_secs_f64())));
            }
        }
        if let Some(Value::Object(save)) = step.get("save") {
            for (var, path) in save {
                vars.insert(var.clone(), lookup_path(&result, path.as_str().unwrap_or_default())?);
            }
        }
        Ok(())
    }

    async fn scenario(&mut self, scenario: &Value) -> std::result::Result<(), Failure> {
        let mut vars = HashMap::from([
            ("run".to_string(), json!(format!("{}-{}", self.run_id, s(scenario, "name")))),
            ("lang".to_string(), json!(LANG)),
        ]);
        for (i, step) in scenario["steps"].as_array().cloned().unwrap_or_default().iter().enumerate() {
            self.step(step, &mut vars).await.map_err(|f| Failure(format!("step {} ({}): {}", i + 1, s(step, "op"), f.0)))?;
        }
        Ok(())
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == &format!("--{name}")).and_then(|i| args.get(i + 1).cloned())
}

fn read_cluster(args: &[String]) -> Value {
    let path = flag(args, "cluster").expect("--cluster");
    serde_json::from_str(&std::fs::read_to_string(path).expect("cluster.json")).expect("cluster JSON")
}

async fn run(args: Vec<String>) -> i32 {
    let cluster = read_cluster(&args);
    let dir = flag(&args, "scenarios").expect("--scenarios");
    let run_id = flag(&args, "run").unwrap_or_else(|| format!("rs{}", std::process::id()));
    let only: Vec<String> = match args.iter().position(|a| a == "--only") {
        Some(i) => args[i + 1..].iter().take_while(|a| !a.starts_with("--")).cloned().collect(),
        None => vec![],
    };
    let mut paths: Vec<_> = std::fs::read_dir(&dir).expect("scenarios").filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml")).collect();
    paths.sort();
    let (mut passed, mut failed) = (0, 0);
    for path in paths {
        let scenario: Value = match serde_yaml::from_str(&std::fs::read_to_string(&path).expect("scenario")) {
            Ok(v) => v,
            Err(e) => { println!("FAIL {}: bad YAML: {e}", path.display()); failed += 1; continue; }
        };
        let name = s(&scenario, "name");
        if !only.is_empty() && !only.contains(&name) { continue; }
        let mut runner = Runner::new(cluster.clone(), run_id.clone());
        let outcome = tokio::time::timeout(Duration::from_secs(90), runner.scenario(&scenario)).await;
        runner.close().await;
        match outcome {
            Ok(Ok(())) => { println!("PASS {name}"); passed += 1; }
            Ok(Err(f)) => { println!("FAIL {name}: {}", f.0); failed += 1; }
            Err(_) => { println!("FAIL {name}: timed out after 90s"); failed += 1; }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 { 1 } else { 0 }
}

async fn serve(args: Vec<String>) -> i32 {
    let cluster = read_cluster(&args);
    let node: usize = flag(&args, "node").and_then(|n| n.parse().ok()).unwrap_or(1);
    let name = flag(&args, "name").unwrap_or_else(|| "relay-rust".to_string());
    let relay = Relay::default();
    let agent = ExternalAgent::new(cluster["nodes"][node - 1]["meshd"].as_str().unwrap()).name(&name)
        .on_call(move |msg, ctx| relay.clone().on_call(msg, ctx));
    let running = match agent.start(Duration::from_secs(30)).await {
        Ok(r) => r,
        Err(e) => { eprintln!("{e}"); return 1; }
    };
    println!("ready");
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await; // until the harness closes stdin
    running.stop().await;
    0
}

/// Sequential call p50 and the rate of --calls calls with --concurrency in flight, through agentd (python -m bench sdks).
async fn bench(args: Vec<String>) -> i32 {
    let client = AgentClient::connect(&flag(&args, "agentd").expect("--agentd")).expect("agentd");
    let target = flag(&args, "target").expect("--target");
    let calls: usize = flag(&args, "calls").and_then(|n| n.parse().ok()).unwrap_or(1000);
    let concurrency: usize = flag(&args, "concurrency").and_then(|n| n.parse().ok()).unwrap_or(16);
    let call = |client: AgentClient, target: String| async move {
        client.call::<_, Value>(&target, &json!("ping"), Duration::from_secs(10)).await
    };
    for _ in 0..50 {
        if let Err(e) = call(client.clone(), target.clone()).await { eprintln!("{e}"); return 1; }
    }
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        if let Err(e) = call(client.clone(), target.clone()).await { eprintln!("{e}"); return 1; }
        latencies.push(start.elapsed().as_micros() as u64);
    }
    latencies.sort_unstable();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency).map(|_| {
        let (client, target, next, failed) = (client.clone(), target.clone(), next.clone(), failed.clone());
        tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < calls {
                if call(client.clone(), target.clone()).await.is_err() {
                    failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    }).collect();
    for w in workers { let _ = w.await; }
    let rate = calls as f64 / start.elapsed().as_secs_f64();
    println!("{}", json!({"p50_us": latencies[calls / 2], "calls_per_s": rate,
        "failed": failed.load(std::sync::atomic::Ordering::SeqCst)}));
    0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match args.get(1).map(String::as_str) {
        Some("run") => run(args[2..].to_vec()).await,
        Some("serve") => serve(args[2..].to_vec()).await,
        Some("bench") => bench(args[2..].to_vec()).await,
        _ => { eprintln!("usage: mabeam-conformance run|serve ..."); 2 }
    };
    std::process::exit(code);
}
