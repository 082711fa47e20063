//! The billing period: one calendar month, UTC. Quotas and budgets count per period and
//! invoices cover one; a month boundary in another time zone is a report's query parameter,
//! never a stored period.

use chrono::{DateTime, Datelike, TimeZone, Utc};

use crate::BillingError;

/// A billing period: one calendar month, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// Year, e.g. 2026.
    pub year: i32,
    /// Month, 1..=12.
    pub month: u32,
}

impl Period {
    /// Parses `YYYY-MM` (e.g. `2026-11`).
    ///
    /// # Errors
    /// [`BillingError::Invalid`] naming the expected shape.
    pub fn parse(s: &str) -> Result<Period, BillingError> {
        let bad = || BillingError::Invalid(format!("period `{s}`: expected YYYY-MM, e.g. 2026-11"));
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if y.len() != 4 || m.len() != 2 || !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Period { year, month })
    }

    /// First instant of the month (UTC), inclusive.
    pub fn start(&self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(self.year, self.month, 1, 0, 0, 0)
            .single()
            .expect("the first of a month exists")
    }

    /// First instant of the next month (UTC), exclusive end of the period.
    pub fn end(&self) -> DateTime<Utc> {
        let (y, m) = if self.month == 12 {
            (self.year + 1, 1)
        } else {
            (self.year, self.month + 1)
        };
        Period { year: y, month: m }.start()
    }

    /// The period after this one.
    pub fn next(&self) -> Period {
        Period::of(self.end())
    }

    /// Length of the period in seconds (2,419,200 to 2,678,400).
    pub fn seconds(&self) -> i64 {
        (self.end() - self.start()).num_seconds()
    }

    /// Whole seconds from `now` to the end of the period, at least 1 (for `Retry-After` and the
    /// `t` of a `RateLimit` header field, which count down to the reset).
    pub fn seconds_to_end(&self, now: DateTime<Utc>) -> i64 {
        (self.end() - now).num_seconds().max(1)
    }

    /// The period holding `t`.
    pub fn of(t: DateTime<Utc>) -> Period {
        Period {
            year: t.year(),
            month: t.month(),
        }
    }
}

impl std::str::FromStr for Period {
    type Err = BillingError;

    fn from_str(s: &str) -> Result<Period, BillingError> {
        Period::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for Period {
    /// From the `YYYY-MM` string (e.g. a path segment or query parameter).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Period, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Period::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Period {
    /// As `YYYY-MM`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        let p = Period::parse("2026-11").unwrap();
        assert_eq!(p.start().to_rfc3339(), "2026-11-01T00:00:00+00:00");
        assert_eq!(p.end().to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert_eq!(
            Period::parse("2026-12").unwrap().end().to_rfc3339(),
            "2027-01-01T00:00:00+00:00"
        );
        for bad in ["2026-13", "2026-1", "26-11", "2026", "x-y"] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(p.to_string(), "2026-11");
    }

    #[test]
    fn lengths_and_countdown() {
        let nov = Period::parse("2026-11").unwrap();
        assert_eq!(nov.seconds(), 30 * 86_400);
        assert_eq!(nov.next().to_string(), "2026-12");
        assert_eq!(
            Period::parse("2026-12").unwrap().next().to_string(),
            "2027-01"
        );
        let t = Utc.with_ymd_and_hms(2026, 11, 30, 23, 59, 0).unwrap();
        assert_eq!(Period::of(t), nov);
        assert_eq!(nov.seconds_to_end(t), 60);
        assert_eq!(nov.seconds_to_end(nov.end()), 1);
    }
}
