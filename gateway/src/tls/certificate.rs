//! Load a certificate chain and its private key from PEM files and check that they can be
//! served: the key matches the leaf, and the leaf is inside its validity period
//! (RFC 5280 section 4.1.2.5).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Why a certificate/key pair cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// A file could not be read or holds no PEM item of the kind expected.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        what: String,
    },
    /// The leaf certificate's `notAfter` is in the past.
    #[error("the certificate in {path} (subject {subject}) expired at {not_after} (now {now})")]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// The leaf's subject, RFC 4514 form.
        subject: String,
        /// Its `notAfter`.
        not_after: DateTime<Utc>,
        /// The clock when it was checked.
        now: DateTime<Utc>,
    },
    /// The leaf certificate's `notBefore` is in the future.
    #[error("the certificate in {path} (subject {subject}) is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// The leaf's subject, RFC 4514 form.
        subject: String,
        /// Its `notBefore`.
        not_before: DateTime<Utc>,
        /// The clock when it was checked.
        now: DateTime<Utc>,
    },
    /// The private key is not the leaf certificate's, or rustls cannot sign with it.
    #[error("the key in {key} does not fit the certificate in {cert}: {what}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        what: String,
    },
}

/// A certificate chain and key ready for rustls, with the leaf's validity for logs.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    /// Chain and signing key, as a handshake serves them.
    pub key: Arc<CertifiedKey>,
    /// The leaf's subject, RFC 4514 form.
    pub subject: String,
    /// The leaf's `notAfter`.
    pub not_after: DateTime<Utc>,
}

/// Read `cert` (PEM chain, leaf first) and `key` (PEM private key) and check them at `now`.
///
/// # Errors
/// [`CertificateError`]: unreadable files, no certificate or key in them, an unparseable leaf,
/// a leaf outside its validity period, or a key that is not the leaf's.
pub fn load(
    cert: &Path,
    key: &Path,
    now: DateTime<Utc>,
) -> Result<LoadedCertificate, CertificateError> {
    let file_error = |path: &Path, what: String| CertificateError::File {
        path: path.to_path_buf(),
        what,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, format!("cannot read PEM certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, format!("cannot read PEM certificates: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(file_error(cert, "no CERTIFICATE in the file".into()));
    };
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error(key, format!("no private key read: {e}")))?;

    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| file_error(cert, format!("the first certificate is not X.509 DER: {e}")))?;
    let subject = parsed.subject().to_string();
    let validity = parsed.validity();
    let not_before = timestamp(validity.not_before.timestamp());
    let not_after = timestamp(validity.not_after.timestamp());
    if now > not_after {
        return Err(CertificateError::Expired {
            path: cert.to_path_buf(),
            subject,
            not_after,
            now,
        });
    }
    if now < not_before {
        return Err(CertificateError::NotYetValid {
            path: cert.to_path_buf(),
            subject,
            not_before,
            now,
        });
    }

    let mismatch = |what: String| CertificateError::KeyMismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        what,
    };
    // ring: the provider pingora's rustls listener installs.
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| mismatch(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| mismatch(e.to_string()))?;
    Ok(LoadedCertificate {
        key: Arc::new(certified),
        subject,
        not_after,
    })
}

fn timestamp(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}
