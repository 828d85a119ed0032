//! Loading a snapshot into projections: the manifest, the record table (mapped unread from
//! format 6, decoded for format 2), slots, access statistics, key index, vector chunks and
//! graph dumps, each checked in full or block by block on first read ([`Check`]).

use super::*;

/// Maps the listed file `entry` of the snapshot in `dir` to read it in place (the key index and
/// the graph dumps). With [`Check::Blocks`] and its block sums listed (format 7 on) it is
/// mapped unread, each block checked on first read; otherwise checked in full now, and with
/// [`Check::Full`] its block sums (if listed) checked against it too.
pub(crate) fn map_in_place(
    dir: &Path,
    m: &ManifestBody,
    entry: &FileEntry,
    check: Check,
) -> Result<InPlace> {
    let sums = listed_sums(dir, m, entry)?;
    let path = dir.join(&entry.name);
    if let (Check::Blocks, Some(s)) = (check, sums) {
        if let Some(map) = map_for_blocks(dir, entry)? {
            let lazy = Lazy::new(read_sums(dir, s, entry.len)?);
            return Ok(InPlace::new(path, map, Some(lazy)));
        }
    }
    let map = map_checked(dir, entry)?;
    if check == Check::Full {
        check_listed_sums(dir, m, entry, &map)?;
    }
    Ok(InPlace::new(path, map, None))
}

/// The block sums file the manifest `m` lists for its file `entry` (from format 7 the key
/// index and each graph dump must have one).
pub(super) fn listed_sums<'m>(
    dir: &Path,
    m: &'m ManifestBody,
    entry: &FileEntry,
) -> Result<Option<&'m FileEntry>> {
    let name = sums::sums_name(&entry.name);
    match m.files.iter().find(|f| f.name == name) {
        None if m.format >= 7 => Err(Error::corrupted(
            dir.join("MANIFEST"),
            0,
            format!("{name} not listed"),
        )),
        sums => Ok(sums),
    }
}

/// Checks `bytes`, the whole listed file `entry` of the snapshot in `dir`, against its block
/// sums file where one is listed (read and checked against the manifest first).
pub(super) fn check_listed_sums(
    dir: &Path,
    m: &ManifestBody,
    entry: &FileEntry,
    bytes: &[u8],
) -> Result<()> {
    match listed_sums(dir, m, entry)? {
        Some(s) => sums::check_sums(
            bytes,
            &read_sums(dir, s, entry.len)?,
            &dir.join(&s.name),
            &dir.join(&entry.name),
        ),
        None => Ok(()),
    }
}

/// Whether `name` is a graph dump or its block sums: `hnsw.graph` (format 9 on) or a layer's
/// `hnsw-<layer>.graph` (formats 8 and older).
pub(crate) fn is_graph_file(name: &str) -> bool {
    name.starts_with("hnsw.") || name.starts_with("hnsw-")
}

/// Checks every graph dump file the manifest `m` of the snapshot in `dir` lists, in full: its
/// crc32, and from format 7 its block sums against it (what `verify` and backups check; a
/// load leaves a bad dump to the indexer, which rebuilds the graph).
pub(crate) fn check_dumps(dir: &Path, m: &ManifestBody) -> Result<()> {
    for f in m.files.iter().filter(|f| is_graph_file(&f.name)) {
        if m.files.iter().any(|s| s.name == sums::sums_name(&f.name)) {
            map_in_place(dir, m, f, Check::Full)?;
        } else {
            check_file(dir, f)?;
        }
    }
    Ok(())
}

/// A snapshot loaded into projections (graphs load later, in the background).
pub(crate) struct Loaded {
    pub(crate) projections: Projections,
    pub(crate) manifest: ManifestBody,
    /// The trained promoter the snapshot holds, if any.
    pub(crate) model: Option<PromoterModel>,
    /// The graph dump, mapped and checked, searchable in place (see [`map_graph`]); `None`
    /// without one or when it cannot be.
    pub(crate) graph: Option<Arc<MappedGraph>>,
}

/// How [`load`] checks the files it maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Every byte of every file, before load returns (tools, backups, and an open after
    /// damage was found), and each file's block sums against it.
    Full,
    /// A file with block sums is mapped unread: vector chunks (format 5 on), the record table
    /// (6 on), the key index and the graph dumps' level-0 links (7 on); each block is checked
    /// on first read and by the indexer (see `disk::vectors`). Every other file in full.
    Blocks,
}

