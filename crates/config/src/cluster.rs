//! The validated cluster configuration.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fragmenta_job::HostId;

use crate::error::ConfigError;
use crate::file::{ClusterSection, ConfigFile, HostSection};
use crate::locate;

/// Default `cluster.min_hosts_timeout_ms`: 30 s.
pub const DEFAULT_MIN_HOSTS_TIMEOUT_MS: u64 = 30_000;
/// Default `cluster.heartbeat_interval_ms`: 500 ms.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 500;
/// Default `cluster.failure_timeout_ms`: 2.5 s. Hosts check their peers every half heartbeat
/// interval, so with the default interval a dead host is declared down at most 2.75 s after
/// its last heartbeat: within 3 s.
pub const DEFAULT_FAILURE_TIMEOUT_MS: u64 = 2_500;

/// A validated cluster configuration: the hosts of one cluster and its settings.
///
/// Made by [`ClusterConfig::load`], [`ClusterConfig::from_toml_str`] or
/// [`ClusterConfig::from_config_file`], which check every field; holding one means the
/// configuration is consistent (unique ids and addresses, sane durations, …). Certificate files
/// are not checked at load time, see [`ClusterConfig::check_files`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    name: String,
    base_dir: PathBuf,
    ca_cert: PathBuf,
    min_hosts: usize,
    min_hosts_timeout: Duration,
    heartbeat_interval: Duration,
    failure_timeout: Duration,
    max_frame_bytes: Option<u64>,
    same_machine: bool,
    hosts: Vec<HostConfig>,
}

/// One host of a [`ClusterConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    index: usize,
    id: HostId,
    address: String,
    sub_cluster: u32,
    cores: u32,
    gpus: u32,
    fastio_capacity_mib: Option<u64>,
    fastio_socket: Option<PathBuf>,
    cert: PathBuf,
    key: PathBuf,
}

impl HostConfig {
    /// The host id.
    pub fn id(&self) -> HostId {
        self.id
    }

    /// The address as written: `ip:port`, `[ipv6]:port` or `hostname:port`.
    ///
    /// A literal socket address is checked at load time; a `hostname:port` is only checked for
    /// shape and resolved when used, by [`HostConfig::socket_addr`], so that a configuration
    /// for machines not reachable from here still loads.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The address as a socket address, resolving a host name if needed (first result).
    pub fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        if let Ok(addr) = self.address.parse::<SocketAddr>() {
            return Ok(addr);
        }
        let resolve_error = |reason: String| ConfigError::Resolve {
            field: format!("host[{}].address", self.index),
            address: self.address.clone(),
            reason,
        };
        let mut addrs = self
            .address
            .to_socket_addrs()
            .map_err(|e| resolve_error(e.to_string()))?;
        addrs
            .next()
            .ok_or_else(|| resolve_error("the name has no addresses".to_owned()))
    }

    /// The sub-cluster this host belongs to (0 by default).
    pub fn sub_cluster(&self) -> u32 {
        self.sub_cluster
    }

    /// CPU cores this host offers (the cpu_load capacity).
    pub fn cores(&self) -> u32 {
        self.cores
    }

    /// GPUs this host offers (the gpu_load capacity).
    pub fn gpus(&self) -> u32 {
        self.gpus
    }

    /// Capacity of the host's Fast I/O context in bytes, if the configuration sets one.
    pub fn fastio_capacity(&self) -> Option<u64> {
        self.fastio_capacity_mib.map(|m| m.saturating_mul(1 << 20))
    }

    /// The Unix socket the host serves its Fast I/O context on, if the configuration sets one.
    pub fn fastio_socket(&self) -> Option<&Path> {
        self.fastio_socket.as_deref()
    }

    /// The host's certificate file (PEM), resolved against the config file's folder.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// The host's private key file (PEM), resolved against the config file's folder.
    pub fn key(&self) -> &Path {
        &self.key
    }
}

impl ClusterConfig {
    /// Reads and validates the configuration file at `path`; relative paths in it are resolved
    /// against the file's folder (made absolute).
    pub fn load(path: impl AsRef<Path>) -> Result<ClusterConfig, ConfigError> {
        let path = path.as_ref();
        let read_error = |e: std::io::Error| ConfigError::Read {
            path: path.to_owned(),
            kind: e.kind(),
            message: e.to_string(),
        };
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        let absolute = std::path::absolute(path).map_err(read_error)?;
        let base_dir = absolute.parent().unwrap_or(Path::new("/"));
        ClusterConfig::from_toml_str(&text, base_dir)
    }

