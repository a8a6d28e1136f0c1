//! An external agent in Rust: "greeter-rust" answers calls; a Python agent (agentd's relay) calls it by name.
use std::time::Duration;

use mabeam::{AgentClient, ExternalAgent, SpawnOptions};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> mabeam::Result<()> {
    let greeter = ExternalAgent::new(&std::env::var("MABEAM_MESHD").unwrap())
        .name("greeter-rust")
        .on_call(|name: Value, _ctx| async move { Ok(json!(format!("hello, {}", name.as_str().unwrap_or("?")))) })
        .start(Duration::from_secs(10))
        .await?;
    let agents = AgentClient::connect(&std::env::var("MABEAM_AGENTD").unwrap())?;
    let relay = format!("relay-{}", std::process::id());
    agents.spawn("relay", &json!({}), SpawnOptions { name: relay.clone(), ..Default::default() }).await?;
    let reply: String = agents.call(&relay, &json!({"to": "greeter-rust", "msg": "world"}), Duration::from_secs(5)).await?;
    println!("{reply}"); // hello, world
    greeter.stop().await;
    Ok(())
}
