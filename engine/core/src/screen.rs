//! The pre-apply screen: bounding what a device's sync message can make the server
//! expand, before Automerge parses it.
//!
//! Owns: [`screen_chunks`], run by the server on the `changes` of every decoded
//! `automerge::sync::Message` *before* `receive_sync_message`. Automerge keeps those
//! entries as raw bytes and `load_incremental` then inflates DEFLATE-compressed data
//! with no cap (an 8 MiB frame can ask for gigabytes) and walks run-length-encoded
//! columns row by row (a 20-byte change can claim a run of 2^60 ops). The screen walks
//! the same storage format without expanding it and refuses a message unless every
//! expansion is bounded by [`ScreenLimits`]: inflated bytes, rows, chunks. It never
//! allocates in proportion to a size the input claims, never loops in proportion to a
//! count the input claims (every loop either consumes input or stops at a limit), and
//! inflates only through a reader capped at the remaining budget.
//!
//! What honest peers send, checked in the automerge 0.12 sources:
//! `generate_sync_message` (`sync.rs`, `sync/message_builder.rs`) puts either the raw
//! change chunks (`Change::raw_bytes`, chunk type 1, concatenated into one entry, or
//! one entry each for v1 peers) or one `Automerge::save()` (a document chunk, type 0,
//! whose long columns are DEFLATE-compressed, followed by the raw bytes of any orphaned
//! changes). Compressed change chunks (type 2, `Change::bytes`) and bundles (type 3,
//! `Automerge::bundle`) are storage formats no sync message carries, so they are
//! refused outright instead of inflated or unpacked.
//!
//! Does not own: whether the ops are admissible (actor binding, which keys a device
//! may write: [`crate::admission`], after the message is applied), checksums and the
//! semantic validity of the columns (Automerge checks them), nor the size of the frame
//! itself (the wire layer caps it before decoding). Passing the screen means "Automerge
//! may parse this at bounded cost", not "this is a valid change".
//!
//! Call order: decode the frame, `automerge::sync::Message::decode`, then
//! [`screen_message`] (the summary, then [`screen_chunks`] on `message.changes`),
//! and only on `Ok` hand the message to `receive_sync_message`.

use std::io::{self, Read, Write};

/// The four bytes every Automerge storage chunk starts with.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Largest sequence number or op counter a change may reach (Automerge stores some
/// in 32 bits; an honest document is nowhere near).
const MAX_COUNTER: u64 = 1 << 31;
/// Bytes of a change hash (SHA-256).
const HASH_BYTES: u64 = 32;

const CHUNK_DOCUMENT: u8 = 0;
const CHUNK_CHANGE: u8 = 1;
const CHUNK_COMPRESSED_CHANGE: u8 = 2;
const CHUNK_BUNDLE: u8 = 3;

/// A column specification is `id << 4 | deflate << 3 | type`.
const SPEC_DEFLATE: u64 = 0b1000;
const SPEC_TYPE: u64 = 0b0111;
const TYPE_GROUP: u64 = 0;
const TYPE_BOOLEAN: u64 = 4;
const TYPE_STRING: u64 = 5;
const TYPE_VALUE_RAW: u64 = 7;

/// How much one sync message may make the server expand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScreenLimits {
    /// Most bytes the message may expand to beyond its own bytes, summed over all its
    /// chunks: the output of every DEFLATE-compressed document column, plus the bytes
    /// a run-length run repeats a string (a key repeated 100 000 times is 100 000 keys
    /// once decoded).
    pub max_inflated_bytes: usize,
    /// Most rows the message may make Automerge walk: every column's row count, every
    /// group column's total of grouped rows, and their sum over the message (each
    /// chunk counted by its longest column, about its number of ops or changes).
    pub max_rows: u64,
    /// Most storage chunks in the message, over all entries.
    pub max_chunks: usize,
}

impl ScreenLimits {
    /// Four times the 8 MiB frame: a saved document whose columns compress well still
    /// fits, and the server's peak memory per message stays a few tens of MiB.
    pub const DEFAULT_MAX_INFLATED_BYTES: usize = 32 * 1024 * 1024;
    /// A customer document holds one op per call event; 100 000 is decades of calls,
    /// and loading that many ops costs Automerge well under a second.
    pub const DEFAULT_MAX_ROWS: u64 = 100_000;
    /// An honest message carries one chunk per change a device made offline (a
    /// phone offline all day records a few thousand), or one saved document
    /// (Automerge sends the document once the changes exceed a third of it). The
    /// rows budget bounds the work whatever the count.
    pub const DEFAULT_MAX_CHUNKS: usize = 16_384;
}

impl Default for ScreenLimits {
    fn default() -> Self {
        Self {
            max_inflated_bytes: Self::DEFAULT_MAX_INFLATED_BYTES,
            max_rows: Self::DEFAULT_MAX_ROWS,
            max_chunks: Self::DEFAULT_MAX_CHUNKS,
        }
    }
}

/// What a message that passed the screen holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Screened {
    /// Change chunks (type 1).
    pub change_chunks: usize,
    /// Document chunks (type 0).
    pub document_chunks: usize,
    /// Bytes counted against [`ScreenLimits::max_inflated_bytes`]: DEFLATE output plus
    /// repeated string bytes.
    pub inflated_bytes: usize,
    /// Rows counted against [`ScreenLimits::max_rows`]: the sum over chunks of each
    /// chunk's longest column.
    pub rows: u64,
}

/// Why a device's sync message was refused before Automerge saw it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScreenError {
    /// A compressed change chunk (type 2): honest sync messages carry raw changes.
    #[error("compressed change chunks are refused; send raw changes")]
    CompressedChange,
    /// A bundle chunk (type 3): honest sync messages never carry bundles.
    #[error("bundle chunks are refused")]
    Bundle,
    /// A chunk type Automerge 0.12 does not define.
    #[error("unknown chunk type {0}")]
    UnknownChunkType(u8),
    /// The bytes are not a well-formed chunk (truncated, bad magic bytes, a number
    /// too large, a compressed column that is not DEFLATE data, ...).
    #[error("malformed chunk: {reason}")]
    Malformed {
        /// What was wrong, for logs.
        reason: String,
    },
    /// Inflating the message (or repeating its strings) would pass the budget.
    #[error("the message expands beyond {limit} bytes")]
    InflatesTooMuch {
        /// [`ScreenLimits::max_inflated_bytes`].
        limit: usize,
    },
    /// The message claims more rows than the limit.
    #[error("the message claims at least {rows} rows, more than the limit of {limit}")]
    TooManyRows {
        /// Rows counted when the screen stopped (at least this many).
        rows: u64,
        /// [`ScreenLimits::max_rows`].
        limit: u64,
    },
    /// The message holds more chunks than the limit.
    #[error("the message holds more than {limit} chunks")]
    TooManyChunks {
        /// [`ScreenLimits::max_chunks`].
        limit: usize,
    },
    /// The message's summary of what the device has (heads, needs, bloom filters)
    /// is outside what any honest peer sends.
    #[error("the sync summary is refused: {reason}")]
    Summary {
        /// What was wrong, for logs.
        reason: String,
    },
}

