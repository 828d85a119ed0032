//! The store as a Model Context Protocol server: `magray-mem mcp` (stdio) and
//! `magray-mem serve` (streamable HTTP, see `http.rs`). Tools: `remember`, `recall`,
//! `forget`, `rate`, `get`, `supersede`, `memory_status`; every record readable as the
//! resource `memory://<id>`. A write returns once it is fsynced in the log. Logs go to stderr.

mod http;

pub use http::{serve, HttpOptions};

use magray_memory::{
    parse_layer, Layer, Memory, NewRecord, Record, RecordId, SearchHit, SearchMode, SearchOptions,
};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{
    ErrorData, Implementation, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{schemars, tool, tool_handler, tool_router, RoleServer, ServerHandler};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The tools that change the store (refused with `--read-only`).
pub const WRITING_TOOLS: [&str; 4] = ["remember", "forget", "rate", "supersede"];

/// Resources listed by `resources/list`: the newest records (each is readable by its id).
const LISTED_RESOURCES: usize = 100;

/// The server: one open store shared by every session.
#[derive(Clone)]
pub struct MemoryServer {
    memory: Arc<Memory>,
    read_only: bool,
    tool_router: ToolRouter<Self>,
}

impl std::fmt::Debug for MemoryServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryServer")
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RememberArgs {
    /// What to remember, as plain text (one fact, message or note).
    pub text: String,
    /// interact (session context, expires after 24 h), insights (distilled knowledge, 90 d) or
    /// assets (permanent). Default interact.
    pub layer: Option<String>,
    /// What kind of record this is, e.g. "note", "fact", "message". Default "note".
    pub kind: Option<String>,
    /// Labels to filter by later.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The project it belongs to (a recall can be limited to it).
    pub project: Option<String>,
    /// The conversation or session it came from.
    pub session: Option<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Remembered {
    /// The record's id (the existing one when identical content was already stored).
    pub id: String,
    /// Always true: the record is fsynced to the log before this answer.
    pub durable: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RecallArgs {
    /// What to look for, in words: a question or keywords.
    pub query: String,
    /// How many results, 1..=100. Default 10.
    pub k: Option<usize>,
    /// Only this layer: interact, insights or assets.
    pub layer: Option<String>,
    /// Only records carrying every one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only this project.
    pub project: Option<String>,
    /// Only this session.
    pub session: Option<String>,
    /// Only records from this time on (RFC 3339).
    pub since: Option<String>,
    /// Only records up to this time (RFC 3339).
    pub until: Option<String>,
    /// Drop results whose cosine similarity is below this (0..1).
    pub threshold: Option<f32>,
    /// hybrid (meaning and words, the default), vector (meaning) or keyword (exact words).
    pub mode: Option<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Hit {
    pub id: String,
    pub text: String,
    /// Fused score in hybrid mode (at most 1), cosine in vector mode, BM25 in keyword mode.
    pub score: f32,
    pub layer: String,
    pub kind: String,
    pub tags: Vec<String>,
    pub project: Option<String>,
    pub session: Option<String>,
    /// When the record was made (RFC 3339).
    pub ts: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Recalled {
    /// Best first.
    pub hits: Vec<Hit>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct IdArgs {
    /// A record id, as `remember` or `recall` returned it.
    pub id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RateArgs {
    /// A record id.
    pub id: String,
    /// How useful the record was, 0 (useless) to 1 (essential).
    pub rating: f32,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SupersedeArgs {
    /// The record to replace (it stays in the history).
    pub id: String,
    /// The new text.
    pub text: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Done {
    /// The record concerned.
    pub id: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RecordOut {
    pub id: String,
    pub text: String,
    pub layer: String,
    pub kind: String,
    pub tags: Vec<String>,
    pub project: Option<String>,
    pub session: Option<String>,
    pub ts: String,
    pub rating: Option<f32>,
    pub access_count: u64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct LayerStatus {
    pub layer: String,
    pub records: u64,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Status {
    pub layers: Vec<LayerStatus>,
    /// Records not yet in the vector index (searched exactly meanwhile).
    pub index_pending: u64,
    /// Last durable sequence of the event log.
    pub last_seq: u64,
    /// Sequence of the newest snapshot, if any.
    pub last_snapshot_seq: Option<u64>,
    /// Events since that snapshot (replayed by the next open).
    pub events_since_snapshot: u64,
    /// Problems worth a look (damage, index lag).
    pub warnings: Vec<String>,
    pub read_only: bool,
}

fn bad(e: impl std::fmt::Display) -> ErrorData {
    ErrorData::invalid_params(e.to_string(), None)
}

/// An engine error as the protocol's error: bad input is `invalid_params`, an unknown id
/// `resource_not_found`, anything else `internal_error`; the message is the engine's.
fn engine(e: magray_memory::Error) -> ErrorData {
    use magray_memory::Error as E;
    match &e {
        E::NotFound(_) => ErrorData::resource_not_found(e.to_string(), None),
        e if e.is_invalid_input() => bad(e),
        _ => ErrorData::internal_error(e.to_string(), None),
    }
}

fn id_of(s: &str) -> Result<RecordId, ErrorData> {
    s.trim().parse::<RecordId>().map_err(bad)
}

use crate::cmd::rfc3339;

fn time_of(flag: &str, s: &str) -> Result<u64, ErrorData> {
    crate::cmd::parse_time(flag, s).map_err(bad)
}

/// `r` with the caller's labels.
fn labelled(
    mut r: NewRecord,
    tags: Vec<String>,
    project: Option<String>,
    session: Option<String>,
) -> NewRecord {
    for t in tags {
        r = r.tag(t);
    }
    if let Some(p) = project {
        r = r.project(p);
    }
    if let Some(s) = session {
        r = r.session(s);
    }
    r
}

fn record_out(r: Record) -> RecordOut {
    RecordOut {
        id: r.id.to_string(),
        text: r.text,
        layer: r.layer.name().into(),
        kind: r.kind,
        tags: r.tags,
        project: r.project,
        session: r.session,
        ts: rfc3339(r.ts_us),
        rating: r.rating,
        access_count: r.stats.count,
    }
}

fn hit(h: SearchHit) -> Hit {
    Hit {
        id: h.id.to_string(),
        score: h.score,
        layer: h.layer.name().into(),
        ts: rfc3339(h.record.ts_us),
        text: h.record.text,
        kind: h.record.kind,
        tags: h.record.tags,
        project: h.record.project,
        session: h.record.session,
    }
}

#[tool_router]
impl MemoryServer {
    /// A server on `memory`; with `read_only`, the tools that write are not offered.
    pub fn new(memory: Arc<Memory>, read_only: bool) -> MemoryServer {
        let mut tool_router = Self::tool_router();
        if read_only {
            for t in WRITING_TOOLS {
                tool_router.remove_route(t);
            }
        }
        MemoryServer {
            memory,
            read_only,
            tool_router,
        }
    }

    #[tool(
        description = "Store something worth remembering (a fact, decision, preference or message). \
                       Returns its id once it is durable on disk. Storing identical text in the same \
                       layer and project again returns the existing id."
    )]
    async fn remember(
        &self,
        Parameters(a): Parameters<RememberArgs>,
    ) -> Result<Json<Remembered>, ErrorData> {
        let r = NewRecord::text(a.text)
            .layer(match &a.layer {
                Some(l) => parse_layer(l).map_err(bad)?,
                None => Layer::Interact,
            })
            .kind(a.kind.unwrap_or_else(|| "note".into()));
        let r = labelled(r, a.tags, a.project, a.session);
        let id = self.memory.store(r).await.map_err(engine)?;
        Ok(Json(Remembered {
            id: id.to_string(),
            durable: true,
        }))
    }

    #[tool(
        description = "Find stored memories relevant to a query, best first, by meaning and by \
                       exact words (names, dates, identifiers). Filter by layer, tags, project, \
                       session or time."
    )]
    async fn recall(
        &self,
        Parameters(a): Parameters<RecallArgs>,
    ) -> Result<Json<Recalled>, ErrorData> {
        let time_range = match (&a.since, &a.until) {
            (None, None) => None,
            (s, u) => Some((
                s.as_deref()
                    .map(|s| time_of("since", s))
                    .transpose()?
                    .unwrap_or(0),
                u.as_deref()
                    .map(|u| time_of("until", u))
                    .transpose()?
                    .unwrap_or(u64::MAX),
            )),
        };
        let o = SearchOptions {
            layers: a
                .layer
                .as_deref()
                .map(parse_layer)
                .transpose()
                .map_err(bad)?
                .into_iter()
                .collect(),
            top_k: a.k.unwrap_or(10),
            score_threshold: a.threshold,
            tags: a.tags,
            project: a.project,
            session: a.session,
            time_range,
            mode: match &a.mode {
                Some(m) => m.parse::<SearchMode>().map_err(bad)?,
                None => SearchMode::Hybrid,
            },
            ..SearchOptions::default()
        };
        let hits = self
            .memory
            .search_text(&a.query, &o)
            .await
            .map_err(engine)?;
        Ok(Json(Recalled {
            hits: hits.into_iter().map(hit).collect(),
        }))
    }

    #[tool(description = "Delete a memory by id (it stays in the event history).")]
    async fn forget(&self, Parameters(a): Parameters<IdArgs>) -> Result<Json<Done>, ErrorData> {
        let id = id_of(&a.id)?;
        self.memory.delete(id).await.map_err(engine)?;
        Ok(Json(Done { id: id.to_string() }))
    }

    #[tool(description = "Rate how useful a memory was, 0 to 1; useful memories are kept longer.")]
    async fn rate(&self, Parameters(a): Parameters<RateArgs>) -> Result<Json<Done>, ErrorData> {
        let id = id_of(&a.id)?;
        self.memory.rate(id, a.rating).await.map_err(engine)?;
        Ok(Json(Done { id: id.to_string() }))
    }

    #[tool(description = "Read one memory by id, with its layer, tags, time and rating.")]
    async fn get(&self, Parameters(a): Parameters<IdArgs>) -> Result<Json<RecordOut>, ErrorData> {
        let r = self.memory.get(id_of(&a.id)?).await.map_err(engine)?;
        Ok(Json(record_out(r)))
    }

    #[tool(
        description = "Replace a memory's text (a correction or update). The old version stays in \
                       the history; returns the new record's id."
    )]
    async fn supersede(
        &self,
        Parameters(a): Parameters<SupersedeArgs>,
    ) -> Result<Json<Done>, ErrorData> {
        let old = id_of(&a.id)?;
        let current = self.memory.get(old).await.map_err(engine)?;
        let mut r = NewRecord::text(a.text)
            .layer(current.layer)
            .kind(current.kind);
        for t in current.tags {
            r = r.tag(t);
        }
        if let Some(p) = current.project {
            r = r.project(p);
        }
        if let Some(s) = current.session {
            r = r.session(s);
        }
        let new = self.memory.supersede(old, r).await.map_err(engine)?;
        Ok(Json(Done {
            id: new.to_string(),
        }))
    }

    #[tool(
        description = "How many memories each layer holds, index lag, the last snapshot, warnings."
    )]
    async fn memory_status(&self) -> Result<Json<Status>, ErrorData> {
        let s = self.memory.stats();
        let mut warnings = Vec::new();
        if let Some(d) = &s.damage {
            warnings.push(format!("damaged snapshot file: {d}"));
        }
        let layers = Layer::ALL
            .iter()
            .zip(&s.layers)
            .map(|(l, x)| LayerStatus {
                layer: l.name().into(),
                records: x.records,
            })
            .collect();
        if s.index.pending > 10_000 {
            warnings.push(format!("{} records not yet indexed", s.index.pending));
        }
        Ok(Json(Status {
            layers,
            index_pending: s.index.pending,
            last_seq: s.last_seq,
            last_snapshot_seq: s.last_snapshot_seq,
            events_since_snapshot: s.events_since_snapshot,
            warnings,
            read_only: self.read_only,
        }))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for MemoryServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new(
            "magray-memory",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(
            "Long-term memory for this agent. `remember` what is worth keeping (decisions, facts, \
             preferences); `recall` before answering anything that may depend on earlier work. \
             Memories are durable once stored; each is also the resource memory://<id>.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let records = self.memory.records(None).map_err(engine)?;
        let newest = records.into_iter().rev().take(LISTED_RESOURCES).map(|r| {
            let title: String = r.text.chars().take(60).collect();
            Resource::new(format!("memory://{}", r.id), r.id.to_string())
                .with_title(title)
                .with_description(format!("{} {}", r.layer.name(), r.kind))
        });
        Ok(ListResourcesResult::with_all_items(newest.collect()))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let Some(id) = request.uri.strip_prefix("memory://") else {
            return Err(ErrorData::resource_not_found(
                format!("{}: resources are memory://<id>", request.uri),
                None,
            ));
        };
        let r = self.memory.get(id_of(id)?).await.map_err(engine)?;
        let json = serde_json::to_string(&record_out(r))
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(ReadResourceResult::new(vec![ResourceContents::text(json, request.uri.clone())]).into())
    }
}

/// `magray-mem mcp`: serves the store on stdin/stdout until the client closes them, then
/// closes the store cleanly.
pub async fn stdio(memory: Memory, read_only: bool) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let memory = Arc::new(memory);
    let server = MemoryServer::new(memory.clone(), read_only);
    let running = server.serve(rmcp::transport::stdio()).await?;
    let reason = running.waiting().await?;
    tracing::info!(?reason, "MCP client gone; closing the store");
    close(memory).await
}

/// Closes the store once every session has let go of it (waits up to 5 s for them).
pub async fn close(mut memory: Arc<Memory>) -> anyhow::Result<()> {
    for _ in 0..500 {
        match Arc::try_unwrap(memory) {
            Ok(m) => return Ok(m.close().await?),
            Err(m) => memory = m,
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    anyhow::bail!("sessions still hold the store after 5 s; it was not closed cleanly (the log has every acknowledged write)")
}
