//! Frames: the unit the log stores. One frame = one caller's atomic batch of events.
//!
//! ```text
//! offset size field
//!  0     4    magic            b"MGEV"
//!  4     2    format version   u16 LE (FRAME_FORMAT_VERSION)
//!  6     2    flags            u16 LE, must be 0
//!  8     8    first_seq        u64 LE, sequence of the first event
//! 16     4    count            u32 LE, number of events (>= 1)
//! 20     4    payload_len      u32 LE
//! 24     4    payload_crc      u32 LE, crc32 (IEEE, crc32fast) of the payload
//! 28     4    header_crc       u32 LE, crc32 of bytes 0..28 (checks the length before it is trusted)
//! 32     ...  payload          rkyv `Batch`
//! ```
//!
//! Decoding checks, in order: length, magic, header crc, version, flags, payload length bound,
//! payload crc, then rkyv's checked `access` on a 16-byte aligned copy, then that the events'
//! sequences match the header. Never unchecked access on disk bytes.

use crate::event::{Batch, Envelope, EVENT_FORMAT_VERSION};
use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

/// Frame magic.
pub const FRAME_MAGIC: [u8; 4] = *b"MGEV";
/// Version of the frame layout. Changelog:
/// - 1: initial layout (32-byte header, rkyv payload of event format 1).
pub const FRAME_FORMAT_VERSION: u16 = 1;
/// Size of the frame header.
pub const FRAME_HEADER_LEN: usize = 32;
/// Largest payload a frame may declare (256 MiB). Checked before anything is allocated.
pub const MAX_FRAME_PAYLOAD: usize = 256 << 20;

const _: () = assert!(FRAME_HEADER_LEN == 4 + 2 + 2 + 8 + 4 + 4 + 4 + 4);
const _: () = assert!(EVENT_FORMAT_VERSION == FRAME_FORMAT_VERSION);

/// Why a frame failed to decode. `offset` is relative to the start of the frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    /// Offset within the frame of the bad field.
    pub offset: u64,
    /// What was wrong.
    pub kind: FrameErrorKind,
}

/// Kinds of frame failure.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameErrorKind {
    /// A checksum did not match.
    Checksum {
        /// Stored checksum.
        expected: u32,
        /// Computed checksum.
        got: u32,
    },
    /// A structural problem.
    Malformed(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            FrameErrorKind::Checksum { expected, got } => write!(
                f,
                "checksum mismatch at frame offset {}: stored {expected:#010x}, computed {got:#010x}",
                self.offset
            ),
            FrameErrorKind::Malformed(reason) => {
                write!(f, "malformed frame at frame offset {}: {reason}", self.offset)
            }
        }
    }
}

fn malformed(offset: u64, reason: impl Into<String>) -> FrameError {
    FrameError {
        offset,
        kind: FrameErrorKind::Malformed(reason.into()),
    }
}

/// Summary of a frame's header, readable without decoding the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Sequence of the first event.
    pub first_seq: u64,
    /// Number of events.
    pub count: u32,
    /// Payload length in bytes.
    pub payload_len: u32,
}

impl FrameHeader {
    /// Sequence of the last event.
    pub fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count) - 1
    }
}