impl ScreenError {
    /// A stable kebab-case code for logs and error replies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::CompressedChange => "compressed-change-refused",
            Self::Bundle => "bundle-refused",
            Self::UnknownChunkType(_) => "unknown-chunk-type",
            Self::Malformed { .. } => "malformed-chunk",
            Self::InflatesTooMuch { .. } => "inflates-too-much",
            Self::TooManyRows { .. } => "too-many-rows",
            Self::TooManyChunks { .. } => "too-many-chunks",
            Self::Summary { .. } => "malformed-sync-summary",
        }
    }

    /// The message in Japanese.
    pub fn message_ja(&self) -> String {
        match self {
            Self::CompressedChange => "圧縮された変更データは受け付けません".to_owned(),
            Self::Bundle => "バンドル形式の変更データは受け付けません".to_owned(),
            Self::UnknownChunkType(kind) => format!("不明な種類のデータです（種類 {kind}）"),
            // The reasons are technical English texts: they stay in `message` and
            // the logs.
            Self::Malformed { .. } => "同期データの形式が正しくありません".to_owned(),
            Self::InflatesTooMuch { limit } => {
                format!("同期データを展開すると上限（{limit} バイト）を超えます")
            }
            Self::TooManyRows { rows, limit } => {
                format!("同期データの行数が多すぎます（{rows} 行以上、上限 {limit} 行）")
            }
            Self::TooManyChunks { limit } => {
                format!("同期データのチャンク数が上限（{limit} 個）を超えます")
            }
            Self::Summary { .. } => "同期データの概要が正しくありません".to_owned(),
        }
    }

    fn malformed(reason: &str) -> Self {
        Self::Malformed {
            reason: reason.to_owned(),
        }
    }

    /// Prefixes a malformation with where it was found.
    fn within(self, place: &str) -> Self {
        match self {
            Self::Malformed { reason } => Self::Malformed {
                reason: format!("{place}: {reason}"),
            },
            other => other,
        }
    }
}

/// Most heads or needed hashes a sync message may list (an honest one lists the few
/// heads of a document and the few changes it lacks).
pub const MAX_SUMMARY_HASHES: usize = 1_024;
/// Most `have` entries (an honest peer sends one).
pub const MAX_HAVES: usize = 4;
/// Bloom filter parameters any honest peer uses (Automerge's constants are 10 bits
/// per entry and 7 probes); outside these, Automerge allocates per probe and divides
/// by the filter's size, so an empty filter with entries panics.
const MAX_BLOOM_BITS_PER_ENTRY: u64 = 64;
const MAX_BLOOM_PROBES: u64 = 16;

/// Screens a whole decoded sync message: its summary (heads, needs, the bloom filter
/// of each `have`, which Automerge reads while answering) and its chunks
/// ([`screen_chunks`]).
///
/// # Errors
/// The first [`ScreenError`] found.
pub fn screen_message(
    message: &automerge::sync::Message,
    limits: &ScreenLimits,
) -> Result<Screened, ScreenError> {
    let summary = |reason: String| ScreenError::Summary { reason };
    if message.heads.len() > MAX_SUMMARY_HASHES || message.need.len() > MAX_SUMMARY_HASHES {
        return Err(summary(format!(
            "more than {MAX_SUMMARY_HASHES} heads or needed changes"
        )));
    }
    if message.have.len() > MAX_HAVES {
        return Err(summary(format!("more than {MAX_HAVES} bloom filters")));
    }
    for have in &message.have {
        if have.last_sync.len() > MAX_SUMMARY_HASHES {
            return Err(summary("too many last-sync heads".to_owned()));
        }
        screen_bloom(&have.bloom.to_bytes())?;
    }
    screen_chunks(message.changes.iter(), limits)
}

/// A bloom filter's encoding: empty, or entries, bits per entry, probes, then bits.
fn screen_bloom(bytes: &[u8]) -> Result<(), ScreenError> {
    let summary = |reason: &str| ScreenError::Summary {
        reason: format!("bloom filter: {reason}"),
    };
    if bytes.is_empty() {
        return Ok(());
    }
    let mut input = Reader::new(bytes);
    let entries = input.uleb().map_err(|_| summary("unreadable"))?;
    let bits_per_entry = input.uleb().map_err(|_| summary("unreadable"))?;
    let probes = input.uleb().map_err(|_| summary("unreadable"))?;
    if entries == 0 {
        return Ok(());
    }
    if !(1..=MAX_BLOOM_BITS_PER_ENTRY).contains(&bits_per_entry) {
        return Err(summary("bits per entry out of range"));
    }
    if !(1..=MAX_BLOOM_PROBES).contains(&probes) {
        return Err(summary("probes out of range"));
    }
    Ok(())
}

/// Screens the entries of a sync message (`message.changes.iter()`): each entry must be
/// one or more whole change or document chunks, and everything Automerge would expand
/// must fit `limits`. See the module documentation for what is refused and why.
///
/// # Errors
/// The first [`ScreenError`] found; nothing is partially accepted.
pub fn screen_chunks<'a>(
    entries: impl IntoIterator<Item = &'a [u8]>,
    limits: &ScreenLimits,
) -> Result<Screened, ScreenError> {
    let mut budget = Budget::new(limits);
    for entry in entries {
        // Automerge joins the entries before parsing, so a chunk split over two
        // entries would load; no honest peer splits one, and requiring whole chunks
        // per entry makes the join parse exactly as screened here.
        if entry.is_empty() {
            return Err(ScreenError::malformed("an empty entry"));
        }
        let mut input = Reader::new(entry);
        while !input.is_empty() {
            budget.count_chunk()?;
            screen_chunk(&mut input, &mut budget)?;
        }
    }
    Ok(budget.screened())
}

/// Reads one chunk (header and data) from `input`.
fn screen_chunk(input: &mut Reader<'_>, budget: &mut Budget<'_>) -> Result<(), ScreenError> {
    let magic = input.take(4)?;
    if magic != MAGIC {
        return Err(ScreenError::malformed(
            "not an Automerge chunk (bad magic bytes)",
        ));
    }
    // The checksum: Automerge verifies it when it loads the chunk.
    input.take(4)?;
    let kind = input.byte()?;
    match kind {
        CHUNK_DOCUMENT | CHUNK_CHANGE => {}
        CHUNK_COMPRESSED_CHANGE => return Err(ScreenError::CompressedChange),
        CHUNK_BUNDLE => return Err(ScreenError::Bundle),
        other => return Err(ScreenError::UnknownChunkType(other)),
    }
    let data_len = input.uleb()?;
    let data = input.take(data_len).map_err(|e| e.within("chunk"))?;
    if kind == CHUNK_CHANGE {
        screen_change(data, budget).map_err(|e| e.within("change chunk"))
    } else {
        screen_document(data, budget).map_err(|e| e.within("document chunk"))
    }
}

