//! Certificates of a cluster: one certificate authority (CA) and one certificate per host.
//!
//! [`generate`] creates a fresh CA and a certificate per host in a directory; [`add_host`] signs a
//! certificate for a new host with the CA key already there. The layout of the directory is fixed:
//!
//! ```text
//! ca.pem            the CA certificate (PEM)
//! ca.key            the CA private key (PKCS#8 PEM, mode 0600)
//! host-<id>.pem     the certificate of host <id>, signed by the CA
//! host-<id>.key     its private key (mode 0600)
//! ```
//!
//! The directory itself is created with mode 0700. Each host certificate carries exactly one DNS
//! subject alternative name, [`host_server_name`] (`host-<id>.fragmenta`), which is how a peer's
//! [`HostId`] is read back from its certificate (see [`host_id_from_cert`]). Host certificates
//! are valid for both TLS server and client authentication, since every host both accepts and
//! opens connections.
//!
//! ## Validity and rotation
//!
//! A host certificate is valid for [`CertOptions::host_validity`] (default
//! [`DEFAULT_HOST_VALIDITY`], one year) from its creation (backdated by
//! [`CLOCK_SKEW`] for machines whose clocks differ a little); the CA for
//! [`CA_VALIDITY`] or the host validity if longer. TLS refuses an expired certificate on every
//! connection, so an expired host can no longer join. To rotate, before expiry: regenerate
//! with `fragmenta certs --config FILE --force` (a new CA and new host certificates) and
//! restart the hosts with the new files; a host that joins later with [`add_host`] gets a
//! certificate from the same CA. There are no revocation lists: to retire one host's
//! certificate before it expires (a lost machine, a leaked key), regenerate the CA and every
//! host's certificate; the old ones then chain to nothing the hosts trust.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fragmenta_job::HostId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The DNS suffix of host certificates' subject alternative names.
pub const HOST_NAME_SUFFIX: &str = ".fragmenta";

/// Default validity of a host certificate: one year.
pub const DEFAULT_HOST_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Least validity of a cluster CA certificate: ten years (longer if the host certificates are
/// valid longer).
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back a certificate's validity starts, so that machines whose clocks run a little
/// behind accept it at once.
pub const CLOCK_SKEW: Duration = Duration::from_secs(3600);
/// Longest validity accepted: 100 years.
pub const MAX_VALIDITY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Settings of generated certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertOptions {
    /// How long a host certificate is valid from its creation (default
    /// [`DEFAULT_HOST_VALIDITY`]; at most [`MAX_VALIDITY`]).
    pub host_validity: Duration,
}

impl Default for CertOptions {
    fn default() -> Self {
        Self {
            host_validity: DEFAULT_HOST_VALIDITY,
        }
    }
}

/// The validity window `[now - CLOCK_SKEW, now + validity]`.
fn validity_window(
    validity: Duration,
) -> Result<(time::OffsetDateTime, time::OffsetDateTime), CertError> {
    if validity > MAX_VALIDITY {
        return Err(CertError::Validity {
            validity,
            max: MAX_VALIDITY,
        });
    }
    let now = time::OffsetDateTime::now_utc();
    Ok((now - CLOCK_SKEW, now + validity))
}

/// File name of the CA certificate inside a certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a certificate directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// The TLS server name (and the certificate's DNS subject alternative name) of `host`:
/// `host-<id>.fragmenta`.
pub fn host_server_name(host: HostId) -> String {
    format!("host-{}{HOST_NAME_SUFFIX}", host.0)
}

/// Parses a server name made by [`host_server_name`] back into its [`HostId`].
///
/// Returns `None` for any other name (wrong prefix or suffix, non-decimal or out-of-range id,
/// leading `+` or zeros that [`host_server_name`] never writes).
pub fn parse_host_server_name(name: &str) -> Option<HostId> {
    let digits = name.strip_prefix("host-")?.strip_suffix(HOST_NAME_SUFFIX)?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse::<u32>().ok().map(HostId)
}

/// Reads the [`HostId`] from a DER-encoded host certificate: the one DNS subject alternative
/// name of the form `host-<id>.fragmenta`.
///
/// This does not verify the certificate; TLS does that before a peer's certificate is ever seen.
pub fn host_id_from_cert(der: &[u8]) -> Result<HostId, CertIdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CertIdentityError::Unparsable {
            reason: e.to_string(),
        })?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertIdentityError::Unparsable {
            reason: e.to_string(),
        })?
        .ok_or(CertIdentityError::NoHostName)?;
    let mut found: Option<HostId> = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
            if let Some(id) = parse_host_server_name(dns) {
                match found {
                    Some(prev) if prev != id => {
                        return Err(CertIdentityError::AmbiguousHostName {
                            first: prev,
                            second: id,
                        })
                    }
                    _ => found = Some(id),
                }
            }
        }
    }
    found.ok_or(CertIdentityError::NoHostName)
}

