//! A cluster CA derived from a shared secret, for clusters that a launcher (`srun`, `mpirun`)
//! forms with no certificate files.
//!
//! Every process of the cluster holds the same 32-byte [`ClusterSecret`]. From it and the
//! cluster name, HKDF-SHA256 derives an Ed25519 seed: the CA key, the same in every process,
//! and from it the same self-signed CA certificate ([`derive_ca`]). Each process then issues
//! its **own** host certificate with a fresh key ([`DerivedCa::issue_host`]) that never leaves
//! the process, and peers verify each other exactly as with certificate files: mutual TLS
//! against that CA only.
//!
//! Trade-offs: whoever holds the secret can mint a certificate for any host of any cluster
//! name, so the secret is as sensitive as a CA key. The cluster name is part of the derivation,
//! so a host of another cluster (another job) is refused even with the same secret. A secret
//! file must not be readable by group or others ([`ClusterSecret::read_file`] refuses it
//! otherwise); a secret passed in the environment (`FRAGMENTA_SECRET`) is visible to the
//! processes of the same user and, under `sbatch`, stored with the job in the controller's
//! state: prefer the file.

use std::path::{Path, PathBuf};

use fragmenta_job::HostId;
use rcgen::{Issuer, KeyPair};
use ring::hkdf;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::certs::{self, CertError};
use crate::tls::TlsIdentity;

/// Bytes of a cluster secret.
pub const SECRET_LEN: usize = 32;
/// Environment variable naming a secret file (hex, mode 0600).
pub const SECRET_FILE_ENV: &str = "FRAGMENTA_SECRET_FILE";
/// Environment variable holding the secret itself, in hex.
pub const SECRET_ENV: &str = "FRAGMENTA_SECRET";
/// Largest secret file read (a hex secret and some whitespace): a bigger file is refused.
const MAX_SECRET_FILE: u64 = 4096;
/// Salt of the HKDF extraction; changing it changes every derived CA.
const HKDF_SALT: &[u8] = b"fragmenta cluster CA v1";

/// A 32-byte cluster secret. Its `Debug` output does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret([u8; SECRET_LEN]);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

/// Why a secret could not be made, read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The text is not 64 hexadecimal digits.
    #[error("{origin}: a cluster secret is {} hexadecimal digits, got {got}", SECRET_LEN * 2)]
    NotHex {
        /// Where the text came from (a variable or a file).
        origin: String,
        /// What was found instead, described (never the value).
        got: String,
    },
    /// The secret file could not be read or written.
    #[error("cannot {action} secret file {}: {reason}", path.display())]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The secret file can be read by group or others.
    #[error(
        "secret file {} has mode {mode:04o}: it must be readable by its owner only \
         (chmod 600 {})", path.display(), path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The operating system's random generator failed.
    #[error("the system random generator failed")]
    Random,
}