/// Loads the snapshot in `dir`: validates the manifest and every non-graph file, decodes the
/// records and stats and maps the vector chunks (checked as `check` says); maps and checks
/// each HNSW dump to search it in place (a dump that fails that is left to the indexer, which
/// reports it).
pub(crate) fn load(dir: &Path, dim: usize, check: Check) -> Result<Loaded> {
    let m = read_manifest(dir)?;
    let mpath = dir.join("MANIFEST");
    if m.dim as usize != dim {
        return Err(Error::corrupted(
            &mpath,
            0,
            format!(
                "snapshot dimension {} differs from the store's {dim}",
                m.dim
            ),
        ));
    }
    let other_files: Vec<&FileEntry> = m
        .files
        .iter()
        .filter(|f| {
            !is_graph_file(&f.name)
                && f.name != RECORDS_FILE
                && f.name != KEYS_FILE
                && f.name != sums::sums_name(KEYS_FILE)
                && f.name != SLOTS_FILE
                && f.name != KEYWORDS_FILE
                && f.name != sums::sums_name(RECORDS_FILE)
                && !m.is_vector_file(&f.name)
        })
        .collect();
    // Two threads: this one reads the record table (format 6 on: maps it unread and reads its
    // slot index) and points a slot at each row; the other maps the vector chunks unread,
    // reads the key index and maps the graph dump. (With the chunks checked in full: below.
    // Taking the dump here after a slot index read was no faster: 9 paired rounds at 1M.)
    // The key index and the graph dump, mapped and checked to search in place (a dump that
    // fails is left to the indexer, which reads it again, and reports it when it rebuilds
    // the graph).
    let keys_and_graphs = || -> Result<KeysAndGraphs> {
        let keys = load_keys(dir, &m, check)?;
        let graph = m
            .graph
            .as_ref()
            .and_then(|base| match map_graph(dir, &m, base, dim, check) {
                Ok(g) => Some(Arc::new(g)),
                Err(e) => {
                    tracing::debug!(error = %e, "graph dump not searchable in place");
                    None
                }
            });
        Ok((keys, graph))
    };
    // Chunks checked in full (about 0.1 s per GB) are the second thread's only work; the
    // keys and dumps are then this one's, after the records.
    let chunks_in_full = check == Check::Full || m.format < 5;
    let (mref, kg) = (&m, &keys_and_graphs);
    std::thread::scope(|scope| {
        let second = scope.spawn(move || {
            let vectors = map_chunks(dir, dim, mref, check)?;
            let more = (!chunks_in_full).then(kg).transpose()?;
            Ok((vectors, more))
        });
        let rest = other_files
            .iter()
            .try_for_each(|f| check_file(dir, f))
            .and_then(|_| decode_tables(dir, &m, check))
            .and_then(|mut t| {
                t.keywords = match check {
                    // Opened by the engine: read by the indexer thread (`load_keywords`), so
                    // that open does not wait for it; searches by words wait instead.
                    Check::Blocks if m.format >= 8 => Some(KeywordIndex::deferred(
                        crate::projection::DEFAULT_KEYWORD_WINDOW,
                    )),
                    _ => load_keywords(dir, &m)?,
                };
                Ok(t)
            });
        let mine = chunks_in_full.then(kg).transpose();
        let second = second
            .join()
            .unwrap_or_else(|_| Err(Error::corrupted(dir, 0, "snapshot load thread panicked")));
        let (mut tables, (vectors, theirs), mine) = (rest?, second?, mine?);
        let Some((keys, graph)) = theirs.or(mine) else {
            return Err(Error::corrupted(dir, 0, "key index not loaded"));
        };
        check_keys(dir, &keys, tables.live)?;
        tables.keys = keys;
        Ok((tables, vectors, graph))
    })
    .and_then(|(tables, vectors, graph)| finish_load(dim, m, tables, vectors, graph))
}

/// A snapshot's keyword index (format 8 on), mapped, its crc32 checked through the map, and
/// decoded; `None` before format 8 (it is then built from the records).
pub(crate) fn load_keywords(dir: &Path, m: &ManifestBody) -> Result<Option<KeywordIndex>> {
    match m.files.iter().find(|f| f.name == KEYWORDS_FILE) {
        Some(entry) => {
            let map = map_checked(dir, entry)?;
            Ok(Some(keyword::decode(&dir.join(KEYWORDS_FILE), &map)?))
        }
        None if m.format >= 8 => Err(Error::corrupted(
            dir.join("MANIFEST"),
            0,
            format!("{KEYWORDS_FILE} not listed"),
        )),
        None => Ok(None),
    }
}