    /// Parses and validates configuration text; relative paths in it are resolved against
    /// `base_dir`.
    pub fn from_toml_str(
        text: &str,
        base_dir: impl AsRef<Path>,
    ) -> Result<ClusterConfig, ConfigError> {
        let file = parse(text)?;
        ClusterConfig::from_config_file(file, base_dir)
    }

    /// Validates an unchecked [`ConfigFile`]; relative paths in it are resolved against
    /// `base_dir`. `cores` left out default to this machine's available parallelism.
    pub fn from_config_file(
        file: ConfigFile,
        base_dir: impl AsRef<Path>,
    ) -> Result<ClusterConfig, ConfigError> {
        validate(file, base_dir.as_ref())
    }

    /// The configuration as TOML that [`ClusterConfig::from_toml_str`] turns back into an equal
    /// configuration (with the same `base_dir`). Every default is written out explicitly;
    /// paths under `base_dir` are written relative to it.
    pub fn to_toml_string(&self) -> String {
        match toml::to_string(&self.to_config_file()) {
            Ok(text) => text,
            // ConfigFile holds only strings, integers, tables and arrays of tables: always
            // representable in TOML.
            Err(e) => unreachable!("a ConfigFile always serializes to TOML: {e}"),
        }
    }

    /// The configuration as an unchecked [`ConfigFile`], with every default filled in.
    pub fn to_config_file(&self) -> ConfigFile {
        let ms = |d: Duration| Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        ConfigFile {
            cluster: ClusterSection {
                name: self.name.clone(),
                ca_cert: self.relative(&self.ca_cert),
                min_hosts: Some(self.min_hosts as i64),
                min_hosts_timeout_ms: ms(self.min_hosts_timeout),
                heartbeat_interval_ms: ms(self.heartbeat_interval),
                failure_timeout_ms: ms(self.failure_timeout),
                max_frame_bytes: self
                    .max_frame_bytes
                    .map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
                same_machine: Some(self.same_machine),
            },
            hosts: self
                .hosts
                .iter()
                .map(|h| HostSection {
                    id: i64::from(h.id.0),
                    address: h.address.clone(),
                    sub_cluster: Some(i64::from(h.sub_cluster)),
                    cores: Some(i64::from(h.cores)),
                    gpus: Some(i64::from(h.gpus)),
                    fastio_capacity_mib: h
                        .fastio_capacity_mib
                        .map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
                    fastio_socket: h.fastio_socket.as_deref().map(|p| self.relative(p)),
                    cert: self.relative(&h.cert),
                    key: self.relative(&h.key),
                })
                .collect(),
        }
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.base_dir)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    /// Checks that the CA certificate and every host's certificate and key exist, in that
    /// order; the error names the first missing file and its field.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let mut files = vec![("cluster.ca_cert".to_owned(), &self.ca_cert)];
        for (i, host) in self.hosts.iter().enumerate() {
            files.push((format!("host[{i}].cert"), &host.cert));
            files.push((format!("host[{i}].key"), &host.key));
        }
        for (field, path) in files {
            if !path.is_file() {
                return Err(ConfigError::MissingFile {
                    field,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }

    /// The cluster name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The folder relative paths were resolved against.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The cluster CA certificate file (PEM).
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    /// Hosts that must be up before jobs run (1..=number of hosts).
    pub fn min_hosts(&self) -> usize {
        self.min_hosts
    }

    /// How long to wait for [`ClusterConfig::min_hosts`] hosts.
    pub fn min_hosts_timeout(&self) -> Duration {
        self.min_hosts_timeout
    }

    /// Interval between heartbeats; always less than the failure timeout.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// Silence after which a host is declared dead.
    pub fn failure_timeout(&self) -> Duration {
        self.failure_timeout
    }

    /// Largest message frame accepted, if the configuration sets one.
    pub fn max_frame_bytes(&self) -> Option<u64> {
        self.max_frame_bytes
    }

    /// Whether hosts of one machine pass result bytes and fetches through shared memory
    /// (`same_machine`, default true; a host's `FRAGMENTA_SAME_MACHINE=0` also turns it off).
    pub fn same_machine(&self) -> bool {
        self.same_machine
    }

    /// The hosts, in file order (at least one).
    pub fn hosts(&self) -> &[HostConfig] {
        &self.hosts
    }

    /// The host with id `id`.
    pub fn host(&self, id: HostId) -> Option<&HostConfig> {
        self.hosts.iter().find(|h| h.id == id)
    }

    /// The position of host `id` in file order (its rank).
    pub fn host_index(&self, id: HostId) -> Option<usize> {
        self.hosts.iter().position(|h| h.id == id)
    }

    /// The host ids, in file order.
    pub fn host_ids(&self) -> impl Iterator<Item = HostId> + '_ {
        self.hosts.iter().map(|h| h.id)
    }
}

/// Parses TOML into a [`ConfigFile`], turning serde's errors into ones that name the field.
fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
    if let Err(e) = toml::de::DeTable::parse(text) {
        let (line, column) = e.span().map_or((0, 0), |s| locate::line_col(text, s.start));
        return Err(ConfigError::Syntax {
            line,
            column,
            message: e.message().to_owned(),
        });
    }
    toml::from_str::<ConfigFile>(text).map_err(|e| {
        let message = e.message().to_owned();
        let pos = e.span().map(|s| s.start);
        let line = pos.map_or(0, |p| locate::line_col(text, p).0);
        let at = pos.and_then(|p| locate::field_at(text, p));
        if let Some(name) = quoted_after(&message, "missing field `") {
            let field = match at {
                Some(table) => format!("{table}.{name}"),
                None => name.to_owned(),
            };
            return ConfigError::MissingField { field, line };
        }
        let field = at.unwrap_or_default();
        if message.starts_with("unknown field `") {
            return ConfigError::UnknownField { field, line };
        }
        ConfigError::WrongType {
            field,
            line,
            message,
        }
    })
}

/// The text between `prefix` and the next backtick, if `message` starts with `prefix`.
fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next()
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A positive number of milliseconds, or the default.
fn duration_ms(value: Option<i64>, default: u64, field: &str) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(Duration::from_millis(default)),
        Some(ms) if ms > 0 => Ok(Duration::from_millis(ms as u64)),
        Some(ms) => Err(invalid(
            field,
            format!("must be > 0 milliseconds, got {ms}"),
        )),
    }
}