/// Why a host id could not be read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertIdentityError {
    /// The certificate is not valid DER X.509, or its SAN extension is malformed.
    #[error("certificate cannot be parsed: {reason}")]
    Unparsable {
        /// The parser's message.
        reason: String,
    },
    /// The certificate has no DNS name of the form `host-<id>.fragmenta`.
    #[error("certificate has no `host-<id>{HOST_NAME_SUFFIX}` DNS name")]
    NoHostName,
    /// The certificate names two different hosts.
    #[error("certificate names two hosts: {first} and {second}")]
    AmbiguousHostName {
        /// The first host name found.
        first: HostId,
        /// A different host name found after it.
        second: HostId,
    },
}

/// The files of one host: its certificate and private key (both PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCertPaths {
    /// `host-<id>.pem`.
    pub cert: PathBuf,
    /// `host-<id>.key`.
    pub key: PathBuf,
}

impl HostCertPaths {
    /// The paths of `host`'s files inside the certificate directory `dir` (whether or not they
    /// exist).
    pub fn in_dir(dir: &Path, host: HostId) -> Self {
        Self {
            cert: dir.join(format!("host-{}.pem", host.0)),
            key: dir.join(format!("host-{}.key", host.0)),
        }
    }
}

/// Everything [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// `ca.pem`: the CA certificate every host trusts.
    pub ca: PathBuf,
    /// Each host's files, in the order the hosts were given.
    pub hosts: Vec<(HostId, HostCertPaths)>,
}

/// Errors of [`generate`] and [`add_host`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The same host id was given twice.
    #[error("host id {0} given twice")]
    DuplicateHost(HostId),
    /// Creating the directory or setting its permissions failed.
    #[error("cannot create certificate directory {path}: {reason}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// Writing a file failed.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// Reading the CA certificate or key (for [`add_host`]) failed.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The CA certificate or key in the directory could not be parsed.
    #[error("invalid CA file {path}: {reason}")]
    InvalidCa {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// The certificate of `host` already exists (for [`add_host`]; host ids are never reused).
    #[error("a certificate for {host} already exists at {path}")]
    HostExists {
        /// The host.
        host: HostId,
        /// Its existing certificate.
        path: PathBuf,
    },
    /// The requested validity is longer than [`MAX_VALIDITY`].
    #[error("certificate validity {validity:?} exceeds the maximum of {max:?}")]
    Validity {
        /// The validity asked for.
        validity: Duration,
        /// The maximum.
        max: Duration,
    },
    /// Generating a key or signing a certificate failed.
    #[error("cannot generate certificate for {subject}: {reason}")]
    Generate {
        /// `"CA"` or the host's name.
        subject: String,
        /// rcgen's message.
        reason: String,
    },
}

/// Creates `dir` (mode 0700) if needed and writes a fresh CA (`ca.pem`, `ca.key`) and, for each
/// host, `host-<id>.pem` and `host-<id>.key` signed by that CA. Key files get mode 0600.
///
/// Existing files of the same names are overwritten: this is how a cluster's certificates are
/// regenerated. Certificates get the default [`CertOptions`].
pub fn generate(dir: &Path, cluster: &str, hosts: &[HostId]) -> Result<CertPaths, CertError> {
    generate_with(dir, cluster, hosts, &CertOptions::default())
}

