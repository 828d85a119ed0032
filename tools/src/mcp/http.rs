//! `magray-mem serve`: the MCP server over streamable HTTP at `/mcp`, so that several agents
//! share one store (the server is its one writer process).
//!
//! Binds 127.0.0.1 by default. Any other address needs a bearer token (`MAGRAY_MCP_TOKEN`,
//! or `--token-file`; never the command line, where other users can read it). A request
//! whose `Origin` is not a loopback origin (or one given by `--allow-origin`) is refused, as
//! the MCP specification asks against DNS rebinding. SIGTERM or Ctrl-C: no new requests,
//! in-flight calls finish, sessions end, the store closes cleanly.

use super::MemoryServer;
use anyhow::{bail, Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use magray_memory::Memory;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What `serve` needs besides the store.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub addr: SocketAddr,
    pub read_only: bool,
    /// The bearer token every request must carry, if any.
    pub token: Option<String>,
    /// Origins allowed besides loopback ones (`scheme://host:port`).
    pub allow_origins: Vec<String>,
}

#[derive(Debug)]
struct Guard {
    token: Option<String>,
    allow_origins: Vec<String>,
}

/// Whether `origin` names this machine (`http://localhost:…`, `http://127.x.y.z:…`,
/// `http://[::1]:…`).
fn is_loopback_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        rest.split([':', '/']).next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !is_loopback_origin(origin) && !g.allow_origins.iter().any(|o| o == origin) {
            tracing::warn!(origin, "request refused: foreign Origin");
            return (
                StatusCode::FORBIDDEN,
                format!("Origin {origin:?} is not allowed (pass --allow-origin to allow it)"),
            )
                .into_response();
        }
    }
    if let Some(token) = &g.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required (Authorization: Bearer <token>)",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Serves `memory` until SIGTERM or Ctrl-C, then closes it. Prints `listening on ADDR` on
/// stderr once it accepts connections.
pub async fn serve(memory: Memory, o: HttpOptions) -> Result<()> {
    if !o.addr.ip().is_loopback() && o.token.is_none() {
        bail!(
            "binding {} (not loopback) needs a bearer token: set MAGRAY_MCP_TOKEN or pass \
             --token-file FILE",
            o.addr
        );
    }
    let memory = Arc::new(memory);
    let server = MemoryServer::new(memory.clone(), o.read_only);
    let stop = CancellationToken::new();
    let service: StreamableHttpService<MemoryServer, LocalSessionManager> =
        StreamableHttpService::new(
            move || Ok(server.clone()),
            Default::default(),
            StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token()),
        );
    let g = Arc::new(Guard {
        token: o.token,
        allow_origins: o.allow_origins,
    });
    let app = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(g, guard));
    let listener = tokio::net::TcpListener::bind(o.addr)
        .await
        .with_context(|| format!("binding {}", o.addr))?;
    eprintln!("listening on {}", listener.local_addr()?);
    let shutdown = {
        let stop = stop.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("shutting down: finishing in-flight calls");
            stop.cancel();
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")?;
    super::close(memory).await
}

/// SIGTERM or SIGINT.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::is_loopback_origin;

    #[test]
    fn only_this_machine_is_a_loopback_origin() {
        for o in [
            "http://localhost:3000",
            "http://127.0.0.1",
            "https://127.1.2.3:8443",
            "http://[::1]:8080",
        ] {
            assert!(is_loopback_origin(o), "{o}");
        }
        for o in [
            "http://evil.example",
            "http://localhost.evil.example",
            "http://10.0.0.1:80",
            "null",
            "file://",
        ] {
            assert!(!is_loopback_origin(o), "{o}");
        }
    }
}
