//! The commands.

use crate::store::{self, Need};
use crate::{chunk, Cli, Cmd, ExportFormat, LogArgs, RestoreArgs, SearchArgs, StoreArgs};
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use magray_memory::backup::{self, Target};
use magray_memory::lifecycle::LifecycleReport;
use magray_memory::wal::{Event, History};
use magray_memory::{
    parse_layer, verify, Layer, Memory, NewRecord, Record, RecordId, SearchHit, SearchMode,
    SearchOptions, Stats, StoreManifest,
};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod demo;
mod ingest;
mod log;
mod maintain;
mod search;
mod status;

use demo::*;
use ingest::*;
use log::*;
use maintain::*;
use search::*;
use status::*;

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let dir = store::path(&cli.store)?;
    let json = cli.json;
    match cli.cmd {
        Cmd::Status { prometheus } => status(&dir, json, prometheus).await?,
        Cmd::Store(a) => store_one(&dir, a, json).await?,
        Cmd::Search(a) => search(&dir, a, json).await?,
        Cmd::Ingest {
            paths,
            layer,
            project,
        } => {
            let m = store::open(&dir, Need::Text).await?;
            let cwd = std::env::current_dir()?;
            let r = ingest(&m, &paths, &cwd, parse_layer(&layer)?, project.as_deref()).await;
            m.close().await?;
            print_ingest(&r?, json);
        }
        Cmd::Import { file } => import(&dir, &file, json).await?,
        Cmd::Export {
            format,
            layer,
            embeddings,
            output,
        } => export(
            &dir,
            format,
            layer.as_deref(),
            embeddings,
            output.as_deref(),
        )?,
        Cmd::Log(a) => log(&dir, &a, json)?,
        Cmd::Checkpoint => {
            let m = store::open(&dir, Need::Existing).await?;
            let seq = m.checkpoint().await;
            m.close().await?;
            let seq = seq?;
            out(json, json!({ "snapshot_seq": seq }), || {
                format!("snapshot written at sequence {seq}")
            });
        }
        Cmd::Optimize => {
            let m = store::open(&dir, Need::Existing).await?;
            let spinner = spinner("rebuilding indices");
            let seq = m.optimize().await;
            spinner.finish_and_clear();
            let st = m.stats();
            m.close().await?;
            let seq = seq?;
            out(
                json,
                json!({ "snapshot_seq": seq, "tombstones": st.index.tombstones }),
                || format!("index rebuilt without tombstones; snapshot written at sequence {seq}"),
            );
        }
        Cmd::Promote => {
            let m = store::open(&dir, Need::Existing).await?;
            let r = m.promote().await;
            m.close().await?;
            print_lifecycle(&r?, json);
        }
        Cmd::Expire => {
            let m = store::open(&dir, Need::Existing).await?;
            let r = m.expire().await;
            m.close().await?;
            print_lifecycle(&r?, json);
        }
        Cmd::Backup { dest } => {
            let bar = counter("events copied");
            let src = dir.clone();
            let d = dest.clone();
            let b = bar.clone();
            let r = tokio::task::spawn_blocking(move || {
                backup::backup(&src, &d, &mut |n| b.set_position(n))
            })
            .await??;
            bar.finish_and_clear();
            out(json, copy_json(&r, &dest), || {
                format!(
                    "backup {}: {} new events (now up to sequence {}, {}), snapshot {}{}; timeline {}",
                    dest.display(),
                    r.events_copied,
                    r.last_seq,
                    rfc3339(r.last_ts_us),
                    r.snapshot_seq.map_or("none".into(), |s| s.to_string()),
                    if r.snapshot_copied { " (copied)" } else { "" },
                    r.timeline
                )
            });
        }
        Cmd::Restore(a) => restore(&a, json).await?,
        Cmd::Verify { path } => {
            let target = path.unwrap_or(dir);
            let t = target.clone();
            let spinner = spinner("verifying");
            let r = tokio::task::spawn_blocking(move || verify::verify(&t)).await?;
            spinner.finish_and_clear();
            let r = r.with_context(|| format!("verifying {}", target.display()))?;
            out(json, verify_json(&r), || verify_text(&r));
            if !r.ok() {
                return Ok(ExitCode::from(3));
            }
        }
        Cmd::Demo => demo(&dir).await?,
        Cmd::Mcp { read_only } => {
            let m = store::open_server(&dir).await?;
            crate::mcp::stdio(m, read_only).await?;
        }
        Cmd::Serve {
            bind,
            read_only,
            token_file,
            allow_origins,
        } => serve(&dir, bind, read_only, token_file, allow_origins).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn out(json: bool, value: Value, text: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

fn spinner(what: &str) -> ProgressBar {
    let p = ProgressBar::new_spinner().with_message(what.to_string());
    p.enable_steady_tick(Duration::from_millis(120));
    p
}

fn counter(what: &str) -> ProgressBar {
    let p = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {pos} {msg} ({elapsed})") {
        p.set_style(style);
    }
    p.set_message(what.to_string());
    p.enable_steady_tick(Duration::from_millis(120));
    p
}

/// RFC 3339 text of a µs timestamp.
pub(crate) fn rfc3339(us: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(us)).to_string()
}

/// µs of an RFC 3339 time (`2026-11-21T14:00:00Z`, fractions and offsets accepted).
pub(crate) fn parse_time(flag: &str, s: &str) -> Result<u64> {
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| anyhow!("{flag} {s:?}: {e}; expected RFC 3339, e.g. 2026-11-21T14:00:00Z"))?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map_err(|_| anyhow!("{flag} {s:?} is before 1970"))?
        .as_micros() as u64)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `serve`: the token from `--token-file` or `MAGRAY_MCP_TOKEN` (checked before the store is
/// opened: a non-loopback bind needs one), then the HTTP server until SIGTERM.
async fn serve(
    dir: &Path,
    bind: std::net::SocketAddr,
    read_only: bool,
    token_file: Option<PathBuf>,
    allow_origins: Vec<String>,
) -> Result<()> {
    let token = match token_file {
        Some(f) => Some(
            std::fs::read_to_string(&f)
                .with_context(|| format!("reading the token file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("MAGRAY_MCP_TOKEN").ok(),
    }
    .filter(|t| !t.is_empty());
    if !bind.ip().is_loopback() && token.is_none() {
        bail!(
            "binding {bind} (not loopback) needs a bearer token: set MAGRAY_MCP_TOKEN or pass \
             --token-file FILE"
        );
    }
    let m = store::open_server(dir).await?;
    crate::mcp::serve(
        m,
        crate::mcp::HttpOptions {
            addr: bind,
            read_only,
            token,
            allow_origins,
        },
    )
    .await
}