/// [`generate`] with the validity of `options`.
pub fn generate_with(
    dir: &Path,
    cluster: &str,
    hosts: &[HostId],
    options: &CertOptions,
) -> Result<CertPaths, CertError> {
    let (not_before, not_after) = validity_window(options.host_validity.max(CA_VALIDITY))?;
    for (i, host) in hosts.iter().enumerate() {
        if hosts[..i].contains(host) {
            return Err(CertError::DuplicateHost(*host));
        }
    }
    create_dir(dir)?;

    let gen_err = |reason: rcgen::Error| CertError::Generate {
        subject: "CA".to_owned(),
        reason: reason.to_string(),
    };
    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let mut params = ca_params(cluster);
    params.not_before = not_before;
    params.not_after = not_after;
    let ca_cert = params.self_signed(&ca_key).map_err(gen_err)?;

    let ca_path = dir.join(CA_CERT_FILE);
    write_file(&ca_path, ca_cert.pem().as_bytes(), false)?;
    write_file(
        &dir.join(CA_KEY_FILE),
        ca_key.serialize_pem().as_bytes(),
        true,
    )?;

    let issuer = Issuer::new(params, ca_key);
    let mut out = Vec::with_capacity(hosts.len());
    for &host in hosts {
        out.push((host, write_host(dir, host, &issuer, options)?));
    }
    Ok(CertPaths {
        ca: ca_path,
        hosts: out,
    })
}

/// Signs a certificate for a new `host` with the CA whose `ca.pem` and `ca.key` are in `dir`,
/// writing `host-<id>.pem` and `host-<id>.key`.
///
/// Refuses with [`CertError::HostExists`] when `host` already has a certificate there.
/// The certificate gets the default [`CertOptions`].
pub fn add_host(dir: &Path, host: HostId) -> Result<HostCertPaths, CertError> {
    add_host_with(dir, host, &CertOptions::default())
}

/// [`add_host`] with the validity of `options`.
pub fn add_host_with(
    dir: &Path,
    host: HostId,
    options: &CertOptions,
) -> Result<HostCertPaths, CertError> {
    validity_window(options.host_validity)?;
    let ca_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let ca_pem = read_file(&ca_path)?;
    let key_pem = read_file(&key_path)?;
    let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| CertError::InvalidCa {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| CertError::InvalidCa {
        path: ca_path.clone(),
        reason: e.to_string(),
    })?;
    let paths = HostCertPaths::in_dir(dir, host);
    if paths.cert.exists() {
        return Err(CertError::HostExists {
            host,
            path: paths.cert,
        });
    }
    write_host(dir, host, &issuer, options)
}

/// The parameters of the CA certificate of `cluster` (a CA that signs host certificates only).
pub(crate) fn ca_params(cluster: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("fragmenta cluster CA {cluster}"),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "fragmenta");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A certificate for `host` with a fresh key, signed by `issuer`: valid for TLS server and
/// client authentication, naming the host as its one DNS name, valid from `validity.0` to
/// `validity.1` (rcgen's defaults without).
pub(crate) fn sign_host(
    host: HostId,
    issuer: &Issuer<'_, KeyPair>,
    validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
) -> Result<(rcgen::Certificate, KeyPair), rcgen::Error> {
    let name = host_server_name(host);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.clone()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, &name);
    params.use_authority_key_identifier_extension = true;
    if let Some((not_before, not_after)) = validity {
        params.not_before = not_before;
        params.not_after = not_after;
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert, key))
}

