//! Load on `magray-mem serve`: 16 MCP clients (the official Rust SDK over streamable HTTP),
//! each remembering and recalling in a loop for 60 s; prints calls/s and p50/p99 latency per
//! tool. Then a crash check: the clients remember again, the server is killed with SIGKILL
//! mid-load, restarted, and every `remember` that returned an id must be in the store.
//!
//! ```sh
//! bash tools/setup.sh && cargo build --release -p magray-tools
//! cargo run --release -p magray-tools --example mcp_load            # 16 clients, 60 s
//! MCP_LOAD_CLIENTS=4 MCP_LOAD_SECS=10 cargo run --release -p magray-tools --example mcp_load
//! ```
//! `MAGRAY_MEM` names the server binary (default: `target/release/magray-mem`).

use anyhow::{anyhow, bail, Context, Result};
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

fn spawn(bin: &Path, store: &Path) -> Result<(Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(bin)
        .arg("--store")
        .arg(store)
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let first = lines.next().transpose()?.unwrap_or_default();
    if !first.starts_with("listening on") {
        bail!("the server did not start: {first}");
    }
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Ok((child, format!("http://127.0.0.1:{port}/mcp")))
}

async fn call(
    c: &rmcp::service::RunningService<rmcp::RoleClient, ClientConfig>,
    tool: &str,
    args: Value,
) -> Result<Value> {
    let args = args.as_object().cloned().unwrap_or_default();
    let r = c
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
        .await?;
    if r.is_error == Some(true) {
        bail!("{tool}: {:?}", r.content);
    }
    r.structured_content
        .ok_or_else(|| anyhow!("{tool}: no result"))
}

/// One client: remember then recall until `until`; returns the ids remembered and each
/// call's latency (remember, recall). Stops quietly at the first failed call when `crash`.
async fn client(
    url: String,
    n: usize,
    until: Instant,
    crash: bool,
) -> Result<(Vec<String>, Vec<Duration>, Vec<Duration>)> {
    let c = ClientConfig::default()
        .serve(StreamableHttpClientTransport::from_uri(url))
        .await?;
    let (mut ids, mut rem, mut rec) = (Vec::new(), Vec::new(), Vec::new());
    let mut i = 0u64;
    while Instant::now() < until {
        // The crash phase's texts are new ones: identical text would be deduplicated to a
        // record the load phase already made durable.
        let phase = if crash { "crash" } else { "load" };
        let text = format!(
            "{phase} client {n} note {i}: the build on host {} took {} s",
            i % 7,
            i * 3 % 97
        );
        let t = Instant::now();
        // A call cut by the server's death may never be answered: give up on it after 10 s.
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            call(
                &c,
                "remember",
                json!({"text": text, "project": format!("p{n}")}),
            ),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow!("remember: no answer in 10 s")));
        match r {
            Ok(v) => ids.push(v["id"].as_str().unwrap_or_default().to_string()),
            Err(_) if crash => break,
            Err(e) => return Err(e),
        }
        rem.push(t.elapsed());
        if !crash {
            let t = Instant::now();
            call(&c, "recall", json!({"query": format!("how long did the build on host {} take?", i % 7), "k": 5, "project": format!("p{n}")})).await?;
            rec.push(t.elapsed());
        }
        i += 1;
    }
    if !crash {
        let _ = c.cancel().await;
    }
    Ok((ids, rem, rec))
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v.get(((v.len().max(1) - 1) as f64 * p) as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let clients = env_num("MCP_LOAD_CLIENTS", 16)? as usize;
    let secs = env_num("MCP_LOAD_SECS", 60)?;
    let bin = std::env::var_os("MAGRAY_MEM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/magray-mem")
        });
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");

    // Load.
    let (mut server, url) = spawn(&bin, &store)?;
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|n| tokio::spawn(client(url.clone(), n, until, false)))
        .collect();
    let (mut rem, mut rec) = (Vec::new(), Vec::new());
    for t in tasks {
        let (_, a, b) = t.await??;
        rem.extend(a);
        rec.extend(b);
    }
    let wall = started.elapsed().as_secs_f64();
    server.kill()?;
    server.wait()?;
    println!("mcp_load: {clients} clients over streamable HTTP, {secs} s, one store");
    println!(
        "{:<9} {:>8} {:>9} {:>8} {:>8}",
        "tool", "calls", "calls/s", "p50 ms", "p99 ms"
    );
    for (name, v) in [("remember", &mut rem), ("recall", &mut rec)] {
        println!(
            "{name:<9} {:>8} {:>9.1} {:>8.1} {:>8.1}",
            v.len(),
            v.len() as f64 / wall,
            pct(v, 0.5),
            pct(v, 0.99)
        );
    }

    // Crash: SIGKILL mid-load, then every acknowledged id must be there.
    let (mut server, url) = spawn(&bin, &store)?;
    let until = Instant::now() + Duration::from_secs(30);
    let tasks: Vec<_> = (0..clients)
        .map(|n| tokio::spawn(client(url.clone(), n, until, true)))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.kill()?; // SIGKILL
    server.wait()?;
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await??.0);
    }
    let (mut server, url) = spawn(&bin, &store)?;
    let c = ClientConfig::default()
        .serve(StreamableHttpClientTransport::from_uri(url))
        .await?;
    let mut lost = 0;
    for id in &acked {
        if call(&c, "get", json!({"id": id})).await.is_err() {
            lost += 1;
        }
    }
    let _ = c.cancel().await;
    server.kill()?;
    server.wait()?;
    println!(
        "kill -9 mid-load: {} remembers acknowledged before the kill, {lost} lost",
        acked.len()
    );
    if lost > 0 {
        bail!("{lost} acknowledged records lost");
    }
    Ok(())
}
