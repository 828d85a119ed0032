//! Frames: the unit the log stores. One frame = one caller's atomic batch of events.
//!
//! ```text
//! offset size field
//!  0     4    magic            b"MGEV"
//!  4     2    format version   u16 LE (FRAME_FORMAT_VERSION)
//!  6     2    flags            u16 LE, must be 0
//!  8     8    first_seq        u64 LE, sequence of the first event (event i has first_seq + i)
//! 16     8    ts_us            u64 LE, commit time of the batch, µs since the Unix epoch (UTC)
//! 24     4    count            u32 LE, number of events (>= 1)
//! 28     4    payload_len      u32 LE
//! 32     4    payload_crc      u32 LE, crc32 (IEEE, crc32fast) of the payload
//! 36     4    header_crc       u32 LE, crc32 of bytes 0..36 (checks the length before it is trusted)
//! 40     ...  payload          rkyv `Batch { events: Vec<Event> }`
//! ```
//!
//! Sequence and timestamp live in the header, so a caller's thread can serialise and
//! checksum its payload before it reaches the single writer thread, which only stamps the
//! 40-byte header (Kafka's record batches use the same base-offset idea).
//!
//! Decoding checks, in order: length, magic, header crc, version, flags, payload length bound,
//! payload crc, then rkyv's checked `access` on a 16-byte aligned copy, then that the event
//! count matches the header. Never unchecked access on disk bytes.

use crate::event::{Batch, Envelope, Event, EVENT_FORMAT_VERSION};
use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

/// Frame magic.
pub const FRAME_MAGIC: [u8; 4] = *b"MGEV";
/// Version of the frame layout. Changelog:
/// - 1: initial layout (40-byte header with base sequence and timestamp, rkyv payload of
///   event format 1).
pub const FRAME_FORMAT_VERSION: u16 = 1;
/// Size of the frame header.
pub const FRAME_HEADER_LEN: usize = 40;
/// Largest payload a frame may declare (256 MiB). Checked before anything is allocated.
pub const MAX_FRAME_PAYLOAD: usize = 256 << 20;

const _: () = assert!(FRAME_HEADER_LEN == 4 + 2 + 2 + 8 + 8 + 4 + 4 + 4 + 4);
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
    /// Commit timestamp of the batch (µs).
    pub ts_us: u64,
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

/// A serialised, checksummed batch waiting for its sequence and timestamp.
#[derive(Debug, Clone)]
pub struct Payload {
    bytes: Vec<u8>,
    count: u32,
    crc: u32,
}

impl Payload {
    /// Serialises a batch (on the caller's thread). Refuses an empty batch or one whose
    /// payload would exceed [`MAX_FRAME_PAYLOAD`].
    pub fn encode(events: Vec<Event>) -> Result<Payload, crate::Error> {
        Self::encode_keep(events).map(|(p, _)| p)
    }

    /// Like [`Payload::encode`], and hands the events back (the engine applies them to its
    /// projections after the append, without cloning every embedding).
    pub fn encode_keep(events: Vec<Event>) -> Result<(Payload, Vec<Event>), crate::Error> {
        if events.is_empty() {
            return Err(crate::Error::InvalidBatch(
                "a batch needs at least one event".into(),
            ));
        }
        let count = u32::try_from(events.len())
            .map_err(|_| crate::Error::InvalidBatch("too many events in one batch".into()))?;
        let batch = Batch { events };
        let bytes = match rkyv::to_bytes::<BoxedError>(&batch) {
            Ok(b) => b.into_vec(),
            // Serialising plain owned data into a Vec fails only on allocation failure.
            Err(e) => panic!("rkyv serialisation of an in-memory batch failed: {e}"),
        };
        if bytes.len() > MAX_FRAME_PAYLOAD {
            return Err(crate::Error::InvalidBatch(format!(
                "batch encodes to {} bytes, above the {MAX_FRAME_PAYLOAD}-byte frame limit; split it",
                bytes.len()
            )));
        }
        let crc = crc32fast::hash(&bytes);
        Ok((Payload { bytes, count, crc }, batch.events))
    }

