//! TLS for QUIC: mutual authentication against the cluster's CA only.
//!
//! Every host presents its certificate (see [`crate::certs`]) and trusts exactly one root, the
//! cluster CA: no platform or webpki roots. A server requires a client certificate chaining to the
//! CA; a client checks the server's chain and the expected server name `host-<id>.fragmenta`.
//! TLS 1.3 only (QUIC requires it) with the `ring` provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fragmenta_job::HostId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs::{self, CertIdentityError, HostCertPaths};

/// The files a host needs for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM), the only trusted root.
    pub ca: PathBuf,
    /// This host's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// This host's private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files of `host` in a certificate directory laid out by [`certs::generate`].
    pub fn for_host(dir: &Path, host: HostId) -> Self {
        let HostCertPaths { cert, key } = HostCertPaths::in_dir(dir, host);
        Self {
            ca: dir.join(certs::CA_CERT_FILE),
            cert,
            key,
        }
    }
}

/// A host's TLS identity held in memory: the cluster CA certificate (the only trusted root),
/// the host's certificate chain and its private key. Made by
/// [`DerivedCa::issue_host`](crate::secret::DerivedCa::issue_host); the key never touches a
/// file. Its `Debug` output shows no key material.
#[derive(Clone)]
pub struct TlsIdentity {
    pub(crate) ca: CertificateDer<'static>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: std::sync::Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// The CA certificate (DER).
    pub fn ca_der(&self) -> &[u8] {
        &self.ca
    }

    /// This host's certificate (DER), the leaf of the chain.
    pub fn cert_der(&self) -> &[u8] {
        self.chain.first().map_or(&[], |c| c.as_ref())
    }
}

/// Transport tuning shared by all QUIC connections of an endpoint.
///
/// The defaults favour bandwidth on fast links (large flow-control windows) and quick failure
/// detection (1 s keep-alive, 10 s idle timeout).
///
/// Incoming TLS handshakes run concurrently, each bounded by `handshake_timeout`, at most
/// `max_handshakes` at once and `max_handshakes_per_ip` from one address: a client that starts
/// a handshake and goes silent (it needs no certificate to do so) holds one slot for at most
/// `handshake_timeout` and delays no other handshake. A new handshake beyond a bound takes the
/// place of the oldest one in progress (from the same address, for the per-address bound), so
/// stalled handshakes cannot keep a real client out by filling the slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Flow-control window of one stream, in bytes (default 16 MiB).
    pub stream_receive_window: u32,
    /// Flow-control window of a whole connection, in bytes (default 64 MiB).
    pub receive_window: u32,
    /// Bytes a connection may have in flight unacknowledged (default 64 MiB).
    pub send_window: u64,
    /// Unidirectional streams a peer may have open at once (default 1024).
    pub max_concurrent_uni_streams: u32,
    /// Bidirectional streams a peer may have open at once (default 64).
    pub max_concurrent_bi_streams: u32,
    /// Interval of keep-alive packets (default 1 s).
    pub keep_alive_interval: Duration,
    /// A connection with no traffic for this long is lost (default 10 s).
    pub idle_timeout: Duration,
    /// An incoming TLS handshake not complete after this long is dropped (default 3 s).
    pub handshake_timeout: Duration,
    /// Incoming TLS handshakes in progress at once, all clients together (default 256); the
    /// oldest is dropped for a new one beyond it.
    pub max_handshakes: usize,
    /// Incoming TLS handshakes in progress at once from one IP address (default 64); its
    /// oldest is dropped for a new one beyond it.
    pub max_handshakes_per_ip: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            stream_receive_window: 16 << 20,
            receive_window: 64 << 20,
            send_window: 64 << 20,
            max_concurrent_uni_streams: 1024,
            max_concurrent_bi_streams: 64,
            keep_alive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(3),
            max_handshakes: 256,
            max_handshakes_per_ip: 64,
        }
    }
}

impl NetConfig {
    /// The quinn transport configuration for these settings.
    pub fn transport_config(&self) -> Result<quinn::TransportConfig, TlsError> {
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(self.stream_receive_window.into())
            .receive_window(self.receive_window.into())
            .send_window(self.send_window)
            .max_concurrent_uni_streams(self.max_concurrent_uni_streams.into())
            .max_concurrent_bidi_streams(self.max_concurrent_bi_streams.into())
            .keep_alive_interval(Some(self.keep_alive_interval));
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|_| {
            TlsError::InvalidIdleTimeout {
                timeout: self.idle_timeout,
            }
        })?;
        t.max_idle_timeout(Some(idle));
        Ok(t)
    }
}