/// Encodes one batch. `events` must be non-empty with contiguous sequences; a batch whose
/// payload would exceed [`MAX_FRAME_PAYLOAD`] is refused.
pub fn encode(events: &[Envelope]) -> Result<Vec<u8>, crate::Error> {
    assert!(!events.is_empty(), "a frame holds at least one event");
    debug_assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let batch = Batch {
        events: events.to_vec(),
    };
    let payload = match rkyv::to_bytes::<BoxedError>(&batch) {
        Ok(bytes) => bytes,
        // Serialising plain owned data into a Vec cannot fail except on allocation failure.
        Err(e) => panic!("rkyv serialisation of an in-memory batch failed: {e}"),
    };
    if payload.len() > MAX_FRAME_PAYLOAD {
        return Err(crate::Error::InvalidBatch(format!(
            "batch encodes to {} bytes, above the {MAX_FRAME_PAYLOAD}-byte frame limit; split it",
            payload.len()
        )));
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&FRAME_MAGIC);
    out.extend_from_slice(&FRAME_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&events[0].seq.to_le_bytes());
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    let header_crc = crc32fast::hash(&out[..28]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Validates a frame header (magic, header crc, version, flags, length bound).
pub fn decode_header(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Err(malformed(
            0,
            format!(
                "{} bytes is shorter than the {FRAME_HEADER_LEN}-byte header",
                bytes.len()
            ),
        ));
    }
    if bytes[0..4] != FRAME_MAGIC {
        return Err(malformed(0, format!("bad magic {:02x?}", &bytes[0..4])));
    }
    let stored = u32_at(bytes, 28);
    let computed = crc32fast::hash(&bytes[..28]);
    if stored != computed {
        return Err(FrameError {
            offset: 28,
            kind: FrameErrorKind::Checksum {
                expected: stored,
                got: computed,
            },
        });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FRAME_FORMAT_VERSION {
        return Err(malformed(
            4,
            format!("unsupported frame format version {version} (this build reads {FRAME_FORMAT_VERSION})"),
        ));
    }
    let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
    if flags != 0 {
        return Err(malformed(6, format!("unknown flags {flags:#06x}")));
    }
    let header = FrameHeader {
        first_seq: u64_at(bytes, 8),
        count: u32_at(bytes, 16),
        payload_len: u32_at(bytes, 20),
    };
    if header.count == 0 {
        return Err(malformed(16, "frame declares zero events"));
    }
    if header.first_seq == 0
        || header
            .first_seq
            .checked_add(u64::from(header.count))
            .is_none()
    {
        return Err(malformed(
            8,
            format!("invalid first sequence {}", header.first_seq),
        ));
    }
    if header.payload_len as usize > MAX_FRAME_PAYLOAD {
        return Err(malformed(
            20,
            format!(
                "payload length {} exceeds the {MAX_FRAME_PAYLOAD}-byte limit",
                header.payload_len
            ),
        ));
    }
    Ok(header)
}

/// Decodes a whole frame; `bytes` must be exactly one frame.
pub fn decode(bytes: &[u8]) -> Result<(FrameHeader, Vec<Envelope>), FrameError> {
    let header = decode_header(bytes)?;
    let payload = &bytes[FRAME_HEADER_LEN..];
    if payload.len() != header.payload_len as usize {
        return Err(malformed(
            20,
            format!(
                "header declares {} payload bytes but the frame holds {}",
                header.payload_len,
                payload.len()
            ),
        ));
    }
    let stored = u32_at(bytes, 24);
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(FrameError {
            offset: FRAME_HEADER_LEN as u64,
            kind: FrameErrorKind::Checksum {
                expected: stored,
                got: computed,
            },
        });
    }
    // rkyv needs aligned bytes; disk bytes (inside okaywal chunks) are not.
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    let archived = rkyv::access::<rkyv::Archived<Batch>, BoxedError>(&aligned).map_err(|e| {
        malformed(
            FRAME_HEADER_LEN as u64,
            format!("payload failed validation: {e}"),
        )
    })?;
    let batch: Batch = rkyv::deserialize::<Batch, BoxedError>(archived).map_err(|e| {
        malformed(
            FRAME_HEADER_LEN as u64,
            format!("payload failed to deserialise: {e}"),
        )
    })?;
    if batch.events.len() != header.count as usize {
        return Err(malformed(
            16,
            format!(
                "header declares {} events, payload holds {}",
                header.count,
                batch.events.len()
            ),
        ));
    }
    for (i, env) in batch.events.iter().enumerate() {
        let want = header.first_seq + i as u64;
        if env.seq != want {
            return Err(malformed(
                FRAME_HEADER_LEN as u64,
                format!("event {i} has sequence {}, expected {want}", env.seq),
            ));
        }
    }
    Ok((header, batch.events))
}
