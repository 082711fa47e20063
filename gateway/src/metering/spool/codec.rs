//! The record format of a segment (see the spool's module notes for the layout): encoding on
//! append, decoding on read, with a CRC-32 (IEEE 802.3) over each payload.

use chrono::{DateTime, Utc};
use maas_billing::{CallKind, UsageEvent};
use uuid::Uuid;

use super::RecordKind;

/// Header bytes of a record (length and checksum).
pub(super) const RECORD_HEADER: usize = 8;
/// Largest payload accepted on read (strings are at most 64 KiB each when written).
const MAX_PAYLOAD: usize = 2 * 65_535 + 256;

/// One step of decoding at a position in a buffer.
pub(super) enum Decoded {
    Record(RecordKind, Box<UsageEvent>, usize),
    Incomplete,
    Corrupt(&'static str),
}

/// Encodes one record (header and payload, see the module notes) onto `out`.
pub(super) fn encode(kind: RecordKind, e: &UsageEvent, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    out.push(kind as u8);
    out.extend_from_slice(e.request_id.as_bytes());
    out.extend_from_slice(&e.started_at.timestamp_micros().to_le_bytes());
    let flags = u8::from(e.tenant_id.is_some())
        | u8::from(e.api_key_id.is_some()) << 1
        | u8::from(e.model.is_some()) << 2
        | u8::from(e.model_version.is_some()) << 3
        | e.call.code() << 4;
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

pub(super) fn decode(buf: &[u8]) -> Decoded {
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
    // Bits 4..7: the call kind (0, inference, in records written before it was recorded).
    let call = CallKind::from_code(flags >> 4)?;
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
            call,
            inference_count,
            compute_us,
            request_bytes,
            response_bytes,
            latency_us,
        },
    ))
}
