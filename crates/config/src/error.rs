//! The errors of this crate.

use std::fmt;
use std::path::PathBuf;

/// Where a host id came from, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostIdOrigin {
    /// The command line (`--host-id`).
    CommandLine,
    /// The environment variable with this name.
    Env(&'static str),
}

impl fmt::Display for HostIdOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostIdOrigin::CommandLine => f.write_str("--host-id"),
            HostIdOrigin::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// Everything that can go wrong when loading a cluster configuration or choosing this process's
/// host in it.
///
/// Field paths look like `cluster.name` or `host[1].cores`, where `host[1]` is the second
/// `[[host]]` table of the file (counting from 0). Line and column numbers count from 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read cluster config {}: {message}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error kind.
        kind: std::io::ErrorKind,
        /// The I/O error, as text.
        message: String,
    },
    /// The text is not valid TOML.
    #[error("TOML syntax error at line {line}, column {column}: {message}")]
    Syntax {
        /// Line of the error.
        line: usize,
        /// Column of the error.
        column: usize,
        /// What the TOML parser said.
        message: String,
    },
    /// A field this version does not know (often a typo).
    #[error("unknown field `{field}` at line {line}")]
    UnknownField {
        /// Path of the unknown field, e.g. `host[1].core`.
        field: String,
        /// Line of the field.
        line: usize,
    },
    /// A required field is absent.
    #[error("missing field `{field}` (table at line {line})")]
    MissingField {
        /// Path of the missing field, e.g. `host[0].address`.
        field: String,
        /// Line of the table that lacks it (0 if unknown).
        line: usize,
    },
    /// A field has a value of the wrong TOML type (e.g. a string where a number belongs).
    #[error("`{field}` at line {line}: {message}")]
    WrongType {
        /// Path of the field.
        field: String,
        /// Line of the value.
        line: usize,
        /// What was expected and found.
        message: String,
    },
    /// A field has a value of the right type that breaks a rule.
    #[error("invalid `{field}`: {reason}")]
    InvalidField {
        /// Path of the field, e.g. `host[2].address`.
        field: String,
        /// The rule it breaks.
        reason: String,
    },
    /// A host id that is reserved: `4294967295` (`u32::MAX`) is `HostId::UNASSIGNED`, the
    /// marker of a fragment assigned to no host, and can never be a real host's.
    #[error(
        "invalid `{field}`: {id} is reserved (it marks a fragment assigned to no host); \
         use an id below {id}"
    )]
    ReservedHostId {
        /// Path of the id field, e.g. `host[1].id`.
        field: String,
        /// The id.
        id: u32,
    },
    /// A file the configuration names does not exist (see `ClusterConfig::check_files`).
    #[error(
        "`{field}` names {path}, which does not exist; \
         create the certificates with `fragmenta certs --config <this config file>`",
        path = path.display()
    )]
    MissingFile {
        /// Path of the field that names the file, e.g. `host[0].cert`.
        field: String,
        /// The missing file.
        path: PathBuf,
    },
    /// A host address could not be resolved to a socket address.
    #[error("cannot resolve `{field}` = {address:?}: {reason}")]
    Resolve {
        /// Path of the address field.
        field: String,
        /// The address as written.
        address: String,
        /// Why it failed.
        reason: String,
    },
    /// A host id (or launcher rank) is not a non-negative integer.
    #[error("{origin} = {value:?} is not a valid {what}")]
    NotANumber {
        /// Where the value came from.
        origin: HostIdOrigin,
        /// The value as given.
        value: String,
        /// `host id` or `rank`.
        what: &'static str,
    },
    /// A host id that the configuration does not list.
    #[error("{origin} = {id}: no host with id {id} in cluster config (ids: {known})")]
    UnknownHostId {
        /// Where the id came from.
        origin: HostIdOrigin,
        /// The id.
        id: u32,
        /// The ids the configuration lists, comma-separated.
        known: String,
    },
    /// A launcher rank beyond the number of hosts in the configuration.
    #[error("{var} = {rank}: rank out of range, the cluster config lists {hosts} hosts")]
    RankOutOfRange {
        /// The launcher variable.
        var: &'static str,
        /// The rank.
        rank: u64,
        /// The number of hosts in the configuration.
        hosts: usize,
    },
    /// A launcher was detected but its variables are unusable.
    #[error(transparent)]
    Launcher(#[from] crate::launcher::LauncherError),
    /// No host id anywhere: not on the command line nor in the environment.
    #[error(
        "cannot tell which host this process is: pass --host-id, set FRAGMENTA_HOST_ID, \
         or start it under a launcher (fragmenta launch, srun, mpirun)"
    )]
    NoHostId,
}