/// A snapshot's key index (format 4 on) and the graph dump open could map to search in place.
pub(super) type KeysAndGraphs = (Option<KeyIndex>, Option<Arc<MappedGraph>>);

/// The key index of the snapshot (format 4 on; `None` before, built from the records).
pub(super) fn load_keys(dir: &Path, m: &ManifestBody, check: Check) -> Result<Option<KeyIndex>> {
    match m.files.iter().find(|f| f.name == KEYS_FILE) {
        Some(entry) => {
            let file = map_in_place(dir, m, entry, check)?;
            Ok(Some(KeyIndex::open(file, m.nslots)?))
        }
        None if m.format >= 4 => Err(Error::corrupted(
            dir.join("MANIFEST"),
            0,
            format!("{KEYS_FILE} not listed"),
        )),
        None => Ok(None),
    }
}

/// A key index must hold exactly the snapshot's live records.
pub(super) fn check_keys(dir: &Path, keys: &Option<KeyIndex>, live: usize) -> Result<()> {
    match keys {
        Some(k) if k.ids() != live => Err(Error::corrupted(
            dir.join(KEYS_FILE),
            16,
            format!("{} ids for {live} records", k.ids()),
        )),
        _ => Ok(()),
    }
}

/// Maps the graph dump (checked in full or block by block, as [`map_in_place`]) and
/// opens it for searching in place ([`MappedGraph::open`]).
pub(super) fn map_graph(
    dir: &Path,
    m: &ManifestBody,
    base: &str,
    dim: usize,
    check: Check,
) -> Result<MappedGraph> {
    let entry = graph_entry(dir, m, base)?;
    let path = graph_path(dir, base);
    let file = map_in_place(dir, m, entry, check)?;
    MappedGraph::open(file, dim, m.nslots).map_err(|(off, why)| Error::corrupted(&path, off, why))
}

/// Decoded tables.
pub(super) struct Tables {
    pub(super) slots: Vec<Slot>,
    /// The record table the slots' rows are in (format 3 on).
    pub(super) table: Option<Arc<RecordTable>>,
    /// Each layer's slots, found as the rows were checked (format 3 on).
    pub(super) members: Option<[SlotSet; 3]>,
    /// Access statistics by slot (each of a live record).
    pub(super) access: Vec<(u32, Access)>,
    /// Live records among the slots.
    pub(super) live: usize,
    /// The key index (format 4 on; read beside the tables, see [`load`]).
    pub(super) keys: Option<KeyIndex>,
    /// The keyword index (format 8 on).
    pub(super) keywords: Option<KeywordIndex>,
    /// Lifecycle counters: promotions, expiries.
    pub(super) promoted: [u64; 2],
    pub(super) expired: [u64; 3],
    pub(super) model: Option<PromoterModel>,
}

/// The block sums file of `records.bin` and the slot index, listed from format 6 on (`None`
/// before).
pub(super) fn index_files<'m>(
    dir: &Path,
    m: &'m ManifestBody,
) -> Result<Option<(&'m FileEntry, &'m FileEntry)>> {
    if m.format < 6 {
        return Ok(None);
    }
    let sums = sums::sums_name(RECORDS_FILE);
    let find = |name: &str| {
        m.files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| Error::corrupted(dir.join("MANIFEST"), 0, format!("{name} not listed")))
    };
    Ok(Some((find(&sums)?, find(SLOTS_FILE)?)))
}

/// Decodes the records (checked as `check` says), stats and promoter.
pub(super) fn decode_tables(dir: &Path, m: &ManifestBody, check: Check) -> Result<Tables> {
    let spath = dir.join("stats.zst");
    let stats: Stats = decode_aligned(&read_zst(dir, "stats.zst")?, &spath)?;
    let mut fill = SlotFill::with_capacity(m.nslots as usize);
    let (mut table, mut members) = (None, None);
    if let Some(entry) = m.files.iter().find(|f| f.name == RECORDS_FILE) {
        let (t, s) = load_table(dir, m, entry, check, &mut fill)?;
        (table, members) = (Some(t), Some(s));
    } else {
        decode_format_2(dir, m, &mut fill)?;
    }
    let SlotFill { mut slots, live } = fill;
    slots.resize_with(m.nslots as usize, Slot::default);
    let access = access_of(stats.stats, &slots, &spath)?;
    Ok(Tables {
        slots,
        table,
        members,
        access,
        live,
        keys: None,
        keywords: None,
        promoted: stats.promoted,
        expired: stats.expired,
        model: load_model(dir, m)?,
    })
}

