//! Reading a spool back: [`SpoolReader`] hands out the events to write, in order, holding a
//! billable record back until its final record arrives; [`read_dir_events`] does the same for
//! a directory without opening it as a spool.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use maas_billing::UsageEvent;
use uuid::Uuid;

use super::codec::{decode, Decoded};
use super::{segment_path, RecordKind, Spool, SEGMENT_MAGIC};

/// Bytes read from a segment at a time.
const READ_CHUNK: usize = 1 << 20;

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

impl SpoolReader {
    /// A reader of `spool` from segment `first` on.
    pub(super) fn new(spool: Arc<Spool>, first: u64) -> SpoolReader {
        SpoolReader {
            spool,
            segment: first,
            offset: 0,
            file: None,
            held: HashMap::new(),
            buf: Vec::new(),
            skipped: 0,
        }
    }

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