/// A change chunk (`storage/change.rs`): dependencies, actor, seq, start op, time,
/// message, other actors, op column metadata, op column data, extra bytes.
fn screen_change(data: &[u8], budget: &mut Budget<'_>) -> Result<(), ScreenError> {
    let mut r = Reader::new(data);
    r.hashes()?; // dependencies
    r.length_prefixed()?; // actor
    let seq = r.uleb()?;
    let start_op = r.uleb()?;
    // Automerge keeps op counters and sequence numbers in 32 bits in places
    // (`change_graph.rs`): a change that would pass that is refused here, before
    // its arithmetic can wrap.
    if seq > MAX_COUNTER || start_op > MAX_COUNTER {
        return Err(ScreenError::malformed(
            "a sequence number or op counter past 2^31",
        ));
    }
    r.sleb()?; // time
    r.length_prefixed()?; // message
    let other_actors = r.uleb()?;
    // Every loop over a claimed count reads at least one byte per turn, so it ends
    // with the input whatever the count says.
    for _ in 0..other_actors {
        r.length_prefixed()?;
    }
    let meta = r.column_metadata()?;
    let columns = r.take(meta.data_len)?;
    // What follows is the change's extra bytes, which Automerge keeps verbatim and
    // reads as an author footer: a change with an author that is not its actor's
    // first makes Automerge 0.12 assert while applying it (`change_graph.rs`). No
    // honest device writes any.
    if !r.is_empty() {
        return Err(ScreenError::malformed(
            "extra bytes after the operations (an author footer or anything else)",
        ));
    }

    let mut chunk_rows = 0;
    for column in Columns::new(&meta, columns)? {
        let (spec, bytes) = column?;
        // Automerge never deflates a column inside a change chunk: `ChangeBuilder::build`
        // writes the op columns uncompressed (a change is compressed whole, as a type 2
        // chunk), and `Change::parse_following_header` refuses deflated columns
        // (`CompressedChangeCols`). Refusing them here keeps that true without inflating.
        if spec & SPEC_DEFLATE != 0 {
            return Err(ScreenError::malformed("a DEFLATE-compressed column"));
        }
        let tally = tally_column(spec, bytes, budget)?;
        chunk_rows = chunk_rows.max(budget.take_tally(&tally)?);
    }
    if start_op.saturating_add(chunk_rows) > MAX_COUNTER {
        return Err(ScreenError::malformed("op counters past 2^31"));
    }
    budget.commit_rows(chunk_rows)?;
    budget.change_chunks += 1;
    Ok(())
}

/// A document chunk (`storage/document.rs`): actors, heads, change column metadata, op
/// column metadata, change column data, op column data, head indices.
fn screen_document(data: &[u8], budget: &mut Budget<'_>) -> Result<(), ScreenError> {
    let mut r = Reader::new(data);
    let actors = r.uleb()?;
    // At least one byte per actor: bounded by the input, whatever the count says.
    for _ in 0..actors {
        r.length_prefixed()?;
    }
    r.hashes()?; // heads
    let change_meta = r.column_metadata()?;
    let op_meta = r.column_metadata()?;
    let change_columns = r.take(change_meta.data_len)?;
    let op_columns = r.take(op_meta.data_len)?;
    // What follows is one head index per head, read by Automerge no further than the
    // heads already counted above.

    let mut chunk_rows = 0;
    for (meta, columns) in [(&change_meta, change_columns), (&op_meta, op_columns)] {
        for column in Columns::new(meta, columns)? {
            let (spec, bytes) = column?;
            let tally = if spec & SPEC_DEFLATE == 0 {
                tally_column(spec, bytes, budget)?
            } else if spec & SPEC_TYPE == TYPE_VALUE_RAW {
                // Raw values have no rows: only their inflated size counts.
                budget.inflate(bytes, io::sink())?;
                Tally::default()
            } else {
                let inflated = budget.inflate(bytes, Vec::new())?;
                tally_column(spec, &inflated, budget)?
            };
            chunk_rows = chunk_rows.max(budget.take_tally(&tally)?);
        }
    }
    budget.commit_rows(chunk_rows)?;
    budget.document_chunks += 1;
    Ok(())
}

/// What walking one column found.
#[derive(Debug, Default)]
struct Tally {
    /// Rows the column decodes to.
    rows: u64,
    /// For a group column: rows of the columns it groups (the sum of its values).
    grouped: u64,
    /// For a string column: bytes its runs repeat.
    repeated_bytes: u64,
}

/// How one value of a run-length-encoded column is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    /// A LEB128 number whose value does not matter here (actor, integer, delta,
    /// value metadata).
    Number,
    /// A uLEB128 count of grouped rows.
    Group,
    /// A uLEB128 length, then that many bytes.
    Str,
}

/// Counts a column's rows by walking its encoding (`columnar/encoding`): O(column
/// bytes), stopping as soon as a count passes what the budget has left.
fn tally_column(spec: u64, data: &[u8], budget: &Budget<'_>) -> Result<Tally, ScreenError> {
    match spec & SPEC_TYPE {
        TYPE_VALUE_RAW => Ok(Tally::default()),
        TYPE_BOOLEAN => tally_boolean(data, budget),
        TYPE_GROUP => tally_rle(data, Cell::Group, budget),
        TYPE_STRING => tally_rle(data, Cell::Str, budget),
        _ => tally_rle(data, Cell::Number, budget),
    }
}

/// Run-length encoding: a signed count `n`; `n > 0` is a run of `n` copies of the
/// value that follows, `n < 0` is `-n` literal values, `0` is a uLEB128 count of nulls.
fn tally_rle(data: &[u8], cell: Cell, budget: &Budget<'_>) -> Result<Tally, ScreenError> {
    let rows_left = budget.rows_left();
    let bytes_left = budget.inflated_left();
    let mut tally = Tally::default();
    let mut r = Reader::new(data);
    while !r.is_empty() {
        let count = r.sleb()?;
        let n = count.unsigned_abs();
        if count == 0 {
            tally.rows = tally.rows.saturating_add(r.uleb()?);
        } else {
            tally.rows = tally.rows.saturating_add(n);
        }
        if tally.rows > rows_left {
            return Err(budget.too_many_rows(tally.rows));
        }
        // Each value read consumes at least one byte, so the literal loop is bounded
        // by the column's bytes as well as by `rows_left`.
        let copies = if count > 0 { n } else { 1 };
        let values = if count < 0 { n } else { u64::from(count > 0) };
        for _ in 0..values {
            match cell {
                Cell::Number => r.skip_leb()?,
                Cell::Group => {
                    let grouped = r.uleb()?.saturating_mul(copies);
                    tally.grouped = tally.grouped.saturating_add(grouped);
                    if tally.grouped > rows_left {
                        return Err(budget.too_many_rows(tally.grouped));
                    }
                }
                Cell::Str => {
                    let len = r.uleb()?;
                    r.take(len)?;
                    if copies > 1 {
                        let repeated = len.saturating_mul(copies);
                        tally.repeated_bytes = tally.repeated_bytes.saturating_add(repeated);
                        if tally.repeated_bytes > bytes_left {
                            return Err(budget.inflates_too_much());
                        }
                    }
                }
            }
        }
    }
    Ok(tally)
}

