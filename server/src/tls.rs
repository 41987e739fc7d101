//! TLS on the push ports (and optionally the API port) with rustls: the
//! certificate, key and client CA come from PEM files and are read again when
//! they change on disk (cert-manager rotates them in place), so a rotation
//! needs no restart and leaves established connections alone. With a client
//! CA, every client must present a certificate it signed (mTLS).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio_rustls::TlsAcceptor;

/// How often a handshake may look at the files' timestamps.
const RECHECK: Duration = Duration::from_secs(1);

/// The `tls` section.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate they signed.
    pub client_ca_file: Option<PathBuf>,
    /// Also serve TLS on the API port (listen.api); the metrics port stays plain.
    pub api: bool,
}

impl TlsConfig {
    fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.cert_file.as_path(), self.key_file.as_path()];
        files.extend(self.client_ca_file.as_deref());
        files
    }
}

/// What identifies one version of a file: a rotation changes at least one of these.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamps(config: &TlsConfig) -> Vec<Stamp> {
    config
        .files()
        .iter()
        .map(|path| {
            std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()))
        })
        .collect()
}

/// The TLS settings in force, rebuilt from the files when they change.
pub struct Tls {
    state: Mutex<Current>,
}

struct Current {
    files: TlsConfig,
    /// The stamps last read (successfully or not), so a broken file is reported once.
    seen: Vec<Stamp>,
    server: Arc<ServerConfig>,
    checked: Instant,
}

impl Tls {
    /// Reads the files; any problem is a start-up error.
    pub fn load(files: TlsConfig) -> Result<Self, String> {
        let seen = stamps(&files);
        let server = build(&files)?;
        Ok(Self { state: Mutex::new(Current { files, seen, server, checked: Instant::now() }) })
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.lock().files.client_ca_file.is_some()
    }

    /// An acceptor with the newest good certificate; reads the files again when
    /// their timestamps changed (looked at no more than once per second).
    pub fn acceptor(&self) -> TlsAcceptor {
        let mut current = self.lock();
        if current.checked.elapsed() >= RECHECK {
            current.checked = Instant::now();
            let now = stamps(&current.files);
            if now != current.seen {
                current.seen = now;
                match build(&current.files) {
                    Ok(server) => {
                        current.server = server;
                        tracing::info!(cert_file = %current.files.cert_file.display(), "TLS certificate files changed: reloaded");
                    }
                    // Mid-rotation (the key written before the certificate, say): keep serving the old pair.
                    Err(e) => tracing::warn!(
                        "TLS certificate files changed but cannot be used yet, keeping the previous ones: {e}"
                    ),
                }
            }
        }
        TlsAcceptor::from(current.server.clone())
    }

    /// Switches to other files (SIGHUP); on error the current ones stay in force.
    pub fn replace(&self, files: TlsConfig) -> Result<(), String> {
        let server = build(&files)?;
        let mut current = self.lock();
        *current = Current { seen: stamps(&files), files, server, checked: Instant::now() };
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        // A poisoned lock still holds a whole, valid Current: every write replaces fields whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A rustls server configuration from the files, with ALPN for HTTP/2 and HTTP/1.1.
fn build(files: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| format!("tls.key_file {}: no usable private key: {e}", files.key_file.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| format!("tls.client_ca_file {}: {e}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tls.client_ca_file {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!("tls.cert_file {} and tls.key_file {}: {e}", files.cert_file.display(), files.key_file.display())
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM CERTIFICATE found", path.display()));
    }
    Ok(certs)
}

/// The first bytes a plain-HTTP client sent to a TLS port get this answer, so
/// `curl http://…` says what is wrong instead of failing with a bare reset.
pub const PLAIN_HTTP_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\nConnection: close\r\nContent-Length: 71\r\n\r\n\
This port serves HTTPS (TLS) only: plain HTTP is refused; use https://\n";

/// A TLS connection starts with a handshake record (content type 22).
pub fn looks_like_tls(first_byte: u8) -> bool {
    first_byte == 0x16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_length_matches_its_body() {
        let text = std::str::from_utf8(PLAIN_HTTP_REFUSAL).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head} / {}", body.len());
    }

    #[test]
    fn missing_files_are_named() {
        let files = TlsConfig {
            cert_file: "/nonexistent/tls.crt".into(),
            key_file: "/nonexistent/tls.key".into(),
            client_ca_file: None,
            api: false,
        };
        let e = Tls::load(files).err().unwrap_or_default();
        assert!(e.contains("/nonexistent/tls.crt"), "{e}");
    }
}
