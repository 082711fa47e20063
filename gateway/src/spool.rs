//! The usage spool: an append-only local log of usage events, written on the request path before
//! the client sees the response, read back by the usage writer, trimmed after commit.
//!
//! # Files
//! A spool is one directory holding a `LOCK` file (an exclusive `flock`, so two gateways never
//! share a spool) and segment files `<id>.seg` (`id`: 20 decimal digits, increasing). A segment
//! starts with the 8-byte magic `MAASSPL1` and then holds records:
//!
//! ```text
//! u32 LE payload length | u32 LE CRC-32 (IEEE) of the payload | payload
//! payload: u8 kind (1 billable, 2 final) | 16 request id | i64 started_at (µs since the epoch)
//!          | u8 presence bits (tenant, key, model, version) | [16 tenant] | [16 key]
//!          | i16 status | i64 inference count | i64 compute µs | i64 request bytes
//!          | i64 response bytes | i64 latency µs | [u16 len, model] | [u16 len, version]
//! ```
//!
//! # Two records per billable request
//! - a **billable** record ([`RecordKind::Billable`]) in the proxy's `response_filter`, before
//!   the response header goes to the client, with what the backend's usage headers say;
//! - the **final** record ([`RecordKind::Final`]) in the `logging` phase, with bytes, latency
//!   and the status the client got. It supersedes the billable record of the same request id.
//!
//! The reader ([`SpoolReader`]) holds a billable record back until its final record arrives and
//! then writes only the final one. A billable record from an earlier run (the gateway was
//! killed between the two writes) has no final record: it is written as it is when the reader
//! reaches the segments of the current run. A SIGKILL at any point therefore loses nothing that
//! reached the OS, and the database's dedup on the request id counts nothing twice.
//!
//! # Durability and bounds
//! - Every record is one `pwrite` to the active segment (it reaches the page cache, which
//!   survives the process); [`Spool::sync`] (`fdatasync`, called on a configured interval)
//!   bounds what a machine crash can lose.
//! - A torn tail (a crash in the middle of a write) ends a segment on reopen, with a warning;
//!   corrupt bytes inside a segment (a bad checksum) are skipped up to the next valid record.
//! - The spool never appends to a segment of an earlier run: each open starts a new segment.
//! - [`Spool::is_full`]: total bytes on disk at or above the configured bound.
//! - A segment is deleted only once every record in it is committed ([`SpoolReader::commit`]).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use maas_billing::UsageEvent;
use tokio::sync::Notify;
use uuid::Uuid;

/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"MAASSPL1";
/// Header bytes of a record (length and checksum).
const RECORD_HEADER: usize = 8;
/// Largest payload accepted on read (strings are at most 64 KiB each when written).
const MAX_PAYLOAD: usize = 2 * 65_535 + 256;
/// Bytes read from a segment at a time.
const READ_CHUNK: usize = 1 << 20;

/// Which of a request's two records this is (see the module notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Written before the response header reaches the client: the backend's usage.
    Billable = 1,
    /// Written in the logging phase; supersedes the billable record of the same request.
    Final = 2,
}

/// Sizes of a spool, from the gateway's `[metering]` configuration.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// The spool directory (created if missing).
    pub dir: PathBuf,
    /// A segment is sealed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
    /// [`Spool::is_full`] once all segments together hold this many bytes.
    pub max_bytes: u64,
}

/// Counters of a spool.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Records appended by this process.
    pub appended: AtomicU64,
    /// Bytes in all segment files on disk.
    pub bytes: AtomicU64,
    /// Segment files deleted after their records were committed.
    pub trimmed_segments: AtomicU64,
    /// Segments whose tail was torn (a record cut short) when read.
    pub torn_tails: AtomicU64,
    /// Corrupt bytes skipped inside segments (a bad checksum mid-segment: the reader moves on
    /// to the next valid record).
    pub corrupt_bytes: AtomicU64,
}

struct Active {
    id: u64,
    file: Arc<File>,
    /// Bytes written (and readable) in the active segment, header included.
    len: u64,
    /// Records written since the last sync.
    dirty: bool,
    /// Directory entries created since the last sync.
    dir_dirty: bool,
    /// Sealed segments not yet synced.
    unsynced: Vec<Arc<File>>,
    /// Sealed segments on disk: id -> size in bytes.
    sealed: BTreeMap<u64, u64>,
}

