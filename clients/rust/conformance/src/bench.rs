//! `bench`: sequential call p50 and the call rate through agentd (python -m bench sdks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mabeam::AgentClient;
use serde_json::{json, Value};

use crate::flag;

/// Sequential call p50 and the rate of --calls calls with --concurrency in flight, through agentd (python -m bench sdks).
pub(crate) async fn bench(args: Vec<String>) -> i32 {
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