    /// Number of events.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Serialised bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The header that places this payload at `first_seq`, committed at `ts_us`.
    pub fn header(&self, first_seq: u64, ts_us: u64) -> [u8; FRAME_HEADER_LEN] {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h[0..4].copy_from_slice(&FRAME_MAGIC);
        h[4..6].copy_from_slice(&FRAME_FORMAT_VERSION.to_le_bytes());
        h[8..16].copy_from_slice(&first_seq.to_le_bytes());
        h[16..24].copy_from_slice(&ts_us.to_le_bytes());
        h[24..28].copy_from_slice(&self.count.to_le_bytes());
        h[28..32].copy_from_slice(&(self.bytes.len() as u32).to_le_bytes());
        h[32..36].copy_from_slice(&self.crc.to_le_bytes());
        let hcrc = crc32fast::hash(&h[..36]);
        h[36..40].copy_from_slice(&hcrc.to_le_bytes());
        h
    }
}

/// Encodes a whole frame: `events` placed at `first_seq`, committed at `ts_us`.
pub fn encode(first_seq: u64, ts_us: u64, events: Vec<Event>) -> Result<Vec<u8>, crate::Error> {
    let p = Payload::encode(events)?;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + p.bytes.len());
    out.extend_from_slice(&p.header(first_seq, ts_us));
    out.extend_from_slice(&p.bytes);
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
    let stored = u32_at(bytes, 36);
    let computed = crc32fast::hash(&bytes[..36]);
    if stored != computed {
        return Err(FrameError {
            offset: 36,
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
        ts_us: u64_at(bytes, 16),
        count: u32_at(bytes, 24),
        payload_len: u32_at(bytes, 28),
    };
    if header.count == 0 {
        return Err(malformed(24, "frame declares zero events"));
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
            28,
            format!(
                "payload length {} exceeds the {MAX_FRAME_PAYLOAD}-byte limit",
                header.payload_len
            ),
        ));
    }
    Ok(header)
}

/// Checks a whole frame's header and payload checksum without deserialising the events
/// (for bytes that were fully decoded moments ago, e.g. when archiving a scanned segment).
pub fn check_crc(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    let header = decode_header(bytes)?;
    let payload = &bytes[FRAME_HEADER_LEN..];
    if payload.len() != header.payload_len as usize {
        return Err(malformed(
            28,
            format!(
                "header declares {} payload bytes but the frame holds {}",
                header.payload_len,
                payload.len()
            ),
        ));
    }
    let stored = u32_at(bytes, 32);
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
    Ok(header)
}

/// Decodes a whole frame; `bytes` must be exactly one frame.
pub fn decode(bytes: &[u8]) -> Result<(FrameHeader, Vec<Envelope>), FrameError> {
    let header = check_crc(bytes)?;
    let payload = &bytes[FRAME_HEADER_LEN..];
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
            24,
            format!(
                "header declares {} events, payload holds {}",
                header.count,
                batch.events.len()
            ),
        ));
    }
    let events = batch
        .events
        .into_iter()
        .enumerate()
        .map(|(i, event)| Envelope {
            seq: header.first_seq + i as u64,
            ts_us: header.ts_us,
            event,
        })
        .collect();
    Ok((header, events))
}

// Kept beside the frame types, so that `error` does not import `frame` (which imports it).
impl crate::Error {
    /// Builds a corruption error from a frame failure at `base` in `file`.
    pub(crate) fn from_frame(
        file: impl Into<std::path::PathBuf>,
        base: u64,
        e: FrameError,
    ) -> Self {
        let file = file.into();
        let offset = base + e.offset;
        match e.kind {
            FrameErrorKind::Checksum { expected, got } => crate::Error::ChecksumMismatch {
                file,
                offset,
                expected,
                got,
            },
            FrameErrorKind::Malformed(reason) => crate::Error::Corrupted {
                file,
                offset,
                reason,
            },
        }
    }
}

/// Stamped into every okaywal segment header (`version_info`).
pub(crate) fn version_info() -> Vec<u8> {
    format!("magray-wal frame={FRAME_FORMAT_VERSION} event={EVENT_FORMAT_VERSION}").into_bytes()
}