/// Slots as a snapshot's records fill them, in slot order, gaps as `Slot::Dead`; and the live
/// records counted as they are placed (every format refuses a slot out of order, so none is
/// placed twice), instead of a second pass over every slot.
pub(super) struct SlotFill {
    pub(super) slots: Vec<Slot>,
    pub(super) live: usize,
}

impl SlotFill {
    fn with_capacity(n: usize) -> SlotFill {
        SlotFill {
            slots: Vec::with_capacity(n),
            live: 0,
        }
    }

    fn place(&mut self, at: usize, rec: Slot) {
        self.live += 1;
        if at < self.slots.len() {
            self.slots[at] = rec;
        } else {
            self.slots.resize_with(at, Slot::default);
            self.slots.push(rec);
        }
    }
}

/// A zstd file of the snapshot in `dir`, decompressed straight into aligned memory: one
/// 270 MB buffer (and its page faults) less per million records than decompressing and then
/// copying for rkyv.
pub(super) fn read_zst(dir: &Path, name: &str) -> Result<AlignedVec<16>> {
    let p = dir.join(name);
    let raw = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    let size = zstd::zstd_safe::get_frame_content_size(&raw)
        .ok()
        .flatten()
        .unwrap_or(0);
    // The file's crc matched, but never trust a size field with an allocation unchecked.
    let cap = size.min(raw.len() as u64 * 64).min(4 << 30) as usize;
    let mut out = AlignedVec::<16>::with_capacity(cap);
    zstd::stream::copy_decode(&raw[..], &mut out)
        .map_err(|e| Error::corrupted(&p, 0, format!("zstd: {e}")))?;
    Ok(out)
}

/// Format 3 on: the record table `entry` stays as read (each record's body is a row of it);
/// fills the slots and returns the table and each layer's members.
pub(super) fn load_table(
    dir: &Path,
    m: &ManifestBody,
    entry: &FileEntry,
    check: Check,
    fill: &mut SlotFill,
) -> Result<(Arc<RecordTable>, [SlotSet; 3])> {
    let index = index_files(dir, m)?;
    // Format 6 on, opened by the engine: the table is mapped unread (each row checked on its
    // first read and by the scrub), and the slots come from the slot index.
    let lazy = match (check, &index) {
        (Check::Blocks, Some((sums, slots_file))) => {
            let sums = read_sums(dir, sums, entry.len)?;
            records::load_lazy(dir, entry, sums, m.nslots)?.map(|t| (t, slots_file))
        }
        _ => None,
    };
    if let Some((table, slots_file)) = lazy {
        // One tight pass, not a call per slot (at a million slots about 15 ms instead of
        // 25–30).
        let (slots, members) = slots::slots_from_index(
            dir,
            slots_file,
            table.len(),
            m.nslots,
            |row, layer, layer_since_us| {
                Slot::Row(RowRef {
                    table: 0,
                    layer,
                    row,
                    layer_since_us,
                })
            },
            || Slot::Dead,
        )?;
        fill.slots = slots;
        fill.live = table.len() as usize;
        return Ok((table, members));
    }
    let mut members: [SlotSet; 3] = Default::default();
    let mut from_rows = Vec::new();
    let table = records::load_each(dir, entry, m.nslots, |row, slot, layer, since| {
        let r = RowRef {
            table: 0,
            layer,
            row,
            layer_since_us: since,
        };
        fill.place(slot as usize, Slot::Row(r));
        members[layer.index()].insert(slot);
        if index.is_some() {
            from_rows.push((slot, row, layer, since));
        }
    })?;
    // Checked in full: the index files must agree with the table.
    if let Some((sums, slots_file)) = &index {
        let parsed = read_sums(dir, sums, entry.len)?;
        table.check_block_sums(&parsed, &dir.join(&sums.name))?;
        let mut listed = Vec::with_capacity(from_rows.len());
        slots::read_slots(dir, slots_file, table.len(), m.nslots, |s, r, l, t| {
            listed.push((s, r, l, t));
        })?;
        if listed != from_rows {
            return Err(Error::corrupted(
                dir.join(&slots_file.name),
                0,
                "the slot index disagrees with the record table",
            ));
        }
    }
    Ok((table, members))
}

