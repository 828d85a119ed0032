#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! Property tests: frames round-trip; any single bit flip is detected; arbitrary bytes
//! given to any decoder return an error, never panic.

use magray_wal::frame::{self, FRAME_HEADER_LEN};
use magray_wal::*;
use proptest::prelude::*;

fn id() -> impl Strategy<Value = Id> {
    any::<[u8; 16]>()
}

fn layer() -> impl Strategy<Value = Layer> {
    prop_oneof![
        Just(Layer::Interact),
        Just(Layer::Insights),
        Just(Layer::Assets)
    ]
}

fn event() -> impl Strategy<Value = Event> {
    let inserted = (
        id(),
        layer(),
        ".{0,12}",
        ".{0,200}",
        prop::collection::vec(any::<f32>(), 0..48),
        prop::collection::vec(".{0,8}", 0..4),
        prop::option::of(".{0,10}"),
        prop::option::of(".{0,10}"),
        prop::collection::vec(id(), 0..3),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                id,
                layer,
                kind,
                text,
                embedding,
                tags,
                project,
                session,
                refs,
                content_hash,
                ts_us,
            )| {
                Event::Inserted(Inserted {
                    id,
                    layer,
                    kind,
                    text,
                    embedding,
                    tags,
                    project,
                    session,
                    refs,
                    content_hash,
                    ts_us,
                })
            },
        );
    let source = prop_oneof![
        Just(AccessSource::SearchHit),
        Just(AccessSource::Get),
        Just(AccessSource::Explicit)
    ];
    let accessed = (
        source,
        prop::option::of(".{0,6}"),
        prop::option::of(".{0,6}"),
        prop::collection::vec((id(), any::<u16>(), any::<f32>()), 0..6),
    )
        .prop_map(|(source, session, project, hits)| {
            Event::Accessed(Accessed {
                source,
                session,
                project,
                hits: hits
                    .into_iter()
                    .map(|(id, rank, score)| Hit { id, rank, score })
                    .collect(),
            })
        });
    let promoted =
        prop::collection::vec((id(), layer(), layer(), any::<f32>(), any::<u32>()), 0..5).prop_map(
            |v| {
                Event::Promoted(
                    v.into_iter()
                        .map(|(id, from, to, score, model_version)| Promotion {
                            id,
                            from,
                            to,
                            score,
                            model_version,
                        })
                        .collect(),
                )
            },
        );
    let reason = prop_oneof![
        Just(ExpiryReason::Ttl),
        Just(ExpiryReason::Capacity),
        Just(ExpiryReason::Manual)
    ];
    prop_oneof![
        inserted,
        accessed,
        (id(), any::<f32>()).prop_map(|(id, rating)| Event::Rated { id, rating }),
        promoted,
        (prop::collection::vec(id(), 0..5), reason)
            .prop_map(|(ids, reason)| Event::Expired { ids, reason }),
        id().prop_map(|id| Event::Deleted { id }),
        (id(), id()).prop_map(|(old, new)| Event::Superseded { old, new }),
        any::<u64>().prop_map(|snapshot_seq| Event::Checkpointed { snapshot_seq }),
    ]
}

fn envelopes() -> impl Strategy<Value = Vec<Envelope>> {
    (
        1u64..u64::MAX / 2,
        any::<u64>(),
        prop::collection::vec(event(), 1..6),
    )
        .prop_map(|(first, ts, events)| {
            events
                .into_iter()
                .enumerate()
                .map(|(i, event)| Envelope {
                    seq: first + i as u64,
                    ts_us: ts,
                    event,
                })
                .collect()
        })
}

/// Equality that treats NaN payloads bit-for-bit (events hold arbitrary f32s).
fn same(a: &[Envelope], b: &[Envelope]) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn frame_round_trips(envs in envelopes()) {
        let bytes = encode_envs(&envs);
        let (header, decoded) = frame::decode(&bytes).unwrap();
        prop_assert_eq!(header.first_seq, envs[0].seq);
        prop_assert_eq!(header.count as usize, envs.len());
        prop_assert!(same(&envs, &decoded));
    }

    #[test]
    fn any_single_bit_flip_is_detected(envs in envelopes(), pick in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = encode_envs(&envs);
        let at = pick.index(bytes.len());
        bytes[at] ^= 1 << bit;
        prop_assert!(frame::decode(&bytes).is_err(), "flip at byte {} bit {} went unnoticed", at, bit);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_frame_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = frame::decode(&bytes);
        let _ = frame::decode_header(&bytes);
    }

    /// Arbitrary payloads behind a *valid* header and crc reach rkyv's checker: it must
    /// reject (or accept) them without panicking.
    #[test]
    fn arbitrary_payload_with_valid_crc_never_panics(payload in prop::collection::vec(any::<u8>(), 0..512), first in 1u64..1000, count in 1u32..4) {
        let mut out = Vec::new();
        out.extend_from_slice(&frame::FRAME_MAGIC);
        out.extend_from_slice(&frame::FRAME_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&7u64.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast_hash(&payload).to_le_bytes());
        let h = crc32fast_hash(&out[..36]);
        out.extend_from_slice(&h.to_le_bytes());
        prop_assert_eq!(out.len(), FRAME_HEADER_LEN);
        out.extend_from_slice(&payload);
        let _ = frame::decode(&out);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_archive_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = archive::decode(std::path::Path::new("fuzz.mwa"), &bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_segment_scanner(tail in prop::collection::vec(any::<u8>(), 0..512)) {
        let info = inspect::segment_version_info();
        let mut bytes = b"okw\0".to_vec();
        bytes.push(info.len() as u8);
        bytes.extend_from_slice(&info);
        bytes.extend_from_slice(&tail);
        let _ = inspect::scan_segment_bytes(&bytes);
        let _ = inspect::scan_segment_bytes(&tail);
    }
}

fn encode_envs(envs: &[Envelope]) -> Vec<u8> {
    let events = envs.iter().map(|e| e.event.clone()).collect();
    frame::encode(envs[0].seq, envs[0].ts_us, events).unwrap()
}

fn crc32fast_hash(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(b);
    h.finalize()
}
