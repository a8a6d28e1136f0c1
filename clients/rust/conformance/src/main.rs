//! The Rust SDK's conformance runner (clients/conformance/README.md):
//!
//!     mabeam-conformance run --cluster cluster.json --scenarios DIR --run ID [--only NAME ...]
//!     mabeam-conformance serve --cluster cluster.json --node 1 --name relay-rust
//!     mabeam-conformance bench --agentd HOST:PORT --target NAME [--calls N] [--concurrency N]
//!
//! Here: the step loop and the op dispatch; `check` (variables, result paths, expectations), `external`
//! (external agents, the relay, `serve`), `ops` (durable runs, calls through a kill, the harness's control
//! channel), `bench`.

mod bench;
mod check;
mod external;
mod ops;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mabeam::agent::RunningAgent;
use mabeam::{AgentClient, BidStream, CoordinatorClient, CreateOptions, MeshClient, Security, SpawnOptions};
use serde_json::{json, Value};

use check::{check, fail, lookup_path, substitute, Failure, Outcome, StepResult};

const LANG: &str = "rust";

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
    /// The variable watch of watch_variable_start: what it delivered, and its task.
    watch: Option<(ops::Watched, tokio::task::JoinHandle<()>)>,
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
            bid_stream: None, bids: vec![], bid_calls: None, watch: None }
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
        let mut client = self.agentds.entry(i).or_insert_with(|| AgentClient::connect(&endpoint).unwrap()).clone();
        client.tenant = s(a, "tenant"); // a step's tenant (admin tokens only), else the token's
        client
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
            "kill_daemon" | "restart_daemon" | "issue_token" => ops::control(&s(&self.cluster, "control"), name, a).await,
            "create_auction_with" => {
                // A coordinator client built with the step's token (and the cluster's TLS files).
                let given = &self.cluster["security"];
                let security = Security { token: s(a, "token"), tls_ca: s(given, "tls_ca"), tls_cert: s(given, "tls_cert"),
                    tls_key: s(given, "tls_key"), ..Default::default() };
                let endpoints: Vec<String> = self.cluster["nodes"].as_array().unwrap().iter().map(|n| s(n, "coordinator")).collect();
                let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
                let coordinator = CoordinatorClient::connect_with(&endpoints, &security)?;
                let instance = coordinator.create_auction(&s(a, "kind"), &a["config"], CreateOptions::default()).await?;
                Ok(json!({"id": instance.id, "state": instance.state}))
            }
            "set_tenant_quota" => {
                let quota = mabeam::v1::TenantQuota { tenant: s(a, "tenant"), max_agents: a["max_agents"].as_i64().unwrap_or(0),
                    max_instances: a["max_instances"].as_i64().unwrap_or(0), ..Default::default() };
                let q = self.mesh(a).set_tenant_quota(quota).await?;
                Ok(json!({"tenant": q.tenant, "max_agents": q.max_agents, "max_instances": q.max_instances}))
            }
            "tenant_usage" => {
                let u = self.mesh(a).tenant_usage(&s(a, "tenant")).await?;
                let usage: serde_json::Map<String, Value> = u.usage.iter()
                    .map(|q| (q.quota.clone(), json!({"used": q.used, "limit": q.limit, "exact": q.exact}))).collect();
                let quota = u.quota.unwrap_or_default();
                Ok(json!({"tenant": u.tenant, "max_agents": quota.max_agents, "max_instances": quota.max_instances, "usage": usage}))
            }
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
                // The harness kills it (it knows the pid of a daemon restarted since this runner started).
                let leader = self.coordinator.leader().await?;
                ops::control(&s(&self.cluster, "control"), "kill_daemon",
                    &json!({"node": leader.leader_node_id, "kind": "coordinator"})).await?;
                Ok(json!({"node_id": leader.leader_node_id}))
            }
            "watch_variable_start" => self.start_watch(&s(a, "name")).await,
            "watch_variable_wait" => self.wait_watch(a["until_version"].as_i64().unwrap_or(0)).await,
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

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match args.get(1).map(String::as_str) {
        Some("run") => run(args[2..].to_vec()).await,
        Some("serve") => external::serve(args[2..].to_vec()).await,
        Some("bench") => bench::bench(args[2..].to_vec()).await,
        _ => { eprintln!("usage: mabeam-conformance run|serve ..."); 2 }
    };
    std::process::exit(code);
}