/// An open spool directory (see the module notes). Shared between the request path (appends)
/// and the usage writer (reads and trims).
pub struct Spool {
    options: SpoolOptions,
    state: Mutex<Active>,
    appended: Notify,
    stats: SpoolStats,
    /// First segment id of this process; lower ids are from earlier runs.
    boot_segment: u64,
    _lock: File,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn create_segment(dir: &Path, id: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(segment_path(dir, id))?;
    file.write_all_at(SEGMENT_MAGIC, 0)?;
    Ok(file)
}

fn lock_exclusive(file: &File, dir: &Path) -> io::Result<()> {
    // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("spool {} is in use by another process ({e})", dir.display()),
        ))
    }
}

impl Spool {
    /// Opens (creating if needed) the spool in `options.dir`, locks it, and starts a new
    /// segment after any left by earlier runs (those are read first, see [`Spool::reader`]).
    ///
    /// # Errors
    /// The directory cannot be created or read, or another process holds its lock.
    pub fn open(options: SpoolOptions) -> io::Result<Arc<Spool>> {
        let dir = options.dir.clone();
        fs::create_dir_all(&dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        lock_exclusive(&lock, &dir)?;
        let mut sealed = BTreeMap::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            sealed.insert(id, entry.metadata()?.len());
        }
        let id = sealed.keys().next_back().map_or(1, |last| last + 1);
        let file = create_segment(&dir, id)?;
        File::open(&dir)?.sync_all()?;
        let stats = SpoolStats::default();
        let header = SEGMENT_MAGIC.len() as u64;
        stats
            .bytes
            .store(sealed.values().sum::<u64>() + header, Ordering::Relaxed);
        Ok(Arc::new(Spool {
            options,
            state: Mutex::new(Active {
                id,
                file: Arc::new(file),
                len: header,
                dirty: true,
                dir_dirty: false,
                unsynced: Vec::new(),
                sealed,
            }),
            appended: Notify::new(),
            stats,
            boot_segment: id,
            _lock: lock,
        }))
    }

    fn state(&self) -> MutexGuard<'_, Active> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// Counters.
    pub fn stats(&self) -> &SpoolStats {
        &self.stats
    }

    /// Whether the segments on disk hold `max_bytes` or more (the request path then applies
    /// the configured policy: 503 or serve unmetered).
    pub fn is_full(&self) -> bool {
        self.stats.bytes.load(Ordering::Relaxed) >= self.options.max_bytes
    }

    /// Appends one record: one `pwrite` of the encoded record at the end of the active
    /// segment, which is sealed and replaced by a new one first if it is full. Wakes the
    /// reader. Appends regardless of [`Spool::is_full`] (callers decide before).
    ///
    /// # Errors
    /// The write failed (disk full, I/O error); nothing readable was added.
    pub fn append(&self, kind: RecordKind, event: &UsageEvent) -> io::Result<()> {
        let mut record = Vec::with_capacity(192);
        encode(kind, event, &mut record);
        let n = record.len() as u64;
        {
            let mut st = self.state();
            if st.len >= self.options.segment_bytes {
                self.roll(&mut st)?;
            }
            st.file.write_all_at(&record, st.len)?;
            st.len += n;
            st.dirty = true;
        }
        self.stats.bytes.fetch_add(n, Ordering::Relaxed);
        self.stats.appended.fetch_add(1, Ordering::Relaxed);
        self.appended.notify_one();
        Ok(())
    }

