//! The MCP server driven by the official Rust SDK's client, over stdio (`magray-mem mcp`, a
//! child process) and over streamable HTTP (`magray-mem serve`): initialise, list tools,
//! remember, recall finds it, get, rate, supersede, forget, read it as a resource, restart
//! the server and recall again (durable), malformed calls, a second server on a locked
//! store, read-only mode, and the HTTP server's token and Origin checks. Needs the model files
//! (`bash tools/setup.sh`), as every text command does.

#![allow(clippy::unwrap_used)]

use rmcp::model::{CallToolRequestParams, ClientConfig, ReadResourceRequestParams};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::ServiceExt;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};

type Client = RunningService<RoleClient, ClientConfig>;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_magray-mem")
}

async fn stdio_client(store: &Path, extra: &[&str]) -> Client {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("--store").arg(store).arg("mcp").args(extra);
    cmd.stderr(Stdio::inherit());
    let transport = TokioChildProcess::new(cmd).unwrap();
    ClientConfig::default().serve(transport).await.unwrap()
}

/// A tool call's structured result, or the protocol error's message.
async fn call(c: &Client, tool: &str, args: Value) -> Result<Value, String> {
    let args = args.as_object().cloned().unwrap_or_default();
    match c
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
        .await
    {
        Ok(r) if r.is_error == Some(true) => Err(format!("tool error: {:?}", r.content)),
        Ok(r) => Ok(r.structured_content.expect("structured content")),
        Err(ServiceError::McpError(e)) => Err(e.message.to_string()),
        Err(e) => panic!("transport failure: {e}"),
    }
}

/// The whole conversation an agent has with its memory; returns the id it remembered.
async fn session(c: &Client) -> String {
    let tools: Vec<String> = c
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    for t in [
        "remember",
        "recall",
        "forget",
        "rate",
        "get",
        "supersede",
        "memory_status",
    ] {
        assert!(tools.contains(&t.to_string()), "{t} missing from {tools:?}");
    }
    let r = call(
        c,
        "remember",
        json!({"text": "the staging deploy needs the VPN up first", "layer": "assets",
               "tags": ["deploy"], "project": "atlas"}),
    )
    .await
    .unwrap();
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(r["durable"], true);
    // Identical content: the same id, nothing new written.
    let again = call(
        c,
        "remember",
        json!({"text": "the staging deploy needs the VPN up first", "layer": "assets",
               "project": "atlas"}),
    )
    .await
    .unwrap();
    assert_eq!(again["id"], id.as_str());
    let other = call(
        c,
        "remember",
        json!({"text": "lunch is at noon on Fridays"}),
    )
    .await
    .unwrap();
    let hits = call(
        c,
        "recall",
        json!({"query": "what do I need before deploying to staging?", "k": 3}),
    )
    .await
    .unwrap();
    assert_eq!(hits["hits"][0]["id"], id.as_str(), "{hits}");
    assert_eq!(hits["hits"][0]["tags"][0], "deploy");
    let words = call(
        c,
        "recall",
        json!({"query": "VPN", "mode": "keyword", "project": "atlas"}),
    )
    .await
    .unwrap();
    assert_eq!(words["hits"].as_array().unwrap().len(), 1, "{words}");
    let got = call(c, "get", json!({"id": id})).await.unwrap();
    assert_eq!(got["layer"], "assets");
    call(c, "rate", json!({"id": id, "rating": 0.9}))
        .await
        .unwrap();
    let res = c
        .read_resource(ReadResourceRequestParams::new(format!("memory://{id}")))
        .await
        .unwrap();
    let body = format!("{:?}", res.contents);
    assert!(body.contains("VPN"), "{body}");
    let newer = call(
        c,
        "supersede",
        json!({"id": other["id"], "text": "lunch is at one on Fridays"}),
    )
    .await
    .unwrap();
    let lunch = call(
        c,
        "recall",
        json!({"query": "when is lunch on Friday?", "k": 1}),
    )
    .await
    .unwrap();
    assert_eq!(lunch["hits"][0]["id"], newer["id"]);
    call(c, "forget", json!({"id": newer["id"]})).await.unwrap();
    let status = call(c, "memory_status", json!({})).await.unwrap();
    assert_eq!(status["layers"][2]["records"], 1, "{status}");

    // Malformed calls: protocol errors with a clear message, nothing written.
    let e = call(c, "remember", json!({"txt": "typo"}))
        .await
        .unwrap_err();
    assert!(e.contains("text"), "{e}");
    let e = call(c, "remember", json!({"text": ""})).await.unwrap_err();
    assert!(e.contains("empty"), "{e}");
    let e = call(c, "remember", json!({"text": "x", "layer": "attic"}))
        .await
        .unwrap_err();
    assert!(e.contains("attic"), "{e}");
    let e = call(c, "recall", json!({"query": "x", "k": 0}))
        .await
        .unwrap_err();
    assert!(e.contains("top_k") || e.contains('0'), "{e}");
    let e = call(c, "recall", json!({"query": 5})).await.unwrap_err();
    assert!(e.contains("query") || e.contains("string"), "{e}");
    let e = call(c, "get", json!({"id": "not-an-id"}))
        .await
        .unwrap_err();
    assert!(e.contains("not a record id"), "{e}");
    let e = call(
        c,
        "forget",
        json!({"id": "0190a7a0-0000-7000-8000-000000000000"}),
    )
    .await
    .unwrap_err();
    assert!(e.contains("not found") || e.contains("no record"), "{e}");
    let after = call(c, "memory_status", json!({})).await.unwrap();
    assert_eq!(
        after["last_seq"], status["last_seq"],
        "a malformed call wrote nothing"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_uses_the_store_over_stdio_and_it_stays_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let c = stdio_client(&store, &[]).await;
    let id = session(&c).await;

    // A second server on the same store is refused, naming the holder.
    let second = Command::new(bin())
        .arg("--store")
        .arg(&store)
        .arg("mcp")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(4), "{err}");
    assert!(err.contains("in use by"), "{err}");

    c.cancel().await.unwrap();
    // Restarted: what was remembered is there.
    let c = stdio_client(&store, &["--read-only"]).await;
    let hits = call(&c, "recall", json!({"query": "staging VPN", "k": 1}))
        .await
        .unwrap();
    assert_eq!(hits["hits"][0]["id"], id.as_str());
    // Read-only: the writing tools are not offered and cannot be called.
    let tools: Vec<String> = c
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(!tools.contains(&"remember".to_string()), "{tools:?}");
    assert!(call(&c, "remember", json!({"text": "x"})).await.is_err());
    c.cancel().await.unwrap();
}