impl ClusterSecret {
    /// A fresh random secret from the operating system's generator.
    pub fn generate() -> Result<ClusterSecret, SecretError> {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; SECRET_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SecretError::Random)?;
        Ok(ClusterSecret(bytes))
    }

    /// The secret with these bytes.
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> ClusterSecret {
        ClusterSecret(bytes)
    }

    /// Parses 64 hexadecimal digits (surrounding whitespace ignored); `origin` names the source
    /// in the error.
    pub fn from_hex(text: &str, origin: &str) -> Result<ClusterSecret, SecretError> {
        let text = text.trim();
        let not_hex = |got: String| SecretError::NotHex {
            origin: origin.to_owned(),
            got,
        };
        if text.len() != SECRET_LEN * 2 {
            return Err(not_hex(format!("{} characters", text.chars().count())));
        }
        let mut bytes = [0u8; SECRET_LEN];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let digit = |b: u8| (b as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => bytes[i] = (h * 16 + l) as u8,
                _ => {
                    return Err(not_hex(
                        "a character that is not a hexadecimal digit".into(),
                    ))
                }
            }
        }
        Ok(ClusterSecret(bytes))
    }

    /// The secret as 64 lowercase hexadecimal digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads a secret file: hexadecimal digits, readable by its owner only (mode 0600 or
    /// 0400; any group or other permission bit is refused with the reason).
    pub fn read_file(path: &Path) -> Result<ClusterSecret, SecretError> {
        let io = |e: std::io::Error| SecretError::Io {
            action: "read",
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(SecretError::Permissions {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        if meta.len() > MAX_SECRET_FILE {
            return Err(SecretError::NotHex {
                origin: path.display().to_string(),
                got: format!("a file of {} bytes", meta.len()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        ClusterSecret::from_hex(&text, &path.display().to_string())
    }

    /// Writes the secret to a new file `path` with mode 0600 (hexadecimal digits and a
    /// newline); an existing file is not overwritten.
    pub fn write_file(&self, path: &Path) -> Result<(), SecretError> {
        use std::io::Write;
        let io = |e: std::io::Error| SecretError::Io {
            action: "write",
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(path).map_err(io)?;
        file.write_all(format!("{}\n", self.to_hex()).as_bytes())
            .map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// The secret of the environment read through `lookup`: the file named by
    /// [`SECRET_FILE_ENV`], else [`SECRET_ENV`] (hex); `None` when neither is set.
    pub fn from_env_with(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ClusterSecret>, SecretError> {
        if let Some(path) = lookup(SECRET_FILE_ENV) {
            return ClusterSecret::read_file(Path::new(path.trim())).map(Some);
        }
        match lookup(SECRET_ENV) {
            Some(hex) => ClusterSecret::from_hex(&hex, SECRET_ENV).map(Some),
            None => Ok(None),
        }
    }
}

/// Length type for HKDF output.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The Ed25519 seed of the CA of `cluster`: HKDF-SHA256 of the secret, with the cluster name as
/// the context.
fn ca_seed(secret: &ClusterSecret, cluster: &str) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&secret.0);
    let info = [b"fragmenta CA key\0".as_slice(), cluster.as_bytes()];
    let mut seed = [0u8; 32];
    // Expanding 32 bytes with SHA-256 is always within HKDF's limit (255 × 32 bytes).
    if let Ok(okm) = prk.expand(&info, Len(seed.len())) {
        let _ = okm.fill(&mut seed);
    }
    seed
}

/// PKCS#8 v1 DER of an Ed25519 private key with this seed (RFC 8410).
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    der
}

/// The CA of one cluster, derived from its secret: the same certificate in every process that
/// derives it with the same secret and cluster name.
pub struct DerivedCa {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for DerivedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DerivedCa").finish_non_exhaustive()
    }
}

/// Derives the CA of `cluster` from `secret` (see the [module](self) docs).
pub fn derive_ca(secret: &ClusterSecret, cluster: &str) -> Result<DerivedCa, CertError> {
    let gen_err = |e: rcgen::Error| CertError::Generate {
        subject: "CA".to_owned(),
        reason: e.to_string(),
    };
    let pkcs8 = PrivatePkcs8KeyDer::from(ed25519_pkcs8(&ca_seed(secret, cluster)));
    let key =
        KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519).map_err(gen_err)?;
    // Fixed validity (rcgen's defaults), a serial from the public key and deterministic
    // Ed25519 signatures: the same DER everywhere.
    let params = certs::ca_params(cluster);
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(DerivedCa {
        cert: cert.der().clone(),
        issuer: Issuer::new(params, key),
    })
}

impl DerivedCa {
    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert
    }

    /// A certificate for `host` with a fresh key, signed by this CA, as an in-memory TLS
    /// identity for [`Endpoint::bind_quic_identity`](crate::Endpoint::bind_quic_identity).
    pub fn issue_host(&self, host: HostId) -> Result<TlsIdentity, CertError> {
        let (cert, key) =
            certs::sign_host(host, &self.issuer, None).map_err(|e| CertError::Generate {
                subject: certs::host_server_name(host),
                reason: e.to_string(),
            })?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(TlsIdentity {
            ca: self.cert.clone(),
            chain: vec![cert.der().clone()],
            key: std::sync::Arc::new(key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> ClusterSecret {
        ClusterSecret::from_bytes([b; SECRET_LEN])
    }

    #[test]
    fn the_ca_depends_on_secret_and_name_only() {
        let a = derive_ca(&secret(1), "slurm-7.0").unwrap();
        let b = derive_ca(&secret(1), "slurm-7.0").unwrap();
        assert_eq!(a.cert_der(), b.cert_der());
        assert_ne!(
            a.cert_der(),
            derive_ca(&secret(2), "slurm-7.0").unwrap().cert_der()
        );
        assert_ne!(
            a.cert_der(),
            derive_ca(&secret(1), "slurm-7.1").unwrap().cert_der()
        );
    }

    #[test]
    fn each_host_gets_a_fresh_key() {
        let ca = derive_ca(&secret(3), "c").unwrap();
        let one = ca.issue_host(HostId(1)).unwrap();
        let again = ca.issue_host(HostId(1)).unwrap();
        assert_ne!(one.cert_der(), again.cert_der());
        assert_eq!(certs::host_id_from_cert(one.cert_der()), Ok(HostId(1)));
        assert_eq!(one.ca_der(), ca.cert_der());
        assert!(!format!("{one:?}").contains("key:"));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let s = ClusterSecret::generate().unwrap();
        assert_eq!(ClusterSecret::from_hex(&s.to_hex(), "x"), Ok(s.clone()));
        assert_eq!(
            ClusterSecret::from_hex(&format!(" {}\n", s.to_hex().to_uppercase()), "x"),
            Ok(s)
        );
        assert!(matches!(
            ClusterSecret::from_hex("abc", SECRET_ENV),
            Err(SecretError::NotHex { origin, .. }) if origin == SECRET_ENV
        ));
        let bad = "g".repeat(64);
        assert!(ClusterSecret::from_hex(&bad, "x").is_err());
        assert_eq!(format!("{:?}", secret(9)), "ClusterSecret(..)");
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let s = ClusterSecret::generate().unwrap();
        s.write_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ClusterSecret::read_file(&path), Ok(s.clone()));
        assert!(matches!(
            s.write_file(&path),
            Err(SecretError::Io {
                action: "write",
                ..
            })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ClusterSecret::read_file(&path).unwrap_err();
        assert_eq!(
            err,
            SecretError::Permissions {
                path: path.clone(),
                mode: 0o644
            }
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        let env = |var: &str| (var == SECRET_FILE_ENV).then(|| path.display().to_string());
        assert!(ClusterSecret::from_env_with(env).is_err());
        assert_eq!(ClusterSecret::from_env_with(|_| None), Ok(None));
    }
}
