//! The house rule of ARCHITECTURE.md: the top-level modules of `src/` and `wal/src/` import
//! each other in one direction only. This reads the `crate::…` and `super::…` paths of every
//! non-test source file, folds them to the folder level (`src/disk/vectors.rs` is `disk`,
//! `src/error.rs` is `error`) and fails, naming the files and the names they take, when the
//! graph has a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One arrow: module `from` uses module `to`, seen in `file` as `name`.
#[derive(Debug, Clone)]
struct Use {
    file: PathBuf,
    name: String,
}

type Graph = BTreeMap<String, BTreeMap<String, Vec<Use>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            // Test modules kept in their own folder are not part of the layering.
            if name != "tests" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" {
            out.push(path);
        }
    }
}

/// The source without comments and without inline `#[cfg(test)] mod … { … }` blocks.
fn production_code(src: &str) -> String {
    let lines: Vec<&str> = src.lines().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        i += 1;
        if t.starts_with("//") {
            continue;
        }
        if t.starts_with("#[cfg(test)]") {
            // Past further attributes (`#[allow(…)]`) to the item the cfg applies to.
            let mut j = i;
            while j < lines.len() && lines[j].trim_start().starts_with("#[") {
                j += 1;
            }
            let next = lines.get(j).map(|l| l.trim()).unwrap_or("");
            let is_mod = ["mod ", "pub mod ", "pub(crate) mod "]
                .iter()
                .any(|p| next.starts_with(p));
            if is_mod && next.ends_with('{') {
                let mut depth = 0i64;
                while j < lines.len() {
                    let l = lines[j];
                    j += 1;
                    depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
                    if depth <= 0 {
                        break;
                    }
                }
                i = j;
                continue;
            }
        }
        let code = match t.find("//") {
            Some(k) if !t[..k].contains('"') => &t[..k],
            _ => t,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The first segment of each path that follows `prefix` (`crate::`), expanding one level
/// of `{a, b::c}` groups.
fn first_segments(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `foo_crate::` is not `crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.push(item);
        } else {
            out.push(rest.to_string());
        }
    }
    out.iter()
        .filter_map(|s| {
            let s = s.trim_start();
            let end = s
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(s.len());
            (end > 0).then(|| s[..end].to_string())
        })
        .collect()
}

/// Names the crate root re-exports (`pub use module::{A, B}` in lib.rs), by module.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let code = production_code(lib).replace('\n', " ");
    for stmt in code.split(';') {
        let Some(path) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let path = path.trim();
        let module = path.split("::").next().unwrap_or("").to_string();
        let names = match path.find('{') {
            Some(i) => path[i + 1..].trim_end_matches('}').to_string(),
            None => path.rsplit("::").next().unwrap_or("").to_string(),
        };
        for name in names.split(',') {
            let name = name.trim().split(" as ").last().unwrap_or("").trim();
            if !name.is_empty() {
                out.insert(name.to_string(), module.clone());
            }
        }
    }
    out
}

fn module_graph(root: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let lib = std::fs::read_to_string(root.join("lib.rs")).expect("lib.rs");
    let reexports = root_reexports(&lib);
    let mut modules = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(root).expect("under root");
        let top = rel.components().next().expect("a component");
        let top = top.as_os_str().to_string_lossy();
        modules.insert(top.trim_end_matches(".rs").to_string());
    }
    let mut graph = Graph::new();
    for f in &files {
        let rel = f.strip_prefix(root).expect("under root");
        let parts: Vec<_> = rel
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        if parts == ["lib.rs"] {
            continue;
        }
        let from = parts[0].trim_end_matches(".rs").to_string();
        let src = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("read {f:?}: {e}"));
        let code = production_code(&src);
        let mut names = first_segments(&code, "crate::");
        // `super::x` in a folder's mod.rs is the crate root's `x`; elsewhere it stays inside
        // the folder.
        if parts.len() == 2 && parts[1] == "mod.rs" {
            names.extend(first_segments(&code, "super::"));
        }
        for name in names {
            let to = if modules.contains(&name) {
                name.clone()
            } else if let Some(m) = reexports.get(&name) {
                m.clone()
            } else {
                continue; // a crate-root item of lib.rs itself, or an external re-export
            };
            if to != from && modules.contains(&to) {
                graph
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .push(Use {
                        file: rel.to_path_buf(),
                        name,
                    });
            }
        }
    }
    graph
}

/// Strongly connected components with more than one module (Tarjan, iterative enough for
/// a few dozen nodes).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        if let Some(next) = t.g.get(v) {
            for w in next.keys() {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn describe(graph: &Graph, scc: &[String]) -> String {
    let mut s = format!("cycle between {}:\n", scc.join(", "));
    for from in scc {
        for (to, uses) in graph.get(from).into_iter().flatten() {
            if scc.contains(to) {
                let files: BTreeSet<String> = uses
                    .iter()
                    .map(|u| format!("{} ({})", u.file.display(), u.name))
                    .collect();
                let files: Vec<_> = files.into_iter().collect();
                s += &format!("  {from} -> {to}: {}\n", files.join(", "));
            }
        }
    }
    s
}

fn assert_acyclic(root: &Path) {
    let graph = module_graph(root);
    assert!(
        graph.len() > 1,
        "no module imports found under {}",
        root.display()
    );
    let found = cycles(&graph);
    let report: Vec<String> = found.iter().map(|c| describe(&graph, c)).collect();
    assert!(
        found.is_empty(),
        "{}: the folder-level import graph has a cycle (ARCHITECTURE.md names the allowed \
         direction):\n{}",
        root.display(),
        report.join("\n")
    );
}

#[test]
fn engine_modules_import_one_way() {
    assert_acyclic(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
}

#[test]
fn log_modules_import_one_way() {
    assert_acyclic(&Path::new(env!("CARGO_MANIFEST_DIR")).join("wal/src"));
}

#[test]
fn the_check_sees_a_cycle_when_there_is_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    std::fs::create_dir(root.join("disk")).expect("mkdir");
    std::fs::write(
        root.join("lib.rs"),
        "mod disk;\nmod index;\npub use index::Graph;\n",
    )
    .expect("write");
    std::fs::write(root.join("disk/mod.rs"), "mod table;\n").expect("write");
    std::fs::write(root.join("disk/table.rs"), "use crate::Graph;\n").expect("write");
    std::fs::write(
        root.join("index.rs"),
        "use crate::disk::table;\n#[cfg(test)]\nmod tests {\n    use crate::x;\n}\n",
    )
    .expect("write");
    let graph = module_graph(root);
    assert_eq!(
        cycles(&graph),
        vec![vec!["disk".to_string(), "index".to_string()]]
    );
    let text = describe(&graph, &cycles(&graph)[0]);
    assert!(text.contains("disk/table.rs (Graph)"), "{text}");
}