/// Boolean encoding: alternating uLEB128 run lengths, starting with `false`.
fn tally_boolean(data: &[u8], budget: &Budget<'_>) -> Result<Tally, ScreenError> {
    let rows_left = budget.rows_left();
    let mut tally = Tally::default();
    let mut r = Reader::new(data);
    while !r.is_empty() {
        tally.rows = tally.rows.saturating_add(r.uleb()?);
        if tally.rows > rows_left {
            return Err(budget.too_many_rows(tally.rows));
        }
    }
    Ok(tally)
}

/// The limits and what the message has used of them so far.
struct Budget<'l> {
    limits: &'l ScreenLimits,
    chunks: usize,
    change_chunks: usize,
    document_chunks: usize,
    /// Bytes counted against `max_inflated_bytes`.
    inflated: u64,
    /// Rows of the chunks screened so far.
    rows: u64,
}

impl<'l> Budget<'l> {
    fn new(limits: &'l ScreenLimits) -> Self {
        Self {
            limits,
            chunks: 0,
            change_chunks: 0,
            document_chunks: 0,
            inflated: 0,
            rows: 0,
        }
    }

    fn inflated_limit(&self) -> u64 {
        u64::try_from(self.limits.max_inflated_bytes).unwrap_or(u64::MAX)
    }

    fn inflated_left(&self) -> u64 {
        self.inflated_limit().saturating_sub(self.inflated)
    }

    fn rows_left(&self) -> u64 {
        self.limits.max_rows.saturating_sub(self.rows)
    }

    fn count_chunk(&mut self) -> Result<(), ScreenError> {
        if self.chunks >= self.limits.max_chunks {
            return Err(ScreenError::TooManyChunks {
                limit: self.limits.max_chunks,
            });
        }
        self.chunks += 1;
        Ok(())
    }

    fn too_many_rows(&self, counted: u64) -> ScreenError {
        ScreenError::TooManyRows {
            rows: self.rows.saturating_add(counted),
            limit: self.limits.max_rows,
        }
    }

    fn inflates_too_much(&self) -> ScreenError {
        ScreenError::InflatesTooMuch {
            limit: self.limits.max_inflated_bytes,
        }
    }

    fn spend_inflated(&mut self, bytes: u64) -> Result<(), ScreenError> {
        let total = self.inflated.saturating_add(bytes);
        if total > self.inflated_limit() {
            return Err(self.inflates_too_much());
        }
        self.inflated = total;
        Ok(())
    }

    /// Charges a column's repeated bytes; returns the rows it stands for.
    fn take_tally(&mut self, tally: &Tally) -> Result<u64, ScreenError> {
        self.spend_inflated(tally.repeated_bytes)?;
        Ok(tally.rows.max(tally.grouped))
    }

    fn commit_rows(&mut self, chunk_rows: u64) -> Result<(), ScreenError> {
        if chunk_rows > self.rows_left() {
            return Err(self.too_many_rows(chunk_rows));
        }
        self.rows = self.rows.saturating_add(chunk_rows);
        Ok(())
    }

    /// Inflates one raw-DEFLATE column (as Automerge does) into `out`, reading at most
    /// one byte past what the budget has left, and charges what came out.
    fn inflate<W: Write>(&mut self, compressed: &[u8], mut out: W) -> Result<W, ScreenError> {
        let left = self.inflated_left();
        let mut capped =
            flate2::bufread::DeflateDecoder::new(compressed).take(left.saturating_add(1));
        let inflated = io::copy(&mut capped, &mut out)
            .map_err(|_| ScreenError::malformed("a compressed column is not DEFLATE data"))?;
        if inflated > left {
            return Err(self.inflates_too_much());
        }
        self.spend_inflated(inflated)?;
        Ok(out)
    }

    fn screened(&self) -> Screened {
        Screened {
            change_chunks: self.change_chunks,
            document_chunks: self.document_chunks,
            inflated_bytes: usize::try_from(self.inflated).unwrap_or(usize::MAX),
            rows: self.rows,
        }
    }
}

/// A chunk's column metadata: its bytes (a count, then a spec and a length per
/// column), already checked, and the total length of the columns' data.
struct ColumnMetadata<'a> {
    bytes: &'a [u8],
    data_len: u64,
}

/// The columns of a [`ColumnMetadata`] paired with their data.
struct Columns<'a> {
    meta: Reader<'a>,
    data: Reader<'a>,
    left: u64,
}

impl<'a> Columns<'a> {
    fn new(meta: &ColumnMetadata<'a>, data: &'a [u8]) -> Result<Self, ScreenError> {
        let mut reader = Reader::new(meta.bytes);
        let left = reader.uleb()?;
        Ok(Self {
            meta: reader,
            data: Reader::new(data),
            left,
        })
    }

    fn next_column(&mut self) -> Result<(u64, &'a [u8]), ScreenError> {
        let spec = self.meta.uleb()?;
        let len = self.meta.uleb()?;
        Ok((spec, self.data.take(len)?))
    }
}

impl<'a> Iterator for Columns<'a> {
    type Item = Result<(u64, &'a [u8]), ScreenError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(self.next_column())
    }
}

/// A cursor over untrusted bytes: every read is bounds-checked, every failure is
/// [`ScreenError::Malformed`].
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn byte(&mut self) -> Result<u8, ScreenError> {
        let (&first, rest) = self.rest.split_first().ok_or_else(truncated)?;
        self.rest = rest;
        Ok(first)
    }

    /// The next `len` bytes; `len` is a claim from the input, checked, never allocated.
    fn take(&mut self, len: u64) -> Result<&'a [u8], ScreenError> {
        let len = usize::try_from(len).map_err(|_| truncated())?;
        let (taken, rest) = self.rest.split_at_checked(len).ok_or_else(truncated)?;
        self.rest = rest;
        Ok(taken)
    }

    /// A uLEB128 count, then that many bytes.
    fn length_prefixed(&mut self) -> Result<&'a [u8], ScreenError> {
        let len = self.uleb()?;
        self.take(len)
    }

    /// A uLEB128 count, then that many change hashes.
    fn hashes(&mut self) -> Result<(), ScreenError> {
        let count = self.uleb()?;
        let bytes = count.checked_mul(HASH_BYTES).ok_or_else(truncated)?;
        self.take(bytes).map(|_| ())
    }

    /// Column metadata: a uLEB128 count, then per column a uLEB128 specification
    /// (which must fit in 32 bits) and a uLEB128 data length.
    fn column_metadata(&mut self) -> Result<ColumnMetadata<'a>, ScreenError> {
        let start = self.rest;
        let count = self.uleb()?;
        let mut data_len: u64 = 0;
        // Each column reads at least two bytes, so this loop is bounded by the input.
        for _ in 0..count {
            if self.uleb()? > u64::from(u32::MAX) {
                return Err(ScreenError::malformed(
                    "a column specification is too large",
                ));
            }
            data_len = data_len.saturating_add(self.uleb()?);
        }
        let used = start.len().saturating_sub(self.rest.len());
        let bytes = start.get(..used).ok_or_else(truncated)?;
        Ok(ColumnMetadata { bytes, data_len })
    }

    /// An unsigned LEB128 number of at most 64 bits.
    fn uleb(&mut self) -> Result<u64, ScreenError> {
        let mut value: u64 = 0;
        let mut shift: u32 = 0;
        loop {
            let byte = self.byte()?;
            let low = u64::from(byte & 0x7f);
            if shift == 63 && low > 1 {
                return Err(too_large());
            }
            value |= low << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
            if shift > 63 {
                return Err(too_large());
            }
        }
    }

    /// A signed LEB128 number of at most 64 bits.
    fn sleb(&mut self) -> Result<i64, ScreenError> {
        let mut value: i64 = 0;
        let mut shift: u32 = 0;
        loop {
            let byte = self.byte()?;
            if shift == 63 {
                // The tenth byte holds only the sign bit, extended.
                return match byte {
                    0x00 => Ok(value),
                    0x7f => Ok(value | i64::MIN),
                    _ => Err(too_large()),
                };
            }
            value |= i64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                if shift < 64 && byte & 0x40 != 0 {
                    value |= -1_i64 << shift;
                }
                return Ok(value);
            }
        }
    }

    /// Skips one LEB128 number (signed or unsigned: the same bytes).
    fn skip_leb(&mut self) -> Result<(), ScreenError> {
        for _ in 0..10 {
            if self.byte()? & 0x80 == 0 {
                return Ok(());
            }
        }
        Err(too_large())
    }
}

