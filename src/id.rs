//! Record ids: UUIDv7, time-ordered, shown in the usual hyphenated form.

use std::fmt;

/// A record id: a UUIDv7 (time-ordered), shown in the usual hyphenated form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(pub [u8; 16]);

impl RecordId {
    pub(crate) fn new_v7() -> RecordId {
        RecordId(*uuid::Uuid::now_v7().as_bytes())
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_bytes(self.0).hyphenated(), f)
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({self})")
    }
}
