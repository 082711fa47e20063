//! Unit tests of the spool: round trips, torn tails, corruption, trimming, locking.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use maas_billing::UsageEvent;
use uuid::Uuid;

use super::codec::{decode, encode, Decoded};
use super::*;

fn event(i: i64, model: Option<&str>) -> UsageEvent {
    UsageEvent {
        request_id: Uuid::now_v7(),
        started_at: DateTime::<Utc>::from_timestamp_micros(1_795_000_000_000_000 + i).unwrap(),
        tenant_id: Some(Uuid::now_v7()),
        api_key_id: (i % 2 == 0).then(Uuid::now_v7),
        model: model.map(str::to_string),
        model_version: (i % 3 == 0).then(|| "1".to_string()),
        http_status: 200,
        call: maas_billing::CallKind::Inference,
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

#[test]
fn decoding_arbitrary_bytes_never_panics() {
    use proptest::prelude::*;
    proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..600))| {
        let mut at = 0;
        // Step through the buffer like the reader does, skipping one byte on corruption.
        while at < bytes.len() {
            match decode(&bytes[at..]) {
                Decoded::Record(_, _, n) => at += n,
                Decoded::Incomplete => break,
                Decoded::Corrupt(_) => at += 1,
            }
        }
    });
}

#[test]
fn truncated_and_corrupted_segments_yield_only_written_events() {
    use proptest::prelude::*;
    let config = ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        cut in 0usize..4000,
        damage in proptest::collection::vec((0usize..4000, any::<u8>()), 0..4),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
    )| {
        let dir = tempdir("fuzz");
        let spool = Spool::open(SpoolOptions { segment_bytes: 1 << 20, ..options(&dir) }).unwrap();
        let events: Vec<UsageEvent> = (0..12).map(|i| event(i, Some("m"))).collect();
        for e in &events {
            spool.append(RecordKind::Final, e).unwrap();
        }
        drop(spool);
        let seg = segment_path(&dir, 1);
        let mut data = fs::read(&seg).unwrap();
        let first_damage = damage.iter().map(|(at, _)| *at).min().unwrap_or(usize::MAX);
        for (at, byte) in &damage {
            if let Some(b) = data.get_mut(*at) {
                *b ^= byte | 1;
            }
        }
        data.truncate(cut.max(8));
        data.extend_from_slice(&garbage);
        fs::write(&seg, &data).unwrap();
        let spool = Spool::open(options(&dir)).unwrap();
        let mut reader = spool.reader();
        let got = drain(&mut reader);
        // Nothing invented, nothing twice, in order; every record wholly before the first
        // damaged or cut byte comes back.
        let mut next = 0;
        for e in &got {
            let i = events[next..].iter().position(|x| x == e);
            prop_assert!(i.is_some(), "an event that was never written: {e:?}");
            next += i.unwrap_or(0) + 1;
        }
        let intact_end = first_damage.min(cut.max(8));
        let mut end = 8;
        for e in &events {
            let mut one = Vec::new();
            encode(RecordKind::Final, e, &mut one);
            end += one.len();
            if end <= intact_end {
                prop_assert!(got.contains(e), "an intact record was lost");
            }
        }
        drop(reader);
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    });
}
