//! The first input's batch dimension, read from a prefix of an OIP v2 JSON request (KServe
//! `rest.md`, "Inference Request JSON Object": `{"inputs": [{"name", "shape", "datatype",
//! "data"}], ...}`), or of the JSON header of a binary request (Triton's binary tensor data
//! extension: the first `Inference-Header-Content-Length` bytes).
//!
//! A single forward pass over the bytes with no allocation and no recursion: every value
//! before the first input's `shape` is skipped, tensor data included, so a prefix of any size
//! and any nesting costs O(length) time and O(1) memory.

/// What a prefix of a request says about its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The first input's shape starts with this dimension (the request's rows; OIP requires
    /// every input to share it).
    Rows(u64),
    /// The prefix ends before the first input's first dimension: read more, if there is more.
    Incomplete,
    /// The request declares no rows here: not a JSON object, no `inputs`, an input without
    /// `shape` (or with an empty one, or a first dimension that is not a non-negative
    /// integer), or a key written with escapes. The backend will answer for it.
    Undeclared,
}

/// Scan `json` (a prefix of a request's JSON part) for the first dimension of
/// `inputs[0].shape`. Keys are compared byte for byte as written (`"inputs"`, `"shape"`).
pub fn declared_rows(json: &[u8]) -> Scan {
    let mut p = Parser { buf: json, pos: 0 };
    match p.request() {
        Ok(rows) => rows,
        Err(Stop::Incomplete) => Scan::Incomplete,
        Err(Stop::Invalid) => Scan::Undeclared,
    }
}

enum Stop {
    Incomplete,
    Invalid,
}

type Step<T> = Result<T, Stop>;

struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&mut self) -> Step<u8> {
        while let Some(&b) = self.buf.get(self.pos) {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Ok(b);
            }
            self.pos += 1;
        }
        Err(Stop::Incomplete)
    }

    fn expect(&mut self, want: u8) -> Step<()> {
        if self.peek()? != want {
            return Err(Stop::Invalid);
        }
        self.pos += 1;
        Ok(())
    }

    /// The top-level object: the `inputs` member, every other member skipped.
    fn request(&mut self) -> Step<Scan> {
        self.member_named(b"inputs", Self::inputs)
    }

    /// `[ {first input}, ... ]`: the first input decides.
    fn inputs(&mut self) -> Step<Scan> {
        self.expect(b'[')?;
        if self.peek()? != b'{' {
            return Err(Stop::Invalid);
        }
        self.member_named(b"shape", Self::first_dimension)
    }

    /// The object here: `value` of its member `name`, every other member skipped;
    /// [`Scan::Undeclared`] without one.
    fn member_named(&mut self, name: &[u8], value: fn(&mut Self) -> Step<Scan>) -> Step<Scan> {
        self.members(|p, key| {
            if key == name {
                value(p).map(Some)
            } else {
                p.skip_value().map(|()| None)
            }
        })
        .map(|found| found.unwrap_or(Scan::Undeclared))
    }

    /// `[d0, ...]`: `d0` as a non-negative integer.
    fn first_dimension(&mut self) -> Step<Scan> {
        self.expect(b'[')?;
        self.peek()?;
        let start = self.pos;
        let mut value: u64 = 0;
        while let Some(&b) = self.buf.get(self.pos) {
            if !b.is_ascii_digit() {
                break;
            }
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
                .ok_or(Stop::Invalid)?;
            self.pos += 1;
        }
        // The number must be complete: a delimiter follows it (more digits may yet arrive).
        match self.buf.get(self.pos) {
            None => Err(Stop::Incomplete),
            Some(_) if self.pos == start => Err(Stop::Invalid),
            Some(b',' | b']' | b' ' | b'\t' | b'\n' | b'\r') => Ok(Scan::Rows(value)),
            Some(_) => Err(Stop::Invalid),
        }
    }

    /// An object's members, calling `member` with each key (raw bytes, no unescaping) with
    /// the position at its value, until `member` returns `Some`; `None` at the closing brace.
    fn members<T>(
        &mut self,
        mut member: impl FnMut(&mut Self, &[u8]) -> Step<Option<T>>,
    ) -> Step<Option<T>> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            return Ok(None);
        }
        loop {
            let (start, end) = self.string()?;
            self.expect(b':')?;
            self.peek()?;
            let key = &self.buf[start..end];
            if let Some(found) = member(self, key)? {
                return Ok(Some(found));
            }
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => return Ok(None),
                _ => return Err(Stop::Invalid),
            }
        }
    }

    /// A string's raw bytes between its quotes, as positions in the buffer.
    fn string(&mut self) -> Step<(usize, usize)> {
        self.expect(b'"')?;
        let start = self.pos;
        loop {
            match self.buf.get(self.pos) {
                None => return Err(Stop::Incomplete),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok((start, self.pos - 1));
                }
                Some(b'\\') => self.pos += 2,
                Some(_) => self.pos += 1,
            }
        }
    }

    /// Skip one value of any kind and nesting (a depth counter, no recursion).
    fn skip_value(&mut self) -> Step<()> {
        let mut depth: usize = 0;
        loop {
            match self.peek()? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    depth += 1;
                    self.pos += 1;
                }
                b'}' | b']' => {
                    depth = depth.checked_sub(1).ok_or(Stop::Invalid)?;
                    self.pos += 1;
                }
                b',' | b':' if depth > 0 => self.pos += 1,
                b',' | b':' => return Err(Stop::Invalid),
                _ => {
                    // A number or a literal: up to the next delimiter.
                    while let Some(&b) = self.buf.get(self.pos) {
                        if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                            break;
                        }
                        self.pos += 1;
                    }
                    if self.pos == self.buf.len() {
                        return Err(Stop::Incomplete);
                    }
                }
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rows_of_the_first_input() {
        let body = br#"{"id":"a","inputs":[{"name":"x","shape":[8,784],"datatype":"FP32","data":[1,2]},{"name":"y","shape":[9]}]}"#;
        assert_eq!(declared_rows(body), Scan::Rows(8));
        // Shape after the data, other members before, nested parameters skipped.
        let late = br#"{"parameters":{"a":[{"b":"}]"}]},"inputs":[{"data":[[1.5e3,2],[3,4]],"name":"x\"y","shape": [ 2 , 2 ]}]}"#;
        assert_eq!(declared_rows(late), Scan::Rows(2));
        assert_eq!(
            declared_rows(br#"{"inputs":[{"shape":[0]}]}"#),
            Scan::Rows(0)
        );
    }

    #[test]
    fn prefixes_are_incomplete_until_the_first_dimension_ends() {
        let body = br#"{"inputs":[{"name":"x","shape":[12,3]}]}"#;
        let at = body.windows(2).position(|w| w == b",3").unwrap();
        for n in 0..at {
            assert_eq!(declared_rows(&body[..n]), Scan::Incomplete, "{n}");
        }
        assert_eq!(declared_rows(&body[..=at]), Scan::Rows(12));
    }

    #[test]
    fn undeclared_requests() {
        for body in [
            &br#"[1,2]"#[..],
            br#"{"outputs":[]}"#,
            br#"{"inputs":[]}"#,
            br#"{"inputs":{}}"#,
            br#"{"inputs":[{"name":"x"}]}"#,
            br#"{"inputs":[{"shape":[]}]}"#,
            br#"{"inputs":[{"shape":[-1]}]}"#,
            br#"{"inputs":[{"shape":[1.5]}]}"#,
            br#"{"inputs":[{"shape":[99999999999999999999]}]}"#,
            br#"{"inp\u0075ts":[{"shape":[3]}]}"#,
            br#"{"a":1,,"inputs":[{"shape":[3]}]}"#,
            br#"{"a"]"#,
        ] {
            assert_eq!(
                declared_rows(body),
                Scan::Undeclared,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = declared_rows(&bytes);
        }

        #[test]
        fn any_prefix_of_a_request_is_incomplete_or_its_rows(
            rows in 0u64..1_000_000,
            cut in 0usize..200,
            pad in "[a-z]{0,20}",
        ) {
            let body = format!(r#"{{"id":"{pad}","inputs":[{{"name":"x","shape":[{rows},4],"datatype":"FP32","data":[1,2,3,4]}}]}}"#);
            let cut = cut.min(body.len());
            let got = declared_rows(&body.as_bytes()[..cut]);
            prop_assert!(got == Scan::Incomplete || got == Scan::Rows(rows), "{got:?}");
            prop_assert_eq!(declared_rows(body.as_bytes()), Scan::Rows(rows));
        }
    }
}