fn truncated() -> ScreenError {
    ScreenError::malformed("the data ends early")
}

fn too_large() -> ScreenError {
    ScreenError::malformed("a LEB128 number is longer than 64 bits")
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_bloom_filter_with_entries_but_no_bits_or_huge_probes_is_refused() {
        use automerge::sync::{BloomFilter, Have, Message};
        let hostile = |entries: u64, bits: u64, probes: u64| {
            let mut bytes = Vec::new();
            for n in [entries, bits, probes] {
                put_uleb(&mut bytes, n);
            }
            bytes.extend(std::iter::repeat_n(0u8, 8));
            bytes
        };
        let mut screened = 0;
        for (bits, probes) in [(0, 7), (10, u64::from(u32::MAX)), (10, 0)] {
            let bloom = BloomFilter::try_from(hostile(5, bits, probes).as_slice());
            // Automerge itself may accept it; the screen must not.
            let Ok(bloom) = bloom else { continue };
            screened += 1;
            let mut doc = automerge::AutoCommit::new();
            let mut state = automerge::sync::State::new();
            let mut message: Message =
                automerge::sync::SyncDoc::generate_sync_message(&doc.sync(), &mut state)
                    .unwrap_or_else(|| panic!("a first message"));
            message.have = vec![Have {
                last_sync: Vec::new(),
                bloom,
            }];
            let refused = screen_message(&message, &ScreenLimits::default()).unwrap_err();
            assert_eq!(refused.code(), "malformed-sync-summary", "{refused}");
        }
        assert!(
            screened >= 1,
            "Automerge parses at least the filter with no bits"
        );
    }

    #[test]
    fn an_honest_sync_message_passes_the_whole_message_screen() {
        let mut doc = automerge::AutoCommit::new();
        automerge::transaction::Transactable::put(&mut doc, automerge::ROOT, "k", "v")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut state = automerge::sync::State::new();
        let message = automerge::sync::SyncDoc::generate_sync_message(&doc.sync(), &mut state)
            .unwrap_or_else(|| panic!("a first message"));
        assert!(screen_message(&message, &ScreenLimits::default()).is_ok());
    }
    use super::*;
    use automerge::sync::{self, SyncDoc};
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT};
    use flate2::Compression;
    use flate2::write::DeflateEncoder;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn screen(entry: &[u8]) -> Result<Screened, ScreenError> {
        screen_chunks([entry], &ScreenLimits::default())
    }

    fn put_uleb(out: &mut Vec<u8>, mut value: u64) {
        loop {
            let low = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(low);
                return;
            }
            out.push(low | 0x80);
        }
    }

    fn put_sleb(out: &mut Vec<u8>, mut value: i64) {
        loop {
            let low = (value & 0x7f) as u8;
            value >>= 7;
            let done = (value == 0 && low & 0x40 == 0) || (value == -1 && low & 0x40 != 0);
            if done {
                out.push(low);
                return;
            }
            out.push(low | 0x80);
        }
    }

    /// A chunk with a zero checksum (the screen does not check it).
    fn chunk(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([0; 4]);
        out.push(kind);
        put_uleb(&mut out, data.len() as u64);
        out.extend(data);
        out
    }

    fn put_columns(meta: &mut Vec<u8>, data: &mut Vec<u8>, columns: &[(u64, Vec<u8>)]) {
        put_uleb(meta, columns.len() as u64);
        for (spec, bytes) in columns {
            put_uleb(meta, *spec);
            put_uleb(meta, bytes.len() as u64);
            data.extend(bytes);
        }
    }

    /// A change chunk laid out as `ChangeBuilder::build` writes one.
    fn hand_built_change(columns: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut data = Vec::new();
        put_uleb(&mut data, 0); // no dependencies
        put_uleb(&mut data, 16);
        data.extend([0xaa; 16]); // actor
        put_uleb(&mut data, 1); // seq
        put_uleb(&mut data, 1); // start op
        put_sleb(&mut data, 1_700_000_000_000); // time
        put_uleb(&mut data, 0); // no message
        put_uleb(&mut data, 0); // no other actors
        let mut column_data = Vec::new();
        put_columns(&mut data, &mut column_data, columns);
        data.extend(column_data);
        chunk(CHUNK_CHANGE, &data)
    }

    /// A document chunk with no actors, heads or change columns, and `op_columns`.
    fn hand_built_document(op_columns: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut data = Vec::new();
        put_uleb(&mut data, 0); // actors
        put_uleb(&mut data, 0); // heads
        let mut column_data = Vec::new();
        put_columns(&mut data, &mut column_data, &[]);
        put_columns(&mut data, &mut column_data, op_columns);
        data.extend(column_data);
        chunk(CHUNK_DOCUMENT, &data)
    }

    /// The action column of a change: id 4, integer.
    const ACTION_SPEC: u64 = (4 << 4) | 2;
    /// The predecessor count of a change: id 7, group.
    const PRED_GROUP_SPEC: u64 = 7 << 4;
    /// The key string column of a change: id 1, string.
    const KEY_STR_SPEC: u64 = (1 << 4) | TYPE_STRING;

    fn rle_run(count: i64, value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_sleb(&mut out, count);
        put_uleb(&mut out, value);
        out
    }

    fn deflate(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// Writes a DEFLATE bit stream: header fields least significant bit first,
    /// Huffman codes most significant bit first (RFC 1951, 3.1.1).
    #[derive(Default)]
    struct Bits {
        out: Vec<u8>,
        acc: u32,
        len: u32,
    }

    impl Bits {
        fn field(&mut self, value: u32, bits: u32) {
            for i in 0..bits {
                self.acc |= ((value >> i) & 1) << self.len;
                self.len += 1;
                if self.len == 8 {
                    self.out.push(self.acc as u8);
                    (self.acc, self.len) = (0, 0);
                }
            }
        }

        fn code(&mut self, code: u32, bits: u32) {
            for i in (0..bits).rev() {
                self.field((code >> i) & 1, 1);
            }
        }

        fn finish(mut self) -> Vec<u8> {
            if self.len > 0 {
                self.out.push(self.acc as u8);
            }
            self.out
        }
    }

    /// `len` zero bytes as one fixed-Huffman DEFLATE block: a literal zero, then
    /// "copy 258 bytes from 1 back" 13 bits at a time, then literal zeros. Built by
    /// hand because deflating 64 MiB takes seconds in a debug build.
    fn zeros_deflated(len: usize) -> Vec<u8> {
        const LITERAL_ZERO: u32 = 0b0011_0000; // literal 0: 8 bits
        const LENGTH_258: u32 = 0b1100_0101; // length code 285: 8 bits, no extra
        const DISTANCE_1: u32 = 0; // distance code 0: 5 bits, no extra
        const END_OF_BLOCK: u32 = 0; // code 256: 7 bits
        let mut bits = Bits::default();
        bits.field(1, 1); // final block
        bits.field(1, 2); // fixed Huffman codes
        let mut left = len;
        if left > 0 {
            bits.code(LITERAL_ZERO, 8);
            left -= 1;
        }
        while left >= 258 {
            bits.code(LENGTH_258, 8);
            bits.code(DISTANCE_1, 5);
            left -= 258;
        }
        for _ in 0..left {
            bits.code(LITERAL_ZERO, 8);
        }
        bits.code(END_OF_BLOCK, 7);
        bits.finish()
    }

    /// 64 MiB of zeros, deflated (about 420 KiB).
    fn zero_bomb() -> &'static [u8] {
        static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
        BOMB.get_or_init(|| zeros_deflated(64 * 1024 * 1024))
    }

    #[test]
    fn the_hand_built_deflate_stream_inflates_to_zeros() {
        for len in [0, 1, 2, 258, 259, 1000, 100_000] {
            let mut inflated = Vec::new();
            flate2::bufread::DeflateDecoder::new(zeros_deflated(len).as_slice())
                .read_to_end(&mut inflated)
                .unwrap();
            assert_eq!(inflated, vec![0; len], "len {len}");
        }
    }

    /// A document like a busy customer's: 2000 events with long JSON strings, so its
    /// columns pass Automerge's 256-byte threshold and `save()` deflates them.
    fn big_document() -> &'static Vec<u8> {
        static DOC: OnceLock<Vec<u8>> = OnceLock::new();
        DOC.get_or_init(|| {
            let mut doc = AutoCommit::new();
            let events = doc.put_object(ROOT, "events", ObjType::Map).unwrap();
            for i in 0..2000 {
                let json = format!(
                    "{{\"kind\":\"started\",\"seq\":{i},\"memo\":\"{}\"}}",
                    "折り返し希望、午後に再度連絡".repeat(3)
                );
                doc.put(&events, format!("call-{:04}/event-{i:05}", i / 4), json)
                    .unwrap();
            }
            doc.put(ROOT, "schema", 1_u64).unwrap();
            doc.save()
        })
    }

    fn small_changes() -> Vec<Vec<u8>> {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "schema", 1_u64).unwrap();
        doc.commit();
        let phones = doc.put_object(ROOT, "phones", ObjType::Map).unwrap();
        doc.put(&phones, "0312345678", "03-1234-5678").unwrap();
        doc.commit();
        let list = doc.put_object(ROOT, "list", ObjType::List).unwrap();
        for i in 0..20_i64 {
            doc.insert(&list, 0, i).unwrap();
        }
        doc.delete(&list, 3).unwrap();
        doc.put(ROOT, "flag", true).unwrap();
        doc.commit();
        let text = doc.put_object(ROOT, "note", ObjType::Text).unwrap();
        doc.splice_text(&text, 0, 0, "午後に折り返し").unwrap();
        doc.commit();
        doc.get_changes(&[])
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect()
    }

    #[test]
    fn leb128_numbers_read_back_at_their_extremes() {
        for value in [0, 1, 63, 64, 127, 128, 1 << 40, u64::MAX - 1, u64::MAX] {
            let mut bytes = Vec::new();
            put_uleb(&mut bytes, value);
            let mut r = Reader::new(&bytes);
            assert_eq!(r.uleb(), Ok(value));
            assert!(r.is_empty());
            assert_eq!(Reader::new(&bytes).skip_leb(), Ok(()));
        }
        for value in [
            0,
            1,
            -1,
            63,
            -64,
            64,
            -65,
            1 << 40,
            -(1 << 40),
            i64::MAX,
            i64::MIN,
        ] {
            let mut bytes = Vec::new();
            put_sleb(&mut bytes, value);
            let mut r = Reader::new(&bytes);
            assert_eq!(r.sleb(), Ok(value), "{value}");
            assert!(r.is_empty());
        }
        let eleven_bytes = [0xff; 10]
            .iter()
            .chain([0x01].iter())
            .copied()
            .collect::<Vec<_>>();
        assert!(Reader::new(&eleven_bytes).uleb().is_err());
        assert!(Reader::new(&eleven_bytes).sleb().is_err());
        assert!(Reader::new(&eleven_bytes).skip_leb().is_err());
        let too_big = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&too_big).uleb().is_err());
        assert!(Reader::new(&too_big).sleb().is_err());
    }

    #[test]
    fn local_changes_pass_one_by_one_and_concatenated() {
        let changes = small_changes();
        assert_eq!(changes.len(), 4);
        let mut joined = Vec::new();
        for change in &changes {
            let screened = screen(change).unwrap();
            assert_eq!(screened.change_chunks, 1);
            assert!(screened.rows >= 1);
            joined.extend(change);
        }
        let screened = screen(&joined).unwrap();
        assert_eq!(screened.change_chunks, 4);
        assert_eq!(screened.document_chunks, 0);
        assert!(screened.rows >= 20);
        let entries: Vec<&[u8]> = changes.iter().map(Vec::as_slice).collect();
        assert_eq!(
            screen_chunks(entries, &ScreenLimits::default())
                .unwrap()
                .change_chunks,
            4
        );
    }

    #[test]
    fn the_last_local_change_passes() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "company", "株式会社テスト").unwrap();
        let change = doc.get_last_local_change().unwrap();
        assert_eq!(screen(change.raw_bytes()).unwrap().change_chunks, 1);
    }

    #[test]
    fn a_change_with_extra_bytes_or_an_author_is_malformed() {
        let honest = small_changes().remove(1);
        let mut expanded = automerge::Change::try_from(honest.as_slice())
            .unwrap()
            .decode();
        expanded.hash = None;
        let mut with_extra = expanded.clone();
        with_extra.extra_bytes = vec![0; 40];
        let with_extra = automerge::Change::from(with_extra);
        assert!(matches!(
            screen(with_extra.raw_bytes()),
            Err(ScreenError::Malformed { .. })
        ));
        // The same change re-encoded without them passes: only the extra bytes count.
        let plain = automerge::Change::from(expanded);
        assert_eq!(screen(plain.raw_bytes()).unwrap().change_chunks, 1);
    }

    #[test]
    fn a_saved_document_with_deflated_columns_passes() {
        let saved = big_document();
        let screened = screen(saved).unwrap();
        assert_eq!(screened.document_chunks, 1);
        assert!(
            screened.inflated_bytes > saved.len(),
            "the document should have deflated columns: {screened:?}"
        );
        assert!(screened.rows >= 2000, "{screened:?}");
    }

    #[test]
    fn an_uncompressed_saved_document_passes() {
        let mut doc = AutoCommit::load(big_document()).unwrap();
        let screened = screen(&doc.save_nocompress()).unwrap();
        assert_eq!(screened.document_chunks, 1);
        assert_eq!(screened.inflated_bytes, 0);
        assert!(screened.rows >= 2000);
    }

    /// Sends `from`'s next sync message to `to` through the wire encoding, screening
    /// its chunks on the way; false when `from` had nothing to say.
    fn send_screened(
        from: &mut AutoCommit,
        from_state: &mut sync::State,
        to: &mut AutoCommit,
        to_state: &mut sync::State,
        seen: &mut Screened,
    ) -> bool {
        let Some(message) = from.sync().generate_sync_message(from_state) else {
            return false;
        };
        let message = sync::Message::decode(&message.encode()).unwrap();
        let screened = screen_chunks(message.changes.iter(), &ScreenLimits::default()).unwrap();
        seen.change_chunks += screened.change_chunks;
        seen.document_chunks += screened.document_chunks;
        to.sync().receive_sync_message(to_state, message).unwrap();
        true
    }

    #[test]
    fn real_sync_messages_pass() {
        let mut a = AutoCommit::load(big_document()).unwrap();
        for i in 0..10_u64 {
            a.put(ROOT, "schema", i).unwrap();
            a.commit();
        }
        let mut b = AutoCommit::new();
        let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
        let mut seen = Screened::default();
        let mut sync_until_quiet = |a: &mut AutoCommit, b: &mut AutoCommit, seen: &mut Screened| {
            for _ in 0..10 {
                let a_spoke = send_screened(a, &mut sa, b, &mut sb, seen);
                let b_spoke = send_screened(b, &mut sb, a, &mut sa, seen);
                if !a_spoke && !b_spoke {
                    return;
                }
            }
            panic!("sync did not settle");
        };
        sync_until_quiet(&mut a, &mut b, &mut seen);
        assert_eq!(a.get_heads(), b.get_heads());
        assert!(seen.document_chunks >= 1, "{seen:?}");

        b.put(ROOT, "owner", "user-2").unwrap();
        b.commit();
        a.put(ROOT, "company", "株式会社テスト").unwrap();
        a.commit();
        sync_until_quiet(&mut a, &mut b, &mut seen);
        assert_eq!(a.get_heads(), b.get_heads());
        assert!(seen.change_chunks >= 2, "{seen:?}");
    }

    #[test]
    fn a_hand_built_change_walks_like_a_real_one() {
        let change = hand_built_change(&[(ACTION_SPEC, rle_run(3, 1))]);
        let screened = screen(&change).unwrap();
        assert_eq!(screened.change_chunks, 1);
        assert_eq!(screened.rows, 3);
    }

    #[test]
    fn a_compressed_change_chunk_is_refused_without_inflating_it() {
        let bomb = chunk(CHUNK_COMPRESSED_CHANGE, zero_bomb());
        assert_eq!(screen(&bomb), Err(ScreenError::CompressedChange));
    }

    #[test]
    fn a_document_whose_column_is_a_deflate_bomb_is_refused() {
        let spec = ACTION_SPEC | SPEC_DEFLATE;
        let document = hand_built_document(&[(spec, zero_bomb().to_vec())]);
        let limit = ScreenLimits::DEFAULT_MAX_INFLATED_BYTES;
        assert_eq!(
            screen(&document),
            Err(ScreenError::InflatesTooMuch { limit })
        );
        let small = ScreenLimits {
            max_inflated_bytes: 1024,
            ..ScreenLimits::default()
        };
        assert_eq!(
            screen_chunks([document.as_slice()], &small),
            Err(ScreenError::InflatesTooMuch { limit: 1024 })
        );
    }

    #[test]
    fn a_deflate_bomb_as_raw_values_is_refused_too() {
        let spec = (5 << 4) | TYPE_VALUE_RAW | SPEC_DEFLATE;
        let document = hand_built_document(&[(spec, zero_bomb().to_vec())]);
        assert!(matches!(
            screen(&document),
            Err(ScreenError::InflatesTooMuch { .. })
        ));
    }

    #[test]
    fn the_inflation_budget_is_shared_by_the_whole_message() {
        let column = deflate(&[0; 600 * 1024]);
        let document = hand_built_document(&[((5 << 4) | TYPE_VALUE_RAW | SPEC_DEFLATE, column)]);
        let limits = ScreenLimits {
            max_inflated_bytes: 1024 * 1024,
            ..ScreenLimits::default()
        };
        assert!(screen_chunks([document.as_slice()], &limits).is_ok());
        assert_eq!(
            screen_chunks([document.as_slice(), document.as_slice()], &limits),
            Err(ScreenError::InflatesTooMuch { limit: 1024 * 1024 })
        );
    }

    #[test]
    fn a_deflated_column_that_is_not_deflate_data_is_malformed() {
        let document = hand_built_document(&[(ACTION_SPEC | SPEC_DEFLATE, vec![0xff; 40])]);
        assert!(matches!(
            screen(&document),
            Err(ScreenError::Malformed { .. })
        ));
    }

    #[test]
    fn a_change_whose_action_column_is_a_run_of_2_pow_40_is_refused() {
        let change = hand_built_change(&[(ACTION_SPEC, rle_run(1 << 40, 1))]);
        assert!(change.len() < 60);
        assert_eq!(
            screen(&change),
            Err(ScreenError::TooManyRows {
                rows: 1 << 40,
                limit: ScreenLimits::DEFAULT_MAX_ROWS
            })
        );
    }

    #[test]
    fn runs_of_nulls_literals_and_booleans_count_as_rows() {
        let mut nulls = vec![0];
        put_uleb(&mut nulls, 1 << 50);
        let mut literals = Vec::new();
        put_sleb(&mut literals, -(1 << 50));
        literals.push(1);
        let mut booleans = Vec::new();
        put_uleb(&mut booleans, 0);
        put_uleb(&mut booleans, 1 << 50);
        for (spec, column) in [
            (ACTION_SPEC, nulls),
            (ACTION_SPEC, literals),
            ((3 << 4) | TYPE_BOOLEAN, booleans),
        ] {
            let change = hand_built_change(&[(spec, column)]);
            assert!(
                matches!(screen(&change), Err(ScreenError::TooManyRows { .. })),
                "spec {spec:#x}"
            );
        }
    }

    #[test]
    fn a_group_claiming_2_pow_40_predecessors_is_refused() {
        let change = hand_built_change(&[
            (ACTION_SPEC, rle_run(1, 1)),
            (PRED_GROUP_SPEC, rle_run(1, 1 << 40)),
        ]);
        assert!(matches!(
            screen(&change),
            Err(ScreenError::TooManyRows { rows, .. }) if rows == 1 << 40
        ));
    }

    #[test]
    fn a_run_repeating_a_long_key_counts_against_the_inflation_budget() {
        let mut column = Vec::new();
        put_sleb(&mut column, 50_000);
        put_uleb(&mut column, 1024);
        column.extend([b'k'; 1024]);
        let change = hand_built_change(&[(KEY_STR_SPEC, column)]);
        assert_eq!(
            screen(&change),
            Err(ScreenError::InflatesTooMuch {
                limit: ScreenLimits::DEFAULT_MAX_INFLATED_BYTES
            })
        );
    }

    #[test]
    fn rows_add_up_across_the_chunks_of_one_message() {
        let change = hand_built_change(&[(ACTION_SPEC, rle_run(60_000, 1))]);
        assert_eq!(screen(&change).unwrap().rows, 60_000);
        assert_eq!(
            screen_chunks(
                [change.as_slice(), change.as_slice()],
                &ScreenLimits::default()
            ),
            Err(ScreenError::TooManyRows {
                rows: 120_000,
                limit: ScreenLimits::DEFAULT_MAX_ROWS
            })
        );
    }

    #[test]
    fn a_deflated_column_inside_a_change_is_malformed() {
        let column = deflate(&rle_run(3, 1));
        let change = hand_built_change(&[(ACTION_SPEC | SPEC_DEFLATE, column)]);
        assert!(matches!(
            screen(&change),
            Err(ScreenError::Malformed { reason }) if reason.contains("DEFLATE")
        ));
    }

    #[test]
    fn bundle_and_unknown_chunk_types_are_refused() {
        assert_eq!(
            screen(&chunk(CHUNK_BUNDLE, &[0; 8])),
            Err(ScreenError::Bundle)
        );
        for kind in [4, 0x7f, 0xff] {
            assert_eq!(
                screen(&chunk(kind, &[0; 8])),
                Err(ScreenError::UnknownChunkType(kind))
            );
        }
    }

    #[test]
    fn bad_magic_bytes_and_empty_entries_are_malformed() {
        let mut change = small_changes().remove(0);
        change[0] ^= 1;
        assert!(matches!(
            screen(&change),
            Err(ScreenError::Malformed { .. })
        ));
        assert!(matches!(screen(&[]), Err(ScreenError::Malformed { .. })));
    }

    #[test]
    fn trailing_bytes_after_a_chunk_are_malformed() {
        let mut change = small_changes().remove(0);
        change.push(0);
        assert!(matches!(
            screen(&change),
            Err(ScreenError::Malformed { .. })
        ));
    }

    #[test]
    fn every_truncation_of_a_real_chunk_is_an_error() {
        let mut doc = AutoCommit::load(big_document()).unwrap();
        let mut chunks = small_changes();
        chunks.push(big_document().clone());
        chunks.push(doc.save_nocompress());
        for bytes in &chunks {
            assert!(screen(bytes).is_ok());
            for cut in 0..bytes.len() {
                assert!(screen(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn cutting_concatenated_changes_anywhere_but_a_boundary_is_an_error() {
        let changes = small_changes();
        let joined: Vec<u8> = changes.concat();
        let mut boundaries = Vec::new();
        let mut end = 0;
        for change in &changes {
            end += change.len();
            boundaries.push(end);
        }
        for cut in 1..joined.len() {
            let result = screen(&joined[..cut]);
            assert_eq!(result.is_ok(), boundaries.contains(&cut), "cut at {cut}");
        }
    }

    #[test]
    fn too_many_chunks_are_refused() {
        let change = small_changes().remove(0);
        let limits = ScreenLimits {
            max_chunks: 3,
            ..ScreenLimits::default()
        };
        assert!(screen_chunks([change.repeat(3).as_slice()], &limits).is_ok());
        assert_eq!(
            screen_chunks(
                [change.repeat(2).as_slice(), change.repeat(2).as_slice()],
                &limits
            ),
            Err(ScreenError::TooManyChunks { limit: 3 })
        );
    }

    #[test]
    fn every_error_has_its_own_code_and_a_japanese_message() {
        let errors = [
            ScreenError::CompressedChange,
            ScreenError::Bundle,
            ScreenError::UnknownChunkType(9),
            ScreenError::malformed("x"),
            ScreenError::InflatesTooMuch { limit: 1 },
            ScreenError::TooManyRows { rows: 2, limit: 1 },
            ScreenError::TooManyChunks { limit: 1 },
        ];
        let codes: std::collections::BTreeSet<_> = errors.iter().map(ScreenError::code).collect();
        assert_eq!(codes.len(), errors.len());
        for error in &errors {
            assert!(!error.message_ja().is_empty());
            assert!(!error.to_string().is_empty());
        }
    }

    /// Small budgets so a mutated deflate stream cannot make a case slow.
    fn fuzz_limits() -> ScreenLimits {
        ScreenLimits {
            max_inflated_bytes: 256 * 1024,
            max_rows: 10_000,
            max_chunks: 64,
        }
    }

    fn real_chunks() -> &'static [Vec<u8>] {
        static CHUNKS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        CHUNKS.get_or_init(|| {
            let mut doc = AutoCommit::new();
            let events = doc.put_object(ROOT, "events", ObjType::Map).unwrap();
            for i in 0..40 {
                doc.put(&events, format!("call-{i}/e"), "x".repeat(20 + i))
                    .unwrap();
            }
            let mut chunks = small_changes();
            chunks.push(doc.save());
            chunks.push(big_document().clone());
            chunks
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            rng_seed: proptest::test_runner::RngSeed::Fixed(23),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn random_bytes_never_panic(
            kind in 0_u8..5,
            body in proptest::collection::vec(any::<u8>(), 0..300),
            raw in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut framed = MAGIC.to_vec();
            framed.extend([0; 4]);
            framed.push(kind);
            framed.extend(&body);
            let _ = screen_chunks([framed.as_slice()], &fuzz_limits());
            let _ = screen_chunks([raw.as_slice()], &fuzz_limits());
        }

        #[test]
        fn mutations_of_real_chunks_never_panic(
            which in 0_usize..7,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let chunks = real_chunks();
            let mut bytes = chunks[which % chunks.len()].clone();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let _ = screen_chunks([bytes.as_slice()], &fuzz_limits());
        }
    }
}
