//! TLS on the data path: the server certificate, loaded and checked (`certificate`), served
//! to every handshake from a slot a reload swaps (`resolver`), and the reload itself on
//! SIGHUP or a file change (`reload`). rustls through pingora's `rustls` feature.

mod certificate;
mod reload;
mod resolver;

pub use certificate::load;
pub use reload::CertificateReload;
pub use resolver::ReloadingResolver;
