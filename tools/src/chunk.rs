//! Splitting files into records for `ingest`: markdown by headings, then by paragraphs; text
//! and source by blank-line blocks; each chunk at most [`MAX_CHARS`] characters and prefixed
//! with its file (and heading), so a hit says where it comes from.

use std::path::{Path, PathBuf};

/// Longest chunk, in characters (about 250–400 tokens: within the model's 256-token window
/// for prose, beyond it only for dense code, which the embedder truncates and counts).
pub const MAX_CHARS: usize = 1200;

/// File extensions ingested, and the record kind they get.
const KINDS: &[(&str, &str)] = &[
    ("md", "doc"),
    ("markdown", "doc"),
    ("txt", "doc"),
    ("rst", "doc"),
    ("rs", "code"),
    ("py", "code"),
    ("toml", "code"),
    ("yaml", "code"),
    ("yml", "code"),
    ("json", "code"),
    ("js", "code"),
    ("ts", "code"),
    ("go", "code"),
    ("c", "code"),
    ("h", "code"),
    ("cpp", "code"),
    ("java", "code"),
    ("sh", "code"),
];

/// Directories never walked into.
const SKIP_DIRS: &[&str] = &["target", "node_modules", "models", "__pycache__"];

/// The record kind for a file, if it is ingested.
pub fn kind_of(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    KINDS.iter().find(|(e, _)| *e == ext).map(|(_, k)| *k)
}

/// Every ingestible file under `paths` (files as given; directories walked, skipping hidden
/// entries and build output), sorted.
pub fn files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} does not exist", p.display()),
            ));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let p = e.path();
        if e.file_type()?.is_dir() {
            if !SKIP_DIRS.contains(&name.as_str()) {
                walk(&p, out)?;
            }
        } else if kind_of(&p).is_some() {
            out.push(p);
        }
    }
    Ok(())
}

/// Tags from a path: its directory names and its extension.
pub fn tags(path: &Path) -> Vec<String> {
    let mut t: Vec<String> = path
        .parent()
        .into_iter()
        .flat_map(|p| p.components())
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_string_lossy().to_lowercase()),
            _ => None,
        })
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(e) = path.extension() {
        t.push(e.to_string_lossy().to_lowercase());
    }
    t.dedup();
    t
}

/// Splits a file's text into chunks, each starting with `[label]` (and the heading, for
/// markdown).
pub fn chunks(label: &str, text: &str, markdown: bool) -> Vec<String> {
    let mut out = Vec::new();
    let sections: Vec<(String, String)> = if markdown {
        let mut s = Vec::new();
        let (mut head, mut body) = (String::new(), String::new());
        let mut fence = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                fence = !fence;
            }
            if !fence && line.starts_with('#') {
                if !body.trim().is_empty() || !head.is_empty() {
                    s.push((head.clone(), std::mem::take(&mut body)));
                }
                head = line.trim().to_string();
                body.clear();
            } else {
                body.push_str(line);
                body.push('\n');
            }
        }
        s.push((head, body));
        s
    } else {
        vec![(String::new(), text.to_string())]
    };
    for (head, body) in sections {
        let prefix = if head.is_empty() {
            format!("[{label}]\n")
        } else {
            format!("[{label}] {head}\n")
        };
        let room = MAX_CHARS.saturating_sub(prefix.chars().count()).max(200);
        let mut cur = String::new();
        let mut push = |cur: &mut String| {
            if !cur.trim().is_empty() {
                out.push(format!("{prefix}{}", cur.trim_end()));
            }
            cur.clear();
        };
        for para in body.split("\n\n") {
            let para = para.trim_matches('\n');
            if para.trim().is_empty() {
                continue;
            }
            if cur.chars().count() + para.chars().count() + 2 > room {
                push(&mut cur);
            }
            if para.chars().count() > room {
                // A long block: by lines, then by characters for a very long line.
                for line in para.lines() {
                    if cur.chars().count() + line.chars().count() + 1 > room {
                        push(&mut cur);
                    }
                    // Wrap at spaces; only a single word longer than a chunk is cut.
                    let mut words: Vec<String> = Vec::new();
                    for w in line.split_inclusive(' ') {
                        let chars: Vec<char> = w.chars().collect();
                        words.extend(chars.chunks(room).map(|c| c.iter().collect()));
                    }
                    for w in words {
                        if cur.chars().count() + w.chars().count() + 1 > room {
                            push(&mut cur);
                        }
                        cur.push_str(&w);
                    }
                    cur.push('\n');
                }
            } else {
                if !cur.is_empty() {
                    cur.push('\n');
                }
                cur.push_str(para);
                cur.push('\n');
            }
        }
        push(&mut cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_splits_by_heading_and_keeps_chunks_small() {
        let long = "word ".repeat(400);
        let text =
            format!("intro\n\n# One\nalpha\n\n## Two\n{long}\n\n```\n# not a heading\n```\n");
        let c = chunks("a.md", &text, true);
        assert!(c[0].starts_with("[a.md]\nintro"), "{c:?}");
        assert!(c[1].starts_with("[a.md] # One\nalpha"), "{c:?}");
        assert!(
            c.iter().skip(2).all(|x| x.starts_with("[a.md] ## Two")),
            "{c:?}"
        );
        assert!(
            c.iter().any(|x| x.contains("# not a heading")),
            "fenced code stays put"
        );
        assert!(c.iter().all(|x| x.chars().count() <= MAX_CHARS), "{c:?}");
        let words: usize = c.iter().map(|x| x.matches("word").count()).sum();
        assert_eq!(words, 400, "nothing lost");
    }

    #[test]
    fn tags_come_from_directories_and_extension() {
        assert_eq!(tags(Path::new("docs/api/format.md")), ["docs", "api", "md"]);
        assert_eq!(kind_of(Path::new("x.RS")), Some("code"));
        assert_eq!(kind_of(Path::new("x.bin")), None);
    }
}