fn write_host(
    dir: &Path,
    host: HostId,
    issuer: &Issuer<'_, KeyPair>,
    options: &CertOptions,
) -> Result<HostCertPaths, CertError> {
    let (not_before, not_after) = validity_window(options.host_validity)?;
    let name = host_server_name(host);
    let gen_err = |reason: rcgen::Error| CertError::Generate {
        subject: name.clone(),
        reason: reason.to_string(),
    };
    let (cert, key) = sign_host(host, issuer, Some((not_before, not_after))).map_err(gen_err)?;
    let paths = HostCertPaths::in_dir(dir, host);
    write_file(&paths.cert, cert.pem().as_bytes(), false)?;
    write_file(&paths.key, key.serialize_pem().as_bytes(), true)?;
    Ok(paths)
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    let err = |e: std::io::Error| CertError::CreateDir {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    };
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir).map_err(err)?;
        // An existing directory keeps its mode under `create`; tighten it.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    #[cfg(not(unix))]
    builder.create(dir).map_err(err)?;
    Ok(())
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), CertError> {
    let err = |e: std::io::Error| CertError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = opts.open(path).map_err(err)?;
    #[cfg(unix)]
    if secret {
        // `mode` only applies to newly created files; an overwritten key keeps its old mode.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(err)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)
}

fn read_file(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|e| CertError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_roundtrip() {
        for id in [0, 1, 42, u32::MAX] {
            let name = host_server_name(HostId(id));
            assert_eq!(parse_host_server_name(&name), Some(HostId(id)));
        }
        assert_eq!(host_server_name(HostId(7)), "host-7.fragmenta");
        for bad in [
            "host-.fragmenta",
            "host-07.fragmenta",
            "host-+7.fragmenta",
            "host-7.example",
            "node-7.fragmenta",
            "host-4294967296.fragmenta",
        ] {
            assert_eq!(parse_host_server_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn generate_writes_files_with_modes_and_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let hosts = [HostId(0), HostId(3)];
        let paths = generate(&dir, "test", &hosts).unwrap();
        assert_eq!(paths.ca, dir.join("ca.pem"));
        assert_eq!(paths.hosts.len(), 2);
        for (host, files) in &paths.hosts {
            let pem = fs::read_to_string(&files.cert).unwrap();
            let der = pem_to_der(&pem);
            assert_eq!(host_id_from_cert(&der), Ok(*host));
            assert!(files.key.exists());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(&dir.join("ca.key")), 0o600);
            assert_eq!(mode(&paths.hosts[1].1.key), 0o600);
        }
        let added = add_host(&dir, HostId(9)).unwrap();
        let der = pem_to_der(&fs::read_to_string(&added.cert).unwrap());
        assert_eq!(host_id_from_cert(&der), Ok(HostId(9)));
        assert!(matches!(
            add_host(&dir, HostId(9)),
            Err(CertError::HostExists {
                host: HostId(9),
                ..
            })
        ));
        assert_eq!(
            generate(&dir, "test", &[HostId(1), HostId(1)]),
            Err(CertError::DuplicateHost(HostId(1)))
        );
    }

    #[test]
    fn certificates_expire_after_their_validity() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = generate(tmp.path(), "test", &[HostId(1)]).unwrap();
        let days_left = |path: &Path| {
            let der = pem_to_der(&fs::read_to_string(path).unwrap());
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            let left = cert.validity().not_after.timestamp()
                - time::OffsetDateTime::now_utc().unix_timestamp();
            left / 86400
        };
        // Default: hosts one year, the CA ten.
        assert!((364..=365).contains(&days_left(&paths.hosts[0].1.cert)));
        assert!((3649..=3650).contains(&days_left(&paths.ca)));
        let week = CertOptions {
            host_validity: Duration::from_secs(7 * 86400),
        };
        let added = add_host_with(tmp.path(), HostId(2), &week).unwrap();
        assert!((6..=7).contains(&days_left(&added.cert)));
        let too_long = CertOptions {
            host_validity: MAX_VALIDITY + Duration::from_secs(1),
        };
        assert!(matches!(
            generate_with(&tmp.path().join("x"), "test", &[HostId(1)], &too_long),
            Err(CertError::Validity { .. })
        ));
        assert!(!tmp.path().join("x").exists(), "nothing written");
    }

    #[test]
    fn add_host_without_ca_is_a_read_error() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            add_host(tmp.path(), HostId(1)),
            Err(CertError::Read { .. })
        ));
    }

    #[test]
    fn garbage_is_not_a_host_cert() {
        assert!(matches!(
            host_id_from_cert(b"not a certificate"),
            Err(CertIdentityError::Unparsable { .. })
        ));
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        let mut reader = pem.as_bytes();
        let certs: Vec<_> = rustls_pki_types::pem::PemObject::pem_reader_iter(&mut reader)
            .collect::<Result<Vec<rustls_pki_types::CertificateDer<'static>>, _>>()
            .unwrap();
        certs[0].to_vec()
    }
}