/// An integer in `min..=u32::MAX`, or the default.
fn u32_at_least(
    value: Option<i64>,
    min: u32,
    default: u32,
    field: &str,
) -> Result<u32, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    match u32::try_from(v) {
        Ok(v) if v >= min => Ok(v),
        _ => Err(invalid(
            field,
            format!("must be between {min} and {}, got {v}", u32::MAX),
        )),
    }
}

fn resolve_path(base_dir: &Path, value: &str, field: &str) -> Result<PathBuf, ConfigError> {
    if value.trim().is_empty() {
        return Err(invalid(field, "must name a file, got an empty string"));
    }
    Ok(base_dir.join(value))
}

/// Checks the shape of an address; returns the form used to detect duplicates.
fn check_address(address: &str, field: &str) -> Result<String, ConfigError> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(invalid(field, format!("{address:?}: port must not be 0")));
        }
        return Ok(addr.to_string());
    }
    let shape_error = || {
        invalid(
            field,
            format!("{address:?} is neither ip:port, [ipv6]:port nor hostname:port"),
        )
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(shape_error)?;
    let port: u16 = port.parse().map_err(|_| shape_error())?;
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.len() > 253 || !host.split('.').all(valid_label) {
        return Err(shape_error());
    }
    if port == 0 {
        return Err(invalid(field, format!("{address:?}: port must not be 0")));
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

fn default_cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// Checks a cluster name by the rules of `cluster.name` (not empty or blank, no control
/// characters); `field` names where it came from in the error.
pub fn check_cluster_name(name: &str, field: &str) -> Result<(), ConfigError> {
    if name.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn validate(file: ConfigFile, base_dir: &Path) -> Result<ClusterConfig, ConfigError> {
    let c = file.cluster;
    check_cluster_name(&c.name, "cluster.name")?;
    let ca_cert = resolve_path(base_dir, &c.ca_cert, "cluster.ca_cert")?;
    if file.hosts.is_empty() {
        return Err(invalid(
            "host",
            "the cluster needs at least one [[host]] table",
        ));
    }

    let mut hosts = Vec::with_capacity(file.hosts.len());
    let mut ids: HashMap<u32, usize> = HashMap::new();
    let mut addresses: HashMap<String, usize> = HashMap::new();
    let cores_default = default_cores();
    for (i, h) in file.hosts.into_iter().enumerate() {
        let field = |name: &str| format!("host[{i}].{name}");
        let id = u32::try_from(h.id).map_err(|_| {
            invalid(
                field("id"),
                format!("must be between 0 and {}, got {}", u32::MAX - 1, h.id),
            )
        })?;
        if HostId(id) == HostId::UNASSIGNED {
            return Err(ConfigError::ReservedHostId {
                field: field("id"),
                id,
            });
        }
        if let Some(first) = ids.insert(id, i) {
            return Err(invalid(
                field("id"),
                format!("duplicate id {id}, already used by host[{first}]"),
            ));
        }
        let normalized = check_address(&h.address, &field("address"))?;
        if let Some(first) = addresses.insert(normalized, i) {
            return Err(invalid(
                field("address"),
                format!(
                    "duplicate address {:?}, already used by host[{first}]",
                    h.address
                ),
            ));
        }
        hosts.push(HostConfig {
            index: i,
            id: HostId(id),
            address: h.address,
            sub_cluster: u32_at_least(h.sub_cluster, 0, 0, &field("sub_cluster"))?,
            cores: u32_at_least(h.cores, 1, cores_default, &field("cores"))?,
            gpus: u32_at_least(h.gpus, 0, 0, &field("gpus"))?,
            fastio_capacity_mib: match h.fastio_capacity_mib {
                None => None,
                Some(m) if m >= 1 => Some(m as u64),
                Some(m) => {
                    return Err(invalid(
                        field("fastio_capacity_mib"),
                        format!("must be at least 1, got {m}"),
                    ))
                }
            },
            fastio_socket: match &h.fastio_socket {
                None => None,
                Some(p) => Some(resolve_path(base_dir, p, &field("fastio_socket"))?),
            },
            cert: resolve_path(base_dir, &h.cert, &field("cert"))?,
            key: resolve_path(base_dir, &h.key, &field("key"))?,
        });
    }

    let min_hosts = match c.min_hosts {
        None => hosts.len(),
        Some(n) if n >= 1 && (n as u64) <= hosts.len() as u64 => n as usize,
        Some(n) => {
            return Err(invalid(
                "cluster.min_hosts",
                format!(
                    "must be between 1 and {} (the number of hosts), got {n}",
                    hosts.len()
                ),
            ))
        }
    };
    let min_hosts_timeout = duration_ms(
        c.min_hosts_timeout_ms,
        DEFAULT_MIN_HOSTS_TIMEOUT_MS,
        "cluster.min_hosts_timeout_ms",
    )?;
    let heartbeat_interval = duration_ms(
        c.heartbeat_interval_ms,
        DEFAULT_HEARTBEAT_INTERVAL_MS,
        "cluster.heartbeat_interval_ms",
    )?;
    let failure_timeout = duration_ms(
        c.failure_timeout_ms,
        DEFAULT_FAILURE_TIMEOUT_MS,
        "cluster.failure_timeout_ms",
    )?;
    if heartbeat_interval >= failure_timeout {
        return Err(invalid(
            "cluster.heartbeat_interval_ms",
            format!(
                "must be less than cluster.failure_timeout_ms ({} ms), got {} ms",
                failure_timeout.as_millis(),
                heartbeat_interval.as_millis()
            ),
        ));
    }
    let max_frame_bytes = match c.max_frame_bytes {
        None => None,
        Some(n) if n > 0 => Some(n as u64),
        Some(n) => {
            return Err(invalid(
                "cluster.max_frame_bytes",
                format!("must be > 0, got {n}"),
            ))
        }
    };

    Ok(ClusterConfig {
        name: c.name,
        base_dir: base_dir.to_owned(),
        ca_cert,
        min_hosts,
        min_hosts_timeout,
        heartbeat_interval,
        failure_timeout,
        max_frame_bytes,
        same_machine: c.same_machine.unwrap_or(true),
        hosts,
    })
}
