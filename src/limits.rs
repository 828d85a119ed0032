//! Bounds every configuration and every on-disk header is checked against: one place, so the
//! config check and the readers agree.

/// Largest M: level 0 holds up to 2M links, counted in one byte per node.
pub(crate) const MAX_M: usize = 127;
/// Largest HNSW candidate list (`ef_construction`, `ef_search`, a scaled beam, a dump's).
pub(crate) const MAX_EF: usize = 4096;
/// Widest vector a store may have (`MEMORY_DIMENSION`).
pub(crate) const MAX_DIMENSION: usize = 16_384;
