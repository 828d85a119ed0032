//! The file formats below the projections: the store's own files (MANIFEST, LOCK), vector
//! chunks, the record table and its slot index, the key index, and the checks they share
//! (block sums, checked maps). Everything here reads and writes bytes; what the bytes mean
//! to a search lives above, in `projection` and `snapshot`.

pub(crate) mod files;
pub(crate) mod keys;
pub(crate) mod records;
pub(crate) mod slots;
pub(crate) mod store_files;
pub(crate) mod sums;
pub(crate) mod vectors;
