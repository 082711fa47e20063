//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>, level 1): the `traceparent`
//! header of a request, accepted from the client when valid or made here, and the one the
//! gateway forwards to the backend (same trace id and flags, the gateway's own span as the
//! parent).

/// The trace a request belongs to and the gateway's span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// The gateway's span id (8 bytes, never all zero): the `parent-id` the backend sees.
    pub span_id: [u8; 8],
    /// `trace-flags` (bit 0: sampled), as the client sent them (01 for a trace made here).
    pub flags: u8,
}

/// Exactly `2 * N` lower-case hex digits (the spec's `HEXDIGLC`) as `N` bytes.
fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    // Fails on any other length.
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = rand::random();
        if bytes.iter().any(|b| *b != 0) {
            return bytes;
        }
    }
}

impl TraceContext {
    /// The client's `traceparent` when it is valid (version `00`, or a later version read as
    /// `00` as the spec asks), with a new span id for the gateway; a new trace (sampled)
    /// otherwise.
    pub fn accept(traceparent: Option<&str>) -> TraceContext {
        traceparent
            .and_then(Self::parse)
            .unwrap_or_else(|| TraceContext {
                trace_id: random_nonzero(),
                span_id: random_nonzero(),
                flags: 1,
            })
    }

    /// The parsed header with a fresh span id, or `None` when it is not valid.
    fn parse(value: &str) -> Option<TraceContext> {
        let value = value.trim();
        let mut parts = value.splitn(5, '-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        let [v] = hex_bytes::<1>(version)?;
        // Version ff is invalid; version 00 has exactly four fields; later versions may add
        // fields after a '-'.
        if v == 0xff || (v == 0 && rest.is_some()) {
            return None;
        }
        let trace_id = hex_bytes::<16>(trace)?;
        let parent_id = hex_bytes::<8>(parent)?;
        let [flags] = hex_bytes::<1>(flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id: random_nonzero(),
            flags,
        })
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The `traceparent` to forward: `00-<trace id>-<gateway span id>-<flags>`.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_and_replaces_invalid_traceparents() {
        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::accept(Some(given));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, 1);
        let forwarded = t.traceparent();
        assert_eq!(forwarded.len(), 55);
        assert!(forwarded.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(forwarded.ends_with("-01"));
        assert_ne!(
            &forwarded[36..52],
            "00f067aa0ba902b7",
            "the gateway's own span"
        );
        // A later version with an extra field is read as version 00.
        let later = TraceContext::accept(Some(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra",
        ));
        assert_eq!(later.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(later.flags, 0);
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f35-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let t = TraceContext::accept(Some(bad));
            assert_ne!(
                t.trace_id_hex(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
            assert_eq!(t.flags, 1, "{bad}: a new sampled trace");
            assert_ne!(t.trace_id, [0; 16]);
        }
        let made = TraceContext::accept(None);
        assert_eq!(made.traceparent().len(), 55);
    }
}
