//! External agents of this SDK: the `attach_agent` step, the relay behaviour and `serve` (a relay agent for the harness).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mabeam::{Context, ExternalAgent};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use crate::check::StepResult;
use crate::{flag, read_cluster, s, Runner, LANG};

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

impl Runner {
    pub(crate) async fn attach(&mut self, a: &Value) -> StepResult {
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

}

pub(crate) async fn serve(args: Vec<String>) -> i32 {
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
