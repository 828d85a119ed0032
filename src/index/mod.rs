//! The vector index: distances, the HNSW builder the indexer thread inserts into, the frozen
//! graphs searches walk, and the on-disk graph dumps (read whole or searched in place).
//! Below it: `disk` (the vectors it reads); above it: the projections that own one graph per
//! layer.

pub(crate) mod distance;
pub(crate) mod dump_graph;
pub(crate) mod frozen;
pub(crate) mod hnsw;
