//! The chaos worker: a seeded random workload against the store in DIR, reporting every
//! operation as `P` (pending) before and `A` (acknowledged) after, flushed (see the crate
//! docs). Runs until killed. `chaos-worker DIR SEED`.

use anyhow::{anyhow, Context, Result};
use magray_chaos::{config, vector_for, Rng};
use magray_memory::{Memory, NewRecord, RecordId, SearchMode, SearchOptions};
use std::io::Write;

fn say(line: String) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Says why the worker stopped, typed for the harness: `E enospc` when the disk is full
/// (an `ENOSPC` anywhere in the error's chain), `E other <message>` otherwise.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let enospc = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.raw_os_error() == Some(28))
            });
            let kind = if enospc { "enospc" } else { "other" };
            let _ = say(format!("E {kind} {}", format!("{e:#}").replace('\n', " ")));
            eprintln!("{e:?}");
            std::process::ExitCode::from(1)
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or_else(|| anyhow!("usage: chaos-worker DIR SEED"))?;
    let seed: u64 = args
        .next()
        .ok_or_else(|| anyhow!("usage: chaos-worker DIR SEED"))?
        .parse()
        .context("SEED")?;
    let m = Memory::open(&dir, config()).await.context("open")?;
    say("READY".into())?;
    let mut rng = Rng::new(seed);
    let mut mine: Vec<RecordId> = m
        .records(None)
        .context("records")?
        .iter()
        .map(|r| r.id)
        .collect();
    for op in 0u64.. {
        let roll = rng.range(0, 99);
        let pick = |rng: &mut Rng, mine: &Vec<RecordId>| {
            (!mine.is_empty()).then(|| mine[rng.range(0, mine.len() as u64 - 1) as usize])
        };
        match roll {
            44 => {
                // ~200 KB of text: fills a test segment (256 KiB), so okaywal rotates and
                // checkpoints it and the archive is written right after (the Archive window).
                let pad = "a".repeat(2_000);
                let texts: Vec<String> = (0..100)
                    .map(|j| format!("w{seed}x{op}x{j}.{pad}"))
                    .collect();
                insert_texts(&m, op, "archive", &texts, &mut mine).await?;
            }
            0..=43 => {
                let n = rng.range(1, 8);
                // One word per record (`w7x12x3`): an exact keyword query names it alone.
                let texts: Vec<String> = (0..n).map(|j| format!("w{seed}x{op}x{j}")).collect();
                insert_texts(&m, op, "insert", &texts, &mut mine).await?;
            }
            45..=52 => {
                if let Some(id) = pick(&mut rng, &mine) {
                    mine.retain(|x| *x != id);
                    say(format!("P {op} delete {id}"))?;
                    match m.delete(id).await {
                        Ok(()) => say(format!("A {op}"))?,
                        // Expired by the lifecycle meanwhile: nothing to delete.
                        Err(magray_memory::Error::NotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            53..=57 => {
                if let Some(id) = pick(&mut rng, &mine) {
                    let text = format!("w{seed}x{op}x0");
                    say(format!("P {op} supersede {id} {text}"))?;
                    match m
                        .supersede(id, NewRecord::new(text.clone(), vector_for(&text)))
                        .await
                    {
                        Ok(new) => {
                            mine.retain(|x| *x != id);
                            mine.push(new);
                            say(format!("A {op} {new}"))?;
                        }
                        Err(magray_memory::Error::NotFound(_)) => mine.retain(|x| *x != id),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            58..=65 => {
                if let Some(id) = pick(&mut rng, &mine) {
                    let rating = rng.f64() as f32;
                    say(format!("P {op} rate {id} {rating}"))?;
                    match m.rate(id, rating).await {
                        Ok(()) => say(format!("A {op}"))?,
                        Err(magray_memory::Error::NotFound(_)) => mine.retain(|x| *x != id),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            66..=84 => {
                say(format!("P {op} search"))?;
                let text = format!("w{seed}x{}x0", rng.range(0, op));
                let q = vector_for(&text);
                // Every mode, so that kills land inside each (accesses are recorded).
                let mode = [SearchMode::Vector, SearchMode::Keyword, SearchMode::Hybrid]
                    [rng.range(0, 2) as usize];
                let o = SearchOptions {
                    mode,
                    ..SearchOptions::top_k(5)
                };
                m.search_hybrid(&text, &q, &o).await?;
                if let Some(id) = pick(&mut rng, &mine) {
                    let _ = m.get(id).await;
                }
                say(format!("A {op}"))?;
            }
            85..=90 => {
                say(format!("P {op} lifecycle"))?;
                let r = m.run_lifecycle().await?;
                say(format!("A {op} {} {}", r.promoted[0], r.expired_capacity))?;
            }
            91..=95 => {
                say(format!("P {op} checkpoint"))?;
                let s = m.checkpoint().await?;
                say(format!("A {op} {s}"))?;
            }
            96..=97 => {
                say(format!("P {op} optimize"))?;
                let s = m.optimize().await?;
                say(format!("A {op} {s}"))?;
            }
            _ => {
                let into =
                    std::path::Path::new(&dir).with_file_name(format!("restore-{seed}-{op}"));
                say(format!("P {op} restore {}", into.display()))?;
                let src = std::path::PathBuf::from(&dir);
                let target = magray_memory::backup::Target::End;
                let i = into.clone();
                tokio::task::spawn_blocking(move || {
                    magray_memory::backup::restore(&src, &i, target, &mut |_| {})
                })
                .await??;
                let _ = std::fs::remove_dir_all(&into);
                say(format!("A {op}"))?;
            }
        }
    }
    Ok(())
}

/// One batch insert reported as `P <op> <kind> <texts>` before and `A <op> <ids>` after.
async fn insert_texts(
    m: &Memory,
    op: u64,
    kind: &str,
    texts: &[String],
    mine: &mut Vec<RecordId>,
) -> Result<()> {
    say(format!("P {op} {kind} {}", texts.join(" ")))?;
    let batch = texts
        .iter()
        .map(|t| NewRecord::new(t.clone(), vector_for(t)))
        .collect();
    let ids = m.insert_batch(batch).await?;
    let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    say(format!("A {op} {}", list.join(" ")))?;
    mine.extend(ids);
    Ok(())
}
