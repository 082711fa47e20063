//! `[tls]`: the data path's TLS listener (certificate, key, reload).

use serde::{Deserialize, Serialize};

/// `[tls]`: a second data-path listener speaking TLS 1.2/1.3 (rustls through pingora), with
/// ALPN `h2` and `http/1.1` (RFC 7301; HTTP/2 over TLS as in RFC 9113 section 3.2). Off unless
/// `listen` is set; the plaintext `listen` keeps serving beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// Address of the TLS listener, `host:port`. Unset (the default): no TLS listener.
    pub listen: Option<String>,
    /// PEM file with the server certificate first, then its intermediates (leaf to root).
    pub cert_path: Option<String>,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_path: Option<String>,
    /// How often the two files are checked for a change (modification time or size), in
    /// milliseconds; a changed pair is loaded for new handshakes. 0: only on SIGHUP.
    /// SIGHUP always reloads. Default 2000.
    pub reload_interval_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            listen: None,
            cert_path: None,
            key_path: None,
            reload_interval_ms: 2000,
        }
    }
}

impl TlsConfig {
    /// Whether a TLS listener is configured.
    pub fn enabled(&self) -> bool {
        self.listen.as_deref().is_some_and(|l| !l.is_empty())
    }
}
