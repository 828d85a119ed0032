//! LoCoMo's turns as `magray-mem import` JSONL on stdout, one record per turn in the same
//! text the `locomo` example stores (`<speaker> said, "<text>"`, see `locomo_data`), with its
//! conversation as the project and its LoCoMo session. `benches/realdata/import.sh` imports
//! them beside raw ONNX Runtime.
//!
//! ```sh
//! cargo run --release --example locomo_turns -- ../shared/bench/locomo/locomo-dev.json > turns.jsonl
//! ```
//! The data is CC BY-NC 4.0: write the output outside this repository.

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use std::io::Write;

// Only `sessions` is needed here; the questions are the other examples'.
#[allow(dead_code)]
#[path = "locomo_data/mod.rs"]
mod locomo_data;

fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow!("usage: locomo_turns LOCOMO_JSON"))?;
    let data: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading LoCoMo from {path}"))?,
    )
    .with_context(|| format!("{path} is not JSON"))?;
    let convs = data
        .as_array()
        .ok_or_else(|| anyhow!("{path}: expected a list of conversations"))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for c in convs {
        let project = c["sample_id"]
            .as_str()
            .ok_or_else(|| anyhow!("{path}: a conversation has no sample_id"))?;
        for (session, _, turns) in locomo_data::sessions(c)? {
            for (_, text) in turns {
                let line = json!({"text": text, "project": project, "session": session});
                writeln!(out, "{line}")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