/// `magray-mem serve` on a free port; returns the child and its address.
fn spawn_http(store: &Path, extra: &[&str], token: Option<&str>) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(bin());
    cmd.arg("--store")
        .arg(store)
        .arg("serve")
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    match token {
        Some(t) => cmd.env("MAGRAY_MCP_TOKEN", t),
        None => cmd.env_remove("MAGRAY_MCP_TOKEN"),
    };
    let mut child = cmd.spawn().unwrap();
    // Wait for "listening on".
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("listening on"), "{first}");
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, format!("http://127.0.0.1:{port}/mcp"))
}

fn stop(mut child: Child) {
    // SIGTERM: in-flight calls finish, the store closes cleanly.
    let pid = child.id() as i32;
    // SAFETY: kill(2) on our own child's pid; no memory is touched.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
}

/// A raw JSON-RPC initialize POST, for the checks the SDK client would never fail.
fn raw_post(url: &str, headers: &[(&str, &str)]) -> u16 {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}})
    .to_string();
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let mut resp = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut resp);
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_share_the_store_over_http_and_it_stays_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (child, url) = spawn_http(&store, &[], None);
    let c = ClientConfig::default()
        .serve(StreamableHttpClientTransport::from_uri(url.clone()))
        .await
        .unwrap();
    let id = session(&c).await;
    // A foreign Origin is refused (DNS rebinding); a loopback one is not.
    assert_eq!(raw_post(&url, &[("Origin", "http://evil.example")]), 403);
    assert_eq!(raw_post(&url, &[("Origin", "http://localhost:3000")]), 200);
    c.cancel().await.unwrap();
    stop(child);

    // Restarted with a token: requests without it are refused; the record is still there.
    let (child, url) = spawn_http(&store, &["--read-only"], Some("s3cret"));
    assert_eq!(raw_post(&url, &[]), 401);
    assert_eq!(raw_post(&url, &[("Authorization", "Bearer wrong")]), 401);
    assert_eq!(raw_post(&url, &[("Authorization", "Bearer s3cret")]), 200);
    let transport = StreamableHttpClientTransport::from_config(
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            url.clone(),
        )
        .auth_header("s3cret"),
    );
    let c = ClientConfig::default().serve(transport).await.unwrap();
    let hits = call(&c, "recall", json!({"query": "staging VPN", "k": 1}))
        .await
        .unwrap();
    assert_eq!(hits["hits"][0]["id"], id.as_str());
    assert!(
        call(&c, "forget", json!({"id": id})).await.is_err(),
        "read-only"
    );
    c.cancel().await.unwrap();
    stop(child);
}

#[test]
fn a_non_loopback_bind_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .arg("--store")
        .arg(dir.path().join("store"))
        .args(["serve", "--bind", "0.0.0.0:0"])
        .env_remove("MAGRAY_MCP_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("MAGRAY_MCP_TOKEN"), "{err}");
}