/// Format 2: the records in `records.zst`, zstd over rkyv, every record decoded and owned.
pub(super) fn decode_format_2(dir: &Path, m: &ManifestBody, fill: &mut SlotFill) -> Result<()> {
    let rpath = dir.join("records.zst");
    let raw = read_zst(dir, "records.zst")?;
    let recs: Records = decode_aligned(&raw, &rpath)?;
    let mut prev: Option<u32> = None;
    for r in recs.records {
        if r.slot >= m.nslots || prev.is_some_and(|p| r.slot <= p) {
            return Err(Error::corrupted(
                &rpath,
                0,
                format!("slot {} out of order or beyond {}", r.slot, m.nslots),
            ));
        }
        prev = Some(r.slot);
        let body = Body::owned(OwnedBody {
            kind: r.kind,
            text: r.text,
            tags: r.tags,
            project: r.project,
            session: r.session,
            refs: r.refs,
        });
        let fields = RowFields {
            slot: r.slot,
            id: r.id,
            layer: r.layer,
            content_hash: r.content_hash,
            ts_us: r.ts_us,
            inserted_seq: r.inserted_seq,
            layer_since_us: r.layer_since_us,
            rating: r.rating,
        };
        fill.place(
            r.slot as usize,
            Slot::Owned(Box::new(RecordData::from_row(fields, body))),
        );
    }
    Ok(())
}

/// The access statistics of `stats.zst` (at `spath`), each for a live slot.
pub(super) fn access_of(
    stats: Vec<SnapStat>,
    slots: &[Slot],
    spath: &Path,
) -> Result<Vec<(u32, Access)>> {
    let mut access = Vec::with_capacity(stats.len());
    for s in stats {
        if !matches!(
            slots.get(s.slot as usize),
            Some(Slot::Row(_) | Slot::Owned(_))
        ) {
            return Err(Error::corrupted(
                spath,
                0,
                format!("stats for dead slot {}", s.slot),
            ));
        }
        access.push((
            s.slot,
            Access {
                stats: AccessStats {
                    count: s.count,
                    last_access_us: s.last_access_us,
                    decayed: s.decayed,
                    distinct_sessions: s.sessions.len() as u32,
                    distinct_projects: s.projects.len() as u32,
                    search_hits: s.search_hits,
                    rank_sum: s.rank_sum,
                    score_sum: s.score_sum,
                },
                sessions: s.sessions.into_iter().collect(),
                projects: s.projects.into_iter().collect(),
            },
        ));
    }
    Ok(access)
}

/// The trained promoter the snapshot holds, if any and usable.
pub(super) fn load_model(dir: &Path, m: &ManifestBody) -> Result<Option<PromoterModel>> {
    if !m.files.iter().any(|f| f.name == PROMOTER_FILE) {
        return Ok(None);
    }
    let p = dir.join(PROMOTER_FILE);
    let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    let model = decode::<PromoterModel>(&bytes, &p)?;
    match model.check() {
        Ok(()) => Ok(Some(model)),
        Err(why) => {
            tracing::warn!(file = %p.display(), %why, "promoter model unusable; the default is used until the next training");
            Ok(None)
        }
    }
}

/// Maps the snapshot's vector chunks. With [`Check::Blocks`], a chunk with block sums (all,
/// from format 5 on) is mapped unread with its sums; any other is checked against its
/// manifest entry (see [`map_checked`]) before anything else is read from it.
pub(super) fn map_chunks(
    dir: &Path,
    dim: usize,
    m: &ManifestBody,
    check: Check,
) -> Result<Vectors> {
    let listed = |name: &str| m.files.iter().find(|f| f.name == name);
    let unlisted =
        |name: &str| Error::corrupted(dir.join("MANIFEST"), 0, format!("{name} is not listed"));
    let mut maps = Vec::with_capacity(m.chunks.len());
    for name in &m.chunks {
        let entry = listed(name).ok_or_else(|| unlisted(name))?;
        let sums_name = sums::sums_name(name);
        let sums = match listed(&sums_name) {
            Some(s) => Some(s),
            None if m.format >= 5 => return Err(unlisted(&sums_name)),
            None => None,
        };
        let path = dir.join(name);
        let unread = match (check, sums) {
            // Every read through the map checks its block first (`Vectors`).
            (Check::Blocks, Some(s)) => map_for_blocks(dir, entry)?.map(|map| (s, map)),
            _ => None,
        };
        match unread {
            Some((s, map)) => {
                let sums = read_sums(dir, s, entry.len)?;
                maps.push((path, map, Some(sums)));
            }
            // In full: the whole file's crc now, and its block sums (if any) kept, so that
            // the scrub (and `verify`) checks those against the chunk too.
            None => {
                let sums = sums.map(|s| read_sums(dir, s, entry.len)).transpose()?;
                maps.push((path, map_checked(dir, entry)?, sums));
            }
        }
    }
    Vectors::from_chunks(dim, maps, m.nslots)
}

