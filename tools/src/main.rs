//! `magray-mem`: look after an agent's memory store — status, store and search, ingest,
//! import/export, the event log, checkpoints and lifecycle runs, backups, point-in-time
//! restore and verification.

mod chunk;
mod cmd;
mod mcp;
mod store;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

const EXIT_CODES: &str = "Exit codes: 0 success; 1 failure (the message says what failed and \
what to do); 2 bad command line; 3 `verify` found problems; 4 the store is in use by another \
process (the message names it).";

/// Look after an agent's memory store.
#[derive(Parser, Debug)]
#[command(name = "magray-mem", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Store directory [default: $MEMORY_DB_PATH, else $XDG_DATA_HOME/magray-memory/default,
    /// else ~/.local/share/magray-memory/default]
    #[arg(long, global = true)]
    store: Option<PathBuf>,
    /// Print JSON (one object; `log` and `search --batch` print one per line)
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Records per layer, index lag, log/archive/snapshot sizes, last checkpoint, warnings
    Status {
        /// Prometheus text exposition format
        #[arg(long)]
        prometheus: bool,
    },
    /// Store one record (TEXT, or `-` to read it from stdin)
    Store(StoreArgs),
    /// Search by text (through the embedder) or by vector
    Search(SearchArgs),
    /// Ingest markdown, text and source files (chunked) into a layer
    Ingest {
        /// Files or directories
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Layer
        #[arg(long, default_value = "assets")]
        layer: String,
        /// Project of the records
        #[arg(long)]
        project: Option<String>,
    },
    /// Import records from JSONL (text, layer, kind, tags, project, session, ts, id, embedding)
    Import {
        /// The JSONL file
        file: PathBuf,
    },
    /// Export every record as JSONL (or markdown); works while the store is in use
    Export {
        /// Output format
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Only this layer
        #[arg(long)]
        layer: Option<String>,
        /// Include each record's embedding (JSONL)
        #[arg(long)]
        embeddings: bool,
        /// Write here instead of stdout
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// The event history, like `git log` (works while the store is in use)
    Log(LogArgs),
    /// Write a snapshot now
    Checkpoint,
    /// Rebuild indices that hold deleted or moved records, then write a snapshot
    Optimize,
    /// Promote records that score above their layer's threshold
    Promote,
    /// Expire records past their TTL or over capacity
    Expire,
    /// Back up the store into DEST (online; incremental into the same DEST)
    Backup {
        /// Backup directory
        dest: PathBuf,
    },
    /// Restore a store or backup as of a time or sequence into a new directory
    Restore(RestoreArgs),
    /// Check every checksum, sequence continuity and projections against a replay
    Verify {
        /// Store or backup directory [default: the store]
        path: Option<PathBuf>,
    },
    /// The main job: ingest this repository's docs, play an agent session, search, promote
    Demo,
    /// Serve the store to an MCP client over stdin/stdout (an agent's `mcpServers` entry)
    Mcp {
        /// Offer only the reading tools (recall, get, memory_status)
        #[arg(long)]
        read_only: bool,
    },
    /// Serve the store to MCP clients over streamable HTTP at /mcp (several agents, one store)
    Serve {
        /// Address to bind; any but a loopback address needs a bearer token
        #[arg(long, default_value = "127.0.0.1:8765")]
        bind: std::net::SocketAddr,
        /// Offer only the reading tools (recall, get, memory_status)
        #[arg(long)]
        read_only: bool,
        /// A file holding the bearer token (else the MAGRAY_MCP_TOKEN variable)
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// An Origin allowed besides loopback ones, e.g. https://app.example (repeatable)
        #[arg(long = "allow-origin")]
        allow_origins: Vec<String>,
    },
}

#[derive(Args, Debug)]
struct StoreArgs {
    /// The text, or `-` for stdin
    text: String,
    /// Layer
    #[arg(long, default_value = "interact")]
    layer: String,
    /// Kind
    #[arg(long, default_value = "note")]
    kind: String,
    /// Tag (repeatable)
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Project
    #[arg(long)]
    project: Option<String>,
    /// Session
    #[arg(long)]
    session: Option<String>,
    /// The embedding as comma-separated numbers (no embedder needed)
    #[arg(long)]
    vector: Option<String>,
}

#[derive(Args, Debug)]
struct SearchArgs {
    /// The query text (or use --vector, or --batch)
    query: Option<String>,
    /// The query vector as comma-separated numbers
    #[arg(long)]
    vector: Option<String>,
    /// Run every query of a JSONL file (`text` or `embedding`, and options per line)
    #[arg(long, conflicts_with_all = ["query", "vector"])]
    batch: Option<PathBuf>,
    /// Layer (repeatable) [default: all]
    #[arg(long = "layer")]
    layers: Vec<String>,
    /// Required tag (repeatable)
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Only this project
    #[arg(long)]
    project: Option<String>,
    /// Only this session
    #[arg(long)]
    session: Option<String>,
    /// Only records from this time on (RFC 3339)
    #[arg(long)]
    since: Option<String>,
    /// Only records up to this time (RFC 3339)
    #[arg(long)]
    until: Option<String>,
    /// Results
    #[arg(long, short = 'k', default_value_t = 10)]
    top_k: usize,
    /// Minimum cosine similarity (the BM25 score with --mode keyword)
    #[arg(long)]
    threshold: Option<f32>,
    /// vector (by meaning), keyword (by words, BM25; needs no embedder) or hybrid (both,
    /// fused). With QUERY and --vector, the vector is the query's embedding.
    #[arg(long, default_value = "hybrid")]
    mode: String,
    /// Show each hit's vector score, keyword score and fused rank
    #[arg(long)]
    explain: bool,
}

#[derive(Args, Debug)]
struct LogArgs {
    /// First sequence
    #[arg(long)]
    from_seq: Option<u64>,
    /// Last sequence (inclusive)
    #[arg(long)]
    to_seq: Option<u64>,
    /// From this time (RFC 3339)
    #[arg(long)]
    since: Option<String>,
    /// Up to this time, inclusive (RFC 3339)
    #[arg(long)]
    until: Option<String>,
    /// Only events that name this record id
    #[arg(long)]
    id: Option<String>,
    /// Only these event types (inserted, accessed, rated, promoted, expired, deleted,
    /// superseded, checkpointed), comma-separated
    #[arg(long = "type", value_delimiter = ',')]
    types: Vec<String>,
    /// At most this many events
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to_time", "to_seq"])))]
struct RestoreArgs {
    /// The store or backup to restore from (only read)
    #[arg(long)]
    from: PathBuf,
    /// Restore every event committed at or before this time (RFC 3339), inclusive
    #[arg(long)]
    to_time: Option<String>,
    /// Restore every event up to this sequence, inclusive
    #[arg(long)]
    to_seq: Option<u64>,
    /// New store directory (must not exist, or be empty)
    #[arg(long)]
    into: PathBuf,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ExportFormat {
    Jsonl,
    Markdown,
}

/// Dies quietly on a closed pipe (`magray-mem log | head`) like other Unix tools, instead of
/// panicking in `println!`.
#[allow(unsafe_code)]
fn default_sigpipe() {
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE and no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        // Library log lines go nowhere unless asked for; the CLI prints its own messages.
        eprintln!("note: RUST_LOG is not read by magray-mem; its messages are printed directly");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(cmd::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let locked = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<magray_memory::Error>(),
                    Some(magray_memory::Error::Locked { .. })
                )
            });
            ExitCode::from(if locked { 4 } else { 1 })
        }
    }
}
