//! `demo`: the main job on the default store, end to end.

use super::*;

/// The README's first command: this repository's docs into Assets, a short agent session
/// into Interact, three questions, a promotion run, and the status.
pub(super) async fn demo(dir: &Path) -> Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut docs: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md", "docs"]
        .iter()
        .map(|p| repo.join(p))
        .filter(|p| p.exists())
        .collect();
    if docs.is_empty() {
        docs.push(PathBuf::from("."));
    }
    println!("store: {}\n", dir.display());
    let m = store::open(dir, Need::Text).await?;
    let started = Instant::now();
    let r = ingest(&m, &docs, &repo, Layer::Assets, Some("magray-memory")).await?;
    println!(
        "1. ingested this repository's docs into assets: {} files, {} chunks, {} new records ({:.1} s)",
        r.files,
        r.chunks,
        r.added,
        started.elapsed().as_secs_f64()
    );
    let session = format!("demo-{}", now_us() / 1_000_000);
    let messages = [
        "User: our agent lost a day of notes after the laptop crashed; we need memory that survives a kill -9.",
        "Agent: I will keep every note in magray-memory; a write returns only after its fsync.",
        "User: we also need to go back to what the agent knew yesterday, before a bad import.",
        "Agent: noted — point-in-time restore from the event log can do that.",
        "User: the disk on the build box is tiny; what happens when it fills up?",
        "Agent: TODO check how the store behaves on a full disk and what error it gives.",
        "User: searches must stay fast as the memory grows to a million records.",
        "Agent: decision: keep session chatter in interact and promote only what keeps being used.",
    ];
    let records: Vec<NewRecord> = messages
        .iter()
        .map(|t| {
            NewRecord::text(*t)
                .layer(Layer::Interact)
                .kind("message")
                .session(session.clone())
                .project("magray-memory")
        })
        .collect();
    m.store_batch(records).await?;
    println!(
        "2. played an agent session into interact: {} messages (session {session})",
        messages.len()
    );
    println!("3. searched:");
    for q in [
        "how does the store recover after a crash?",
        "restore the memory as it was yesterday",
        "what happens when the disk is full?",
    ] {
        let o = SearchOptions::top_k(3).asked_by(Some(&session), Some("magray-memory"));
        let hits = m.search_text(q, &o).await?;
        println!("\n   \"{q}\"");
        for h in &hits {
            let text: String = h.record.text.replace('\n', " ").chars().take(100).collect();
            println!("   {:.3}  {:<9} {text}", h.score, h.layer.name());
        }
    }
    m.flush_accesses().await?;
    let p = m.promote().await?;
    println!(
        "\n4. promotion run ({} promoter, model v{}): {} scored, {} promoted to insights, {} to assets",
        p.promoter, p.model_version, p.scored, p.promoted[0], p.promoted[1]
    );
    let s = m.stats();
    println!(
        "5. status: interact {} · insights {} · assets {} records; log at sequence {}; embedding cache hit rate {:.0}%",
        s.layers[0].records,
        s.layers[1].records,
        s.layers[2].records,
        s.last_seq,
        s.embedder.as_ref().map_or(0.0, |e| e.hit_rate() * 100.0)
    );
    m.close().await?;
    println!("\nnext: magray-mem status · magray-mem search \"…\" · magray-mem log --type promoted · magray-mem backup DIR");
    Ok(())
}
