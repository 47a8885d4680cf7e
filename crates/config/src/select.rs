//! Which host of the cluster this process is.

use fragmenta_job::HostId;

use crate::error::{ConfigError, HostIdOrigin};
use crate::ClusterConfig;

/// Environment variable with the path of the cluster configuration file.
pub const CONFIG_ENV: &str = "FRAGMENTA_CONFIG";
/// Environment variable with this process's host id (set by `fragmenta launch`).
pub const HOST_ID_ENV: &str = "FRAGMENTA_HOST_ID";
/// Rank variables of other launchers, in the order [`detect_with`](crate::launcher::detect_with)
/// consults them (Open MPI, PMI, then a Slurm step). A rank `r` selects the `r`-th host of the
/// configuration, in file order. `SLURM_PROCID` counts only inside a step (`SLURM_STEP_ID` set).
pub const RANK_ENVS: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"];

/// Chooses this process's host, reading the process environment; see [`resolve_host_id_with`].
pub fn resolve_host_id(config: &ClusterConfig, cli: Option<u32>) -> Result<HostId, ConfigError> {
    resolve_host_id_with(config, cli, |var| std::env::var(var).ok())
}

/// Chooses this process's host, reading variables through `lookup` (`None` = not set).
///
/// Precedence: the command line (`cli`), then [`HOST_ID_ENV`] (a host id), then the first set
/// the rank of the launcher [`detect_with`](crate::launcher::detect_with) finds (the rank-th
/// host in config order; a batch shell is no launcher). A value that is set
/// but unusable is an error naming the variable and the value; it does not fall through to
/// the next source. Surrounding whitespace is ignored.
pub fn resolve_host_id_with(
    config: &ClusterConfig,
    cli: Option<u32>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<HostId, ConfigError> {
    if let Some(id) = cli {
        return known_id(config, HostIdOrigin::CommandLine, id);
    }
    if let Some(value) = lookup(HOST_ID_ENV) {
        let origin = HostIdOrigin::Env(HOST_ID_ENV);
        let id = value
            .trim()
            .parse::<u32>()
            .map_err(|_| ConfigError::NotANumber {
                origin,
                value: value.clone(),
                what: "host id",
            })?;
        return known_id(config, origin, id);
    }
    if let Some(launch) = crate::launcher::detect_with(&lookup)? {
        let host = usize::try_from(launch.rank)
            .ok()
            .and_then(|r| config.hosts().get(r))
            .ok_or(ConfigError::RankOutOfRange {
                var: launch.rank_var,
                rank: u64::from(launch.rank),
                hosts: config.hosts().len(),
            })?;
        return Ok(host.id());
    }
    Err(ConfigError::NoHostId)
}

fn known_id(config: &ClusterConfig, origin: HostIdOrigin, id: u32) -> Result<HostId, ConfigError> {
    if config.host(HostId(id)).is_some() {
        return Ok(HostId(id));
    }
    let known: Vec<String> = config.host_ids().map(|h| h.0.to_string()).collect();
    Err(ConfigError::UnknownHostId {
        origin,
        id,
        known: known.join(", "),
    })
}

/// Loads the configuration named by [`CONFIG_ENV`], read through `lookup`; `Ok(None)` when the
/// variable is not set (the embedded one-host default applies).
pub fn load_from_env_with(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    match lookup(CONFIG_ENV) {
        Some(path) => ClusterConfig::load(path).map(Some),
        None => Ok(None),
    }
}

/// Loads the configuration named by the [`CONFIG_ENV`] environment variable, if set.
pub fn load_from_env() -> Result<Option<ClusterConfig>, ConfigError> {
    load_from_env_with(|var| std::env::var(var).ok())
}
