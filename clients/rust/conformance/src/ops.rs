//! Durable-run ops, unary calls through a coordinator kill (`bid_calls_*`) and the harness's control channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mabeam::RunClient;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::check::{fail, StepResult};
use crate::{s, Runner};

/// Ask the harness to kill or restart a daemon (one JSON line each way; harness.Control).
pub(crate) async fn control(address: &str, op: &str, args: &Value) -> StepResult {
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

/// What a variable watch delivered: (versions, values, errors), and a notification per change.
pub(crate) type Watched = (Arc<Mutex<(Vec<i64>, Vec<Value>, Vec<String>)>>, Arc<Notify>);

impl Runner {
    /// Watch a variable in the background from its current version; returns once that one arrived.
    pub(crate) async fn start_watch(&mut self, name: &str) -> StepResult {
        let seen: Watched = (Arc::new(Mutex::new((vec![], vec![], vec![]))), Arc::new(Notify::new()));
        let (coordinator, name, state) = (self.coordinator.clone(), name.to_string(), seen.clone());
        let changed = seen.1.notified();
        let task = tokio::spawn(async move {
            let (list, notify) = state;
            match coordinator.watch_variable(&name, 0).await {
                Err(e) => list.lock().unwrap().2.push(e.to_string()),
                Ok(items) => {
                    tokio::pin!(items);
                    while let Some(item) = tokio_stream::StreamExt::next(&mut items).await {
                        let mut l = list.lock().unwrap();
                        match item {
                            Ok(v) => {
                                l.0.push(v.version);
                                l.1.push(serde_json::from_str(&v.value_json).unwrap_or(Value::Null));
                            }
                            Err(e) => l.2.push(e.to_string()),
                        }
                        drop(l);
                        notify.notify_waiters();
                    }
                }
            }
            notify.notify_waiters();
        });
        if tokio::time::timeout(Duration::from_secs(30), changed).await.is_err() {
            return Err(fail("the watch delivered nothing in 30 s"));
        }
        self.watch = Some((seen, task));
        Ok(json!({}))
    }

    /// Wait until the watch delivered `until_version` (or failed, or 30 s passed), then stop it.
    pub(crate) async fn wait_watch(&mut self, until_version: i64) -> StepResult {
        let ((list, notify), task) = self.watch.take().ok_or_else(|| fail("watch_variable_wait before watch_variable_start"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let changed = notify.notified();
            {
                let l = list.lock().unwrap();
                if !l.2.is_empty() || l.0.last().is_some_and(|v| *v >= until_version) || task.is_finished() {
                    break;
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                break;
            }
        }
        task.abort();
        let l = list.lock().unwrap();
        Ok(json!({"versions": l.0, "values": l.1, "errors": l.2.len(), "error": l.2.first().cloned().unwrap_or_default()}))
    }

    /// Unary SubmitBid calls, `concurrency` at a time, each with its own idempotency key, in the background;
    /// returns once `acked_before` were answered (so the next step, a kill, lands in the middle of them).
    pub(crate) async fn start_bid_calls(&mut self, a: &Value) -> StepResult {
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
    pub(crate) async fn run_op(&mut self, name: &str, a: &Value) -> StepResult {
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

}
