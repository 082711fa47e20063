//! Dashboard sessions: what a browser holds after signing in with a tenant admin token or the
//! operator token, so that the token itself is sent once and never stored by the browser.
//!
//! - The session token ([`SessionToken`], `maas_s_` + 64 hex digits, 256 bits from the OS
//!   random source) travels only in the `maas_session` cookie: `HttpOnly` (no script reads it),
//!   `SameSite=Strict` (no other site's page sends it), `Path=/`, `Max-Age` of the session, and
//!   `Secure` when the request reached us over TLS (`X-Forwarded-Proto: https` from the
//!   terminating proxy). Only its SHA-256 is stored (`admin_sessions`), with an expiry; sign-out
//!   revokes it there.
//! - Cross-site request forgery: besides `SameSite=Strict`, every state-changing request made
//!   with the cookie must carry the session's CSRF token, in the `X-CSRF-Token` header (API
//!   calls) or the `csrf` form field (dashboard forms): the synchronizer token pattern of the
//!   OWASP CSRF Prevention Cheat Sheet. The CSRF token is derived from the session token
//!   (SHA-256 of a label and the token), so it is known only to pages served in that session.
//! - Wrong tokens at sign-in: failed attempts are limited per client address
//!   ([`SignInLimiter`]: a GCRA of [`SIGN_IN_PER_MINUTE`] failures a minute, burst
//!   [`SIGN_IN_BURST`]); an address over the limit gets 429 before its token is even looked at,
//!   so the limit bounds guesses, while successful sign-ins never count.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use rand::TryRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Name of the session cookie.
pub const COOKIE: &str = "maas_session";
/// Start of every session token.
pub const TOKEN_PREFIX: &str = "maas_s_";
/// Random bytes of a session token.
const TOKEN_BYTES: usize = 32;
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Header carrying the CSRF token of API calls made with the session cookie.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sign-in attempts a client address may make per minute, sustained.
pub const SIGN_IN_PER_MINUTE: u32 = 10;
/// Sign-in attempts a client address may make at once.
pub const SIGN_IN_BURST: u32 = 5;

/// A session token: `maas_s_` + 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(***)")
    }
}

impl SessionToken {
    /// A new token from the OS random source.
    ///
    /// # Errors
    /// When the OS random source fails.
    pub fn generate() -> anyhow::Result<SessionToken> {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| anyhow::anyhow!("OS random source failed: {e}"))?;
        Ok(SessionToken(format!(
            "{TOKEN_PREFIX}{}",
            hex::encode(bytes)
        )))
    }

    /// `s` if it has the shape of a session token.
    pub fn parse(s: &str) -> Option<SessionToken> {
        let hex_part = s.strip_prefix(TOKEN_PREFIX)?;
        (hex_part.len() == 2 * TOKEN_BYTES
            && hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| SessionToken(s.to_string()))
    }

    /// The token as the cookie carries it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the token, lowercase hex: what `admin_sessions` stores.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// The session's CSRF token (64 hex digits), derived from the session token.
    pub fn csrf(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"maas-csrf\0");
        h.update(self.0.as_bytes());
        hex::encode(h.finalize())
    }

    /// Whether `presented` is this session's CSRF token (constant-time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        let want = self.csrf();
        want.len() == presented.len() && bool::from(want.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// The session token of the request's `maas_session` cookie, if one is well formed (RFC 6265
/// section 5.4: `Cookie: a=b; c=d`, possibly in several headers).
pub fn cookie_token(headers: &HeaderMap) -> Option<SessionToken> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .find_map(|(_, value)| SessionToken::parse(value.trim()))
}

/// Whether the client reached the admin listener over TLS, as the terminating proxy says
/// (`X-Forwarded-Proto: https`); the admin listener itself speaks plain HTTP.
pub fn is_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// `Set-Cookie` value starting a session with `token` for [`SESSION_TTL`].
pub fn set_cookie(token: &SessionToken, tls: bool) -> HeaderValue {
    cookie_value(token.as_str(), SESSION_TTL.as_secs(), tls)
}

