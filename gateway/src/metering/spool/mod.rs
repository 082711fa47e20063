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
//!          | u8 presence bits (tenant, key, model, version; bits 4..7: the call kind) | [16 tenant] | [16 key]
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

mod codec;
mod reader;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use maas_billing::UsageEvent;
use tokio::sync::Notify;

use self::codec::encode;
pub use self::reader::{read_dir_events, SpoolReader};

/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"MAASSPL1";

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

pub(super) fn segment_path(dir: &Path, id: u64) -> PathBuf {
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
        SpoolReader::new(self.clone(), first)
    }

    /// (active segment id, readable length of the active segment).
    pub(super) fn active(&self) -> (u64, u64) {
        let st = self.state();
        (st.id, st.len)
    }

    /// The first segment id after `id` (sealed or active), if any.
    pub(super) fn next_segment(&self, id: u64) -> Option<u64> {
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
