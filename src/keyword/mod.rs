//! Keyword search: words (tokenize.rs) and a BM25 inverted index over records in context
//! (index.rs), kept by the projections in log order and written into snapshots (file.rs).
//! Below it: `util`, `disk` (the file helpers); above it: `projection`, which owns one index.

mod file;
mod index;
mod tokenize;

pub(crate) use file::{decode, encode};
pub(crate) use index::{project_key, KeywordIndex, Scores, MAX_WINDOW};