/// `Set-Cookie` value removing the session cookie.
pub fn clear_cookie(tls: bool) -> HeaderValue {
    cookie_value("", 0, tls)
}

fn cookie_value(value: &str, max_age: u64, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    let cookie =
        format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}");
    // Only hex digits, letters and punctuation from above: always a valid header value.
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Bounds failed sign-in attempts per client address: GCRA (the Generic Cell Rate Algorithm,
/// ITU-T I.371) over failures only, which needs to ask "would one more failure conform?"
/// before the token is checked, and to count only when it was wrong: a peek that `governor`
/// does not offer, hence these few lines.
pub struct SignInLimiter {
    /// Emission interval: one failure per this much, sustained.
    interval: Duration,
    /// How far ahead of now the theoretical arrival time may be: `(burst - 1) * interval`.
    tolerance: Duration,
    /// Theoretical arrival time of the next failure, per address.
    tat: Mutex<HashMap<IpAddr, Instant>>,
}

impl Default for SignInLimiter {
    fn default() -> Self {
        Self::new(SIGN_IN_PER_MINUTE, SIGN_IN_BURST)
    }
}

/// Addresses remembered before the ones whose limit has lapsed are forgotten.
const MAX_TRACKED: usize = 100_000;

impl SignInLimiter {
    /// `per_minute` failures a minute per address, `burst` at once (each at least 1).
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let interval = Duration::from_secs(60) / per_minute.max(1);
        SignInLimiter {
            interval,
            tolerance: interval * (burst.max(1) - 1),
            tat: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` may try now: `Err(wait)` while one more failure would exceed the limit.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        match tat.get(&ip) {
            Some(t) if *t > now + self.tolerance => Err(*t - (now + self.tolerance)),
            _ => Ok(()),
        }
    }

    /// Count a failed attempt of `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        if tat.len() >= MAX_TRACKED {
            tat.retain(|_, t| *t > now);
        }
        let t = tat.entry(ip).or_insert(now);
        *t = (*t).max(now) + self.interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_cookies_and_csrf() {
        let t = SessionToken::generate().unwrap();
        assert!(t.as_str().starts_with("maas_s_") && t.as_str().len() == 71);
        assert_eq!(SessionToken::parse(t.as_str()), Some(t.clone()));
        assert_eq!(SessionToken::parse("maas_s_zz"), None);
        assert_eq!(SessionToken::parse(&t.as_str().to_uppercase()), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={}; c=d", t.as_str())).unwrap(),
        );
        assert_eq!(cookie_token(&h), Some(t.clone()));
        assert_eq!(cookie_token(&HeaderMap::new()), None);
        assert!(t.csrf_matches(&t.csrf()));
        assert!(!t.csrf_matches(&SessionToken::generate().unwrap().csrf()));
        assert!(!t.csrf_matches(""));
        let c = set_cookie(&t, false);
        let c = c.to_str().unwrap();
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Max-Age=28800")
        );
        assert!(!c.contains("Secure"));
        assert!(set_cookie(&t, true).to_str().unwrap().ends_with("; Secure"));
        assert!(clear_cookie(false)
            .to_str()
            .unwrap()
            .starts_with("maas_session=; "));
    }

    #[test]
    fn failed_sign_ins_are_bounded_per_address() {
        let l = SignInLimiter::new(1, 3);
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        // Checks alone (successful sign-ins) never count.
        for _ in 0..10 {
            assert!(l.check(a).is_ok());
        }
        for _ in 0..3 {
            assert!(l.check(a).is_ok());
            l.failed(a);
        }
        let wait = l.check(a).unwrap_err();
        assert!(
            wait > Duration::from_secs(59) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(l.check(b).is_ok());
    }
}