/// The block sums file `entry` of the snapshot in `dir`, checked against the manifest, for a
/// chunk of `chunk_len` bytes.
pub(super) fn read_sums(dir: &Path, entry: &FileEntry, chunk_len: u64) -> Result<Vec<u32>> {
    sums::parse_sums(&dir.join(&entry.name), &read_listed(dir, entry)?, chunk_len)
}

pub(super) fn finish_load(
    dim: usize,
    m: ManifestBody,
    tables: Tables,
    vectors: Vectors,
    graph: Option<Arc<MappedGraph>>,
) -> Result<Loaded> {
    let Tables {
        slots,
        table,
        members,
        access,
        keys,
        keywords,
        promoted,
        expired,
        model,
        ..
    } = tables;
    let mut p = Projections::from_parts(dim, slots, table, members, keys, keywords, vectors);
    (p.applied_seq, p.last_ts_us) = (m.seq, m.ts_us);
    for (slot, a) in access {
        p.set_access(slot, a);
    }
    p.promoted = promoted;
    p.expired = expired;
    Ok(Loaded {
        projections: p,
        manifest: m,
        model,
        graph,
    })
}

/// The graph dump the manifest names `base`.
pub(crate) fn graph_path(dir: &Path, base: &str) -> PathBuf {
    dir.join(format!("{base}.graph"))
}

/// The manifest entry of the graph dump `base`.
pub(super) fn graph_entry<'m>(
    dir: &Path,
    m: &'m ManifestBody,
    base: &str,
) -> Result<&'m FileEntry> {
    let name = file_name(&graph_path(dir, base));
    let Some(entry) = m.files.iter().find(|f| f.name == name) else {
        let why = if m
            .files
            .iter()
            .any(|f| f.name == format!("{base}.hnsw.graph"))
        {
            "the snapshot holds an hnsw_rs dump from an older version; the graph is rebuilt"
                .to_string()
        } else {
            format!("{name} not listed")
        };
        return Err(Error::corrupted(dir.join("MANIFEST"), 0, why));
    };
    Ok(entry)
}

/// Loads the HNSW graph dump (without its vectors: see
/// [`HnswBuilder::fill_vectors`]), after checking it against the manifest; from `checked`
/// when open has already mapped and checked the same file ([`map_graph`]).
pub(crate) fn load_graph(
    dir: &Path,
    m: &ManifestBody,
    base: &str,
    dim: usize,
    checked: Option<&[u8]>,
) -> Result<HnswBuilder> {
    let path = graph_path(dir, base);
    match checked {
        Some(bytes) => HnswBuilder::read(bytes, dim, m.nslots),
        None => HnswBuilder::read(&read_graph(dir, m, base)?, dim, m.nslots),
    }
    .map_err(|(off, why)| Error::corrupted(&path, off, why))
}

/// Reads the graph dump `base` and checks it against its manifest entry and its block sums
/// (format 7 on): the same checks as a dump open mapped has had once the indexer read it
/// (`MappedGraph::checked_bytes`), so a damaged sums file is found and the graph rebuilt.
pub(super) fn read_graph(dir: &Path, m: &ManifestBody, base: &str) -> Result<Vec<u8>> {
    let entry = graph_entry(dir, m, base)?;
    let bytes = read_listed(dir, entry)?;
    check_listed_sums(dir, m, entry, &bytes)?;
    Ok(bytes)
}

/// The bytes of the listed file `entry` of the snapshot in `dir`, read once and checked
/// against its manifest length and crc32 (the same check and message as [`check_file`]).
pub(super) fn read_listed(dir: &Path, entry: &FileEntry) -> Result<Vec<u8>> {
    let path = dir.join(&entry.name);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    check_sum(&path, entry, bytes.len() as u64, crc32fast::hash(&bytes))?;
    Ok(bytes)
}