/// Why a TLS configuration could not be built from [`TlsFiles`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A certificate file could not be read or is not PEM.
    #[error("cannot read certificates from {path}: {reason}")]
    ReadCertificates {
        /// The file.
        path: PathBuf,
        /// The OS or PEM error.
        reason: String,
    },
    /// A certificate file contains no certificate.
    #[error("no certificate in {path}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file could not be read or holds no private key.
    #[error("cannot read private key from {path}: {reason}")]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// The OS or PEM error.
        reason: String,
    },
    /// The CA certificate is not usable as a trust anchor.
    #[error("invalid CA certificate {path}: {reason}")]
    InvalidCa {
        /// The file.
        path: PathBuf,
        /// rustls's message.
        reason: String,
    },
    /// This host's own certificate does not name a host.
    #[error("own certificate {path}: {source}")]
    OwnIdentity {
        /// The certificate file.
        path: PathBuf,
        /// Why no host id could be read.
        #[source]
        source: CertIdentityError,
    },
    /// This host's certificate names another host: the host was given another host's
    /// certificate and key.
    #[error(
        "certificate {path} is {found}'s, but this is {expected}: give each host its own \
         certificate (`fragmenta certs`)"
    )]
    WrongHost {
        /// The certificate file.
        path: PathBuf,
        /// The host this endpoint is for.
        expected: HostId,
        /// The host the certificate names.
        found: HostId,
    },
    /// rustls refused the server configuration (for example a key that does not match the
    /// certificate).
    #[error("invalid TLS server configuration: {reason}")]
    Server {
        /// rustls's or quinn's message.
        reason: String,
    },
    /// rustls refused the client configuration.
    #[error("invalid TLS client configuration: {reason}")]
    Client {
        /// rustls's or quinn's message.
        reason: String,
    },
    /// [`NetConfig::idle_timeout`] is too large for QUIC.
    #[error("idle timeout {timeout:?} is out of range")]
    InvalidIdleTimeout {
        /// The configured timeout.
        timeout: Duration,
    },
}