    /// Seals the active segment and starts the next one.
    fn roll(&self, st: &mut Active) -> io::Result<()> {
        let next = st.id + 1;
        let file = Arc::new(create_segment(&self.options.dir, next)?);
        let old = std::mem::replace(&mut st.file, file);
        st.unsynced.push(old);
        st.sealed.insert(st.id, st.len);
        st.id = next;
        st.len = SEGMENT_MAGIC.len() as u64;
        st.dir_dirty = true;
        self.stats
            .bytes
            .fetch_add(SEGMENT_MAGIC.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Makes everything appended so far durable (`fdatasync` of the written segments, `fsync`
    /// of the directory when segments were created). Blocking; called by a background task on
    /// the configured interval and at shutdown. Cheap when nothing was written.
    ///
    /// # Errors
    /// The sync failed.
    pub fn sync(&self) -> io::Result<()> {
        let (file, unsynced, dir_dirty) = {
            let mut st = self.state();
            if !st.dirty && st.unsynced.is_empty() && !st.dir_dirty {
                return Ok(());
            }
            st.dirty = false;
            let dir_dirty = std::mem::take(&mut st.dir_dirty);
            (st.file.clone(), std::mem::take(&mut st.unsynced), dir_dirty)
        };
        for f in unsynced {
            f.sync_data()?;
        }
        file.sync_data()?;
        if dir_dirty {
            File::open(&self.options.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Resolves after the next append (or at once if one happened since the last wait).
    pub async fn appended(&self) {
        self.appended.notified().await;
    }

    /// A reader over every segment, oldest first (earlier runs' segments included).
    /// Only one reader should consume a spool.
    pub fn reader(self: &Arc<Self>) -> SpoolReader {
        let first = {
            let st = self.state();
            st.sealed.keys().next().copied().unwrap_or(st.id)
        };
        SpoolReader {
            spool: self.clone(),
            segment: first,
            offset: 0,
            file: None,
            held: HashMap::new(),
            buf: Vec::new(),
            skipped: 0,
        }
    }

    /// (active segment id, readable length of the active segment).
    fn active(&self) -> (u64, u64) {
        let st = self.state();
        (st.id, st.len)
    }

    /// The first segment id after `id` (sealed or active), if any.
    fn next_segment(&self, id: u64) -> Option<u64> {
        let st = self.state();
        st.sealed
            .range(id + 1..)
            .next()
            .map(|(k, _)| *k)
            .or((st.id > id).then_some(st.id))
    }

    /// Deletes every sealed segment with an id below `frontier` (a value of
    /// [`SpoolReader::frontier`] whose events are all committed). Returns how many.
    ///
    /// # Errors
    /// Deleting a file failed.
    pub fn trim_below(&self, frontier: u64) -> io::Result<usize> {
        let doomed: Vec<(u64, u64)> = {
            let mut st = self.state();
            let keep = st.sealed.split_off(&frontier);
            let doomed = std::mem::replace(&mut st.sealed, keep);
            if !doomed.is_empty() {
                st.dir_dirty = true;
            }
            doomed.into_iter().collect()
        };
        for (id, size) in &doomed {
            match fs::remove_file(segment_path(&self.options.dir, *id)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.stats.bytes.fetch_sub(*size, Ordering::Relaxed);
            self.stats.trimmed_segments.fetch_add(1, Ordering::Relaxed);
        }
        Ok(doomed.len())
    }
}

/// Reads the spool in order and hands out the events to write (see the module notes):
/// final records, and billable records of earlier runs that never got a final one.
pub struct SpoolReader {
    spool: Arc<Spool>,
    segment: u64,
    /// Next byte to read in `segment` (0: the header is not checked yet).
    offset: u64,
    file: Option<File>,
    /// Billable records waiting for their final record: request id -> (event, segment).
    held: HashMap<Uuid, (UsageEvent, u64)>,
    buf: Vec<u8>,
    /// Corrupt bytes skipped in the current segment.
    skipped: u64,
}

/// One step of decoding at a position in a buffer.
enum Decoded {
    Record(RecordKind, Box<UsageEvent>, usize),
    Incomplete,
    Corrupt(&'static str),
}

impl SpoolReader {
    /// Appends up to `max` events ready to be written to `out` and returns how many. Returns 0
    /// when everything appended so far has been read (wait on [`Spool::appended`]).
    ///
    /// # Errors
    /// Reading a segment failed (the position is kept; call again later).
    pub fn read(&mut self, out: &mut Vec<UsageEvent>, max: usize) -> io::Result<usize> {
        let start = out.len();
        while out.len() - start < max {
            let (active_id, active_len) = self.spool.active();
            let sealed = self.segment < active_id;
            if self.file.is_none() {
                match File::open(segment_path(self.spool.dir(), self.segment)) {
                    Ok(f) => self.file = Some(f),
                    Err(e) if e.kind() == io::ErrorKind::NotFound && sealed => {
                        self.advance(out);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let file = self.file.as_ref().expect("opened above");
            if self.offset == 0 {
                let mut magic = [0u8; 8];
                let n = read_full_at(file, &mut magic, 0)?;
                if n < magic.len() || &magic != SEGMENT_MAGIC {
                    if sealed {
                        tracing::warn!(
                            segment = self.segment,
                            "spool segment without a valid header; skipped"
                        );
                        self.spool.stats.torn_tails.fetch_add(1, Ordering::Relaxed);
                        self.advance(out);
                        continue;
                    }
                    return Ok(out.len() - start);
                }
                self.offset = magic.len() as u64;
            }
            let limit = if sealed { u64::MAX } else { active_len };
            if self.offset >= limit {
                return Ok(out.len() - start);
            }
            let want = (limit - self.offset).min(READ_CHUNK as u64) as usize;
            self.buf.resize(want, 0);
            let got = read_full_at(file, &mut self.buf, self.offset)?;
            self.buf.truncate(got);
            let mut pos = 0;
            let mut stop: Option<&'static str> = None;
            let mut resyncing = false;
            while pos < self.buf.len() && out.len() - start < max {
                match decode(&self.buf[pos..]) {
                    Decoded::Record(kind, event, size) => {
                        pos += size;
                        resyncing = false;
                        self.accept(kind, *event, out);
                    }
                    // While resynchronising, garbage may look like a record running past the
                    // end of the file: keep scanning.
                    Decoded::Incomplete if resyncing && got < want => {
                        pos += 1;
                        self.skipped += 1;
                    }
                    Decoded::Incomplete => {
                        if got < want || pos == 0 {
                            stop = Some("torn record at the end");
                        }
                        break;
                    }
                    Decoded::Corrupt(_) if sealed => {
                        // Resynchronise: look for the next record one byte further on (a
                        // record's checksum makes a false start vanishingly unlikely).
                        pos += 1;
                        self.skipped += 1;
                        resyncing = true;
                    }
                    Decoded::Corrupt(why) => {
                        stop = Some(why);
                        break;
                    }
                }
            }
            self.offset += pos as u64;
            if sealed && (got == 0 || stop.is_some()) {
                if let Some(why) = stop {
                    tracing::warn!(
                        segment = self.segment,
                        offset = self.offset,
                        why,
                        "spool segment ends in a torn or corrupt record; the rest is skipped"
                    );
                    self.spool.stats.torn_tails.fetch_add(1, Ordering::Relaxed);
                }
                self.advance(out);
            } else if !sealed && stop.is_some() {
                tracing::error!(
                    segment = self.segment,
                    offset = self.offset,
                    "corrupt record in the active spool segment; skipping to its end"
                );
                self.offset = limit;
            }
        }
        Ok(out.len() - start)
    }

    fn accept(&mut self, kind: RecordKind, event: UsageEvent, out: &mut Vec<UsageEvent>) {
        match kind {
            RecordKind::Billable => {
                self.held.insert(event.request_id, (event, self.segment));
            }
            RecordKind::Final => {
                self.held.remove(&event.request_id);
                out.push(event);
            }
        }
    }

    /// Moves to the next segment. Leaving the last segment of earlier runs releases their
    /// billable records that never got a final record.
    fn advance(&mut self, out: &mut Vec<UsageEvent>) {
        if self.skipped > 0 {
            tracing::warn!(
                segment = self.segment,
                bytes = self.skipped,
                "spool segment held corrupt bytes; skipped them and read the records after"
            );
            self.spool
                .stats
                .corrupt_bytes
                .fetch_add(self.skipped, Ordering::Relaxed);
            self.skipped = 0;
        }
        let next = self
            .spool
            .next_segment(self.segment)
            .unwrap_or(self.spool.boot_segment);
        let boot = self.spool.boot_segment;
        if self.segment < boot && next >= boot {
            let orphans: Vec<Uuid> = self
                .held
                .iter()
                .filter(|(_, (_, seg))| *seg < boot)
                .map(|(id, _)| *id)
                .collect();
            if !orphans.is_empty() {
                tracing::info!(
                    events = orphans.len(),
                    "spool: billable records of an earlier run without a final record are written as they are"
                );
            }
            for id in orphans {
                if let Some((event, _)) = self.held.remove(&id) {
                    out.push(event);
                }
            }
        }
        self.segment = next;
        self.offset = 0;
        self.file = None;
    }

    /// Call after every event handed out so far is committed: deletes the segments that hold
    /// nothing uncommitted any more. Returns how many were deleted.
    ///
    /// # Errors
    /// Deleting a file failed.
    pub fn commit(&mut self) -> io::Result<usize> {
        self.spool.trim_below(self.frontier())
    }

    /// The lowest segment still needed by what was not handed out yet (the segment being read,
    /// or one holding a billable record waiting for its final record). Once every event handed
    /// out so far is committed, segments below it may go ([`Spool::trim_below`]).
    pub fn frontier(&self) -> u64 {
        self.held
            .values()
            .map(|(_, seg)| *seg)
            .min()
            .unwrap_or(u64::MAX)
            .min(self.segment)
    }

    /// Billable records waiting for their final record.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Encodes one record (header and payload, see the module notes) onto `out`.
pub fn encode(kind: RecordKind, e: &UsageEvent, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    out.push(kind as u8);
    out.extend_from_slice(e.request_id.as_bytes());
    out.extend_from_slice(&e.started_at.timestamp_micros().to_le_bytes());
    let flags = u8::from(e.tenant_id.is_some())
        | u8::from(e.api_key_id.is_some()) << 1
        | u8::from(e.model.is_some()) << 2
        | u8::from(e.model_version.is_some()) << 3;
    out.push(flags);
    for id in [e.tenant_id, e.api_key_id].into_iter().flatten() {
        out.extend_from_slice(id.as_bytes());
    }
    out.extend_from_slice(&e.http_status.to_le_bytes());
    for v in [
        e.inference_count,
        e.compute_us,
        e.request_bytes,
        e.response_bytes,
        e.latency_us,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for s in [&e.model, &e.model_version].into_iter().flatten() {
        let mut end = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        out.extend_from_slice(&(end as u16).to_le_bytes());
        out.extend_from_slice(&s.as_bytes()[..end]);
    }
    let payload = &out[start + RECORD_HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_le_bytes([b[0], b[1]]))
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn uuid(&mut self) -> Option<Uuid> {
        self.take(16)
            .map(|b| Uuid::from_bytes(b.try_into().expect("16 bytes")))
    }
    fn string(&mut self) -> Option<String> {
        let len = self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))?;
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < RECORD_HEADER {
        return Decoded::Incomplete;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_PAYLOAD {
        return Decoded::Corrupt("record length out of range");
    }
    if buf.len() < RECORD_HEADER + len {
        return Decoded::Incomplete;
    }
    let payload = &buf[RECORD_HEADER..RECORD_HEADER + len];
    if crc32fast::hash(payload) != crc {
        return Decoded::Corrupt("checksum mismatch");
    }
    match decode_payload(payload) {
        Some((kind, event)) => Decoded::Record(kind, Box::new(event), RECORD_HEADER + len),
        None => Decoded::Corrupt("undecodable payload"),
    }
}

fn decode_payload(payload: &[u8]) -> Option<(RecordKind, UsageEvent)> {
    let mut c = Cursor(payload);
    let kind = match c.u8()? {
        1 => RecordKind::Billable,
        2 => RecordKind::Final,
        _ => return None,
    };
    let request_id = c.uuid()?;
    let started_at = DateTime::<Utc>::from_timestamp_micros(c.i64()?)?;
    let flags = c.u8()?;
    let tenant_id = if flags & 1 != 0 {
        Some(c.uuid()?)
    } else {
        None
    };
    let api_key_id = if flags & 2 != 0 {
        Some(c.uuid()?)
    } else {
        None
    };
    let http_status = c.i16()?;
    let inference_count = c.i64()?;
    let compute_us = c.i64()?;
    let request_bytes = c.i64()?;
    let response_bytes = c.i64()?;
    let latency_us = c.i64()?;
    let model = if flags & 4 != 0 {
        Some(c.string()?)
    } else {
        None
    };
    let model_version = if flags & 8 != 0 {
        Some(c.string()?)
    } else {
        None
    };
    if !c.0.is_empty() {
        return None;
    }
    Some((
        kind,
        UsageEvent {
            request_id,
            started_at,
            tenant_id,
            api_key_id,
            model,
            model_version,
            http_status,
            inference_count,
            compute_us,
            request_bytes,
            response_bytes,
            latency_us,
        },
    ))
}

/// Reads every event a spool directory would hand to the usage writer (finals, and billable
/// records without a final), without locking or changing it. For tests and inspection.
///
/// # Errors
/// A segment could not be read.
pub fn read_dir_events(dir: &Path) -> io::Result<Vec<UsageEvent>> {
    let mut ids: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    ids.sort_unstable();
    let mut finals = Vec::new();
    let mut held: HashMap<Uuid, UsageEvent> = HashMap::new();
    for id in ids {
        let data = fs::read(segment_path(dir, id))?;
        if data.len() < 8 || &data[..8] != SEGMENT_MAGIC {
            continue;
        }
        let mut pos = 8;
        while let Decoded::Record(kind, event, size) = decode(&data[pos..]) {
            pos += size;
            match kind {
                RecordKind::Billable => {
                    held.insert(event.request_id, *event);
                }
                RecordKind::Final => {
                    held.remove(&event.request_id);
                    finals.push(*event);
                }
            }
        }
    }
    finals.extend(held.into_values());
    Ok(finals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn event(i: i64, model: Option<&str>) -> UsageEvent {
        UsageEvent {
            request_id: Uuid::now_v7(),
            started_at: DateTime::<Utc>::from_timestamp_micros(1_795_000_000_000_000 + i).unwrap(),
            tenant_id: Some(Uuid::now_v7()),
            api_key_id: (i % 2 == 0).then(Uuid::now_v7),
            model: model.map(str::to_string),
            model_version: (i % 3 == 0).then(|| "1".to_string()),
            http_status: 200,
            inference_count: i,
            compute_us: 10 * i,
            request_bytes: 100,
            response_bytes: 50 + i,
            latency_us: 999,
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("maas-spool-{tag}-{}", Uuid::new_v4().simple()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn options(dir: &Path) -> SpoolOptions {
        SpoolOptions {
            dir: dir.to_path_buf(),
            segment_bytes: 1024,
            max_bytes: 1 << 20,
        }
    }

    fn drain(reader: &mut SpoolReader) -> Vec<UsageEvent> {
        let mut out = Vec::new();
        while reader.read(&mut out, 7).unwrap() > 0 {}
        out
    }

    #[test]
    fn records_round_trip() {
        for e in [
            event(1, Some("digits")),
            event(6, None),
            event(3, Some("ünï")),
        ] {
            for kind in [RecordKind::Billable, RecordKind::Final] {
                let mut buf = Vec::new();
                encode(kind, &e, &mut buf);
                match decode(&buf) {
                    Decoded::Record(k, back, size) => {
                        assert_eq!(k, kind);
                        assert_eq!(*back, e);
                        assert_eq!(size, buf.len());
                    }
                    _ => panic!("did not decode"),
                }
                assert!(matches!(decode(&buf[..buf.len() - 1]), Decoded::Incomplete));
                let mut bad = buf.clone();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                assert!(matches!(decode(&bad), Decoded::Corrupt(_)));
            }
        }
    }

    #[test]
    fn final_supersedes_billable_and_segments_are_trimmed_after_commit() {
        let dir = tempdir("trim");
        let spool = Spool::open(options(&dir)).unwrap();
        let mut reader = spool.reader();
        let mut expected = Vec::new();
        for i in 0..40 {
            let mut e = event(i, Some("m"));
            spool.append(RecordKind::Billable, &e).unwrap();
            e.response_bytes += 1000;
            spool.append(RecordKind::Final, &e).unwrap();
            expected.push(e);
        }
        // One request still in flight: billable record only.
        let open = event(99, Some("m"));
        spool.append(RecordKind::Billable, &open).unwrap();
        let got = drain(&mut reader);
        assert_eq!(got, expected, "finals only, in order");
        assert_eq!(reader.held(), 1);
        let segments_before = fs::read_dir(&dir).unwrap().count();
        assert!(segments_before > 3, "small segments roll over");
        reader.commit().unwrap();
        let segments_after = fs::read_dir(&dir).unwrap().count();
        assert!(
            segments_after < segments_before,
            "committed segments deleted"
        );
        // The segment holding the in-flight billable record survives until its final arrives.
        let mut fin = open.clone();
        fin.latency_us = 5;
        spool.append(RecordKind::Final, &fin).unwrap();
        assert_eq!(drain(&mut reader), vec![fin]);
        reader.commit().unwrap();
        assert_eq!(reader.held(), 0);
        // LOCK and the active segment remain.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
        drop(reader);
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reopen_replays_orphans_tolerates_torn_tail_and_locks() {
        let dir = tempdir("reopen");
        let spool = Spool::open(options(&dir)).unwrap();
        assert!(
            Spool::open(options(&dir)).is_err(),
            "second opener is refused"
        );
        let done = event(1, Some("m"));
        spool.append(RecordKind::Billable, &done).unwrap();
        spool.append(RecordKind::Final, &done).unwrap();
        let orphan = event(2, Some("m"));
        spool.append(RecordKind::Billable, &orphan).unwrap();
        spool.sync().unwrap();
        drop(spool);
        // A torn tail: half a record at the end of the last segment.
        let last = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .max()
            .unwrap();
        let mut torn = Vec::new();
        encode(RecordKind::Final, &event(3, None), &mut torn);
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(f);

        let spool = Spool::open(options(&dir)).unwrap();
        let mut reader = spool.reader();
        let got = drain(&mut reader);
        assert_eq!(got, vec![done.clone(), orphan.clone()]);
        assert_eq!(spool.stats().torn_tails.load(Ordering::Relaxed), 1);
        assert_eq!(read_dir_events(&dir).unwrap().len(), 2);
        reader.commit().unwrap();
        assert!(read_dir_events(&dir).unwrap().is_empty(), "trimmed");
        drop(reader);
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corruption_mid_segment_skips_only_the_bad_record() {
        // The flipped byte: in the length, the checksum, then the payload of the 4th record.
        for (flip, at) in [(0x01u8, 0usize), (0x10, 5), (0xff, 20)] {
            let dir = tempdir("corrupt");
            let spool = Spool::open(SpoolOptions {
                segment_bytes: 1 << 20,
                ..options(&dir)
            })
            .unwrap();
            let events: Vec<UsageEvent> = (0..10).map(|i| event(i, Some("m"))).collect();
            for e in &events {
                spool.append(RecordKind::Final, e).unwrap();
            }
            drop(spool);
            let seg = segment_path(&dir, 1);
            let mut data = fs::read(&seg).unwrap();
            let fourth: usize = 8 + events[..3]
                .iter()
                .map(|e| {
                    let mut one = Vec::new();
                    encode(RecordKind::Final, e, &mut one);
                    one.len()
                })
                .sum::<usize>();
            data[fourth + at] ^= flip;
            fs::write(&seg, &data).unwrap();
            let spool = Spool::open(options(&dir)).unwrap();
            let mut reader = spool.reader();
            let got = drain(&mut reader);
            let mut expected = events.clone();
            expected.remove(3);
            assert_eq!(got, expected, "byte {at} flipped with {flip:#x}");
            assert!(spool.stats().corrupt_bytes.load(Ordering::Relaxed) > 0);
            drop(reader);
            drop(spool);
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn size_bound() {
        let dir = tempdir("full");
        let spool = Spool::open(SpoolOptions {
            dir: dir.clone(),
            segment_bytes: 512,
            max_bytes: 2048,
        })
        .unwrap();
        let mut reader = spool.reader();
        let mut n = 0;
        while !spool.is_full() {
            spool
                .append(RecordKind::Final, &event(n, Some("m")))
                .unwrap();
            n += 1;
        }
        assert!(n > 5);
        assert_eq!(drain(&mut reader).len() as i64, n);
        reader.commit().unwrap();
        assert!(!spool.is_full(), "trimming frees room");
        drop(reader);
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }
}