/// The certificates, key and trust root loaded from [`TlsFiles`].
#[derive(Debug)]
pub(crate) struct LoadedTls {
    pub(crate) roots: Arc<rustls::RootCertStore>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    pub(crate) host: HostId,
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::ReadCertificates {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

pub(crate) fn load(files: &TlsFiles) -> Result<LoadedTls, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&files.ca)? {
        roots.add(ca).map_err(|e| TlsError::InvalidCa {
            path: files.ca.clone(),
            reason: e.to_string(),
        })?;
    }
    let chain = read_certs(&files.cert)?;
    let host = certs::host_id_from_cert(&chain[0]).map_err(|source| TlsError::OwnIdentity {
        path: files.cert.clone(),
        source,
    })?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::ReadKey {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    Ok(LoadedTls {
        roots: Arc::new(roots),
        chain,
        key,
        host,
    })
}

/// The host named by the certificate (the leaf, first in the file) in the PEM file at `path`.
///
/// This checks the file is a host certificate of the form [`certs::generate`] writes; it does
/// not verify the signature (TLS does, on every connection).
pub fn certificate_host(path: &Path) -> Result<HostId, TlsError> {
    let chain = read_certs(path)?;
    certs::host_id_from_cert(&chain[0]).map_err(|source| TlsError::OwnIdentity {
        path: path.to_path_buf(),
        source,
    })
}

/// When the certificate (the leaf, first in the file) in the PEM file at `path` expires: TLS
/// refuses it from then on.
pub fn certificate_expiry(path: &Path) -> Result<std::time::SystemTime, TlsError> {
    let chain = read_certs(path)?;
    let unparsable = |reason: String| TlsError::OwnIdentity {
        path: path.to_path_buf(),
        source: CertIdentityError::Unparsable { reason },
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| unparsable(e.to_string()))?;
    let secs = cert.validity().not_after.timestamp();
    let since_epoch = Duration::from_secs(secs.unsigned_abs());
    Ok(if secs >= 0 {
        std::time::UNIX_EPOCH + since_epoch
    } else {
        std::time::UNIX_EPOCH - since_epoch
    })
}

/// [`load`], checking that the certificate is `expected`'s.
pub(crate) fn load_for(files: &TlsFiles, expected: HostId) -> Result<LoadedTls, TlsError> {
    let loaded = load(files)?;
    if loaded.host != expected {
        return Err(TlsError::WrongHost {
            path: files.cert.clone(),
            expected,
            found: loaded.host,
        });
    }
    Ok(loaded)
}

/// The trust root, chain and key of an in-memory identity.
pub(crate) fn load_identity(id: &TlsIdentity) -> Result<LoadedTls, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(id.ca.clone()).map_err(|e| TlsError::InvalidCa {
        path: PathBuf::from("(derived from the cluster secret)"),
        reason: e.to_string(),
    })?;
    let leaf = id.chain.first().ok_or(TlsError::NoCertificate {
        path: PathBuf::from("(in-memory identity)"),
    })?;
    let host = certs::host_id_from_cert(leaf).map_err(|source| TlsError::OwnIdentity {
        path: PathBuf::from("(in-memory identity)"),
        source,
    })?;
    Ok(LoadedTls {
        roots: Arc::new(roots),
        chain: id.chain.clone(),
        key: id.key.clone_key(),
        host,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn server_config(
    tls: &LoadedTls,
    config: &NetConfig,
) -> Result<quinn::ServerConfig, TlsError> {
    let err = |e: &dyn std::fmt::Display| TlsError::Server {
        reason: e.to_string(),
    };
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(tls.roots.clone(), provider())
            .build()
            .map_err(|e| err(&e))?;
    let crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.chain.clone(), tls.key.clone_key())
        .map_err(|e| err(&e))?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(|e| err(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(config.transport_config()?));
    Ok(server)
}

pub(crate) fn client_config(
    tls: &LoadedTls,
    config: &NetConfig,
) -> Result<quinn::ClientConfig, TlsError> {
    let err = |e: &dyn std::fmt::Display| TlsError::Client {
        reason: e.to_string(),
    };
    let crypto = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&e))?
        .with_root_certificates(tls.roots.clone())
        .with_client_auth_cert(tls.chain.clone(), tls.key.clone_key())
        .map_err(|e| err(&e))?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| err(&e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(config.transport_config()?));
    Ok(client)
}

/// Builds the quinn server configuration of the host whose files are `files`: its certificate,
/// a client-certificate verifier trusting only the CA, and `config`'s transport settings.
pub fn quinn_server_config(
    files: &TlsFiles,
    config: &NetConfig,
) -> Result<quinn::ServerConfig, TlsError> {
    server_config(&load(files)?, config)
}

/// Builds the quinn client configuration of the host whose files are `files`: its certificate
/// as the client certificate, the CA as the only root, and `config`'s transport settings.
pub fn quinn_client_config(
    files: &TlsFiles,
    config: &NetConfig,
) -> Result<quinn::ClientConfig, TlsError> {
    client_config(&load(files)?, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert!(NetConfig::default().transport_config().is_ok());
    }

    #[test]
    fn missing_files_are_typed_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let files = TlsFiles::for_host(tmp.path(), HostId(1));
        assert!(matches!(
            load(&files),
            Err(TlsError::ReadCertificates { path, .. }) if path == files.ca
        ));
        let paths = certs::generate(tmp.path(), "c", &[HostId(1)]).unwrap();
        let loaded = load(&files).unwrap();
        assert_eq!(loaded.host, HostId(1));
        // The CA certificate names no host: using it as a host certificate is refused.
        let bad = TlsFiles {
            cert: paths.ca.clone(),
            ..files
        };
        assert!(matches!(
            load(&bad),
            Err(TlsError::OwnIdentity {
                source: CertIdentityError::NoHostName,
                ..
            })
        ));
    }

    #[test]
    fn another_hosts_certificate_is_refused_for_this_host() {
        let tmp = tempfile::tempdir().unwrap();
        certs::generate(tmp.path(), "c", &[HostId(1), HostId(2)]).unwrap();
        // Host 2 started with host 1's certificate and key.
        let files = TlsFiles::for_host(tmp.path(), HostId(1));
        assert_eq!(certificate_host(&files.cert), Ok(HostId(1)));
        assert!(load_for(&files, HostId(1)).is_ok());
        let err = load_for(&files, HostId(2)).unwrap_err();
        assert_eq!(
            err,
            TlsError::WrongHost {
                path: files.cert.clone(),
                expected: HostId(2),
                found: HostId(1),
            }
        );
        let text = err.to_string();
        assert!(text.contains("host-1") && text.contains("host-2"), "{text}");
        let left = certificate_expiry(&files.cert)
            .unwrap()
            .duration_since(std::time::SystemTime::now())
            .unwrap();
        assert!(left > Duration::from_secs(364 * 86400), "{left:?}");
        assert!(matches!(
            certificate_host(&files.key),
            Err(TlsError::NoCertificate { .. })
        ));
    }
}
