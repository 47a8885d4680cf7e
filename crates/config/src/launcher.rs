//! Which launcher started this process, and what it says about the job: rank, size, local
//! rank, the step's hosts.
//!
//! First match wins:
//!
//! | launcher | when | rank | size | local rank | hosts |
//! | --- | --- | --- | --- | --- | --- |
//! | Open MPI | `OMPI_COMM_WORLD_SIZE` set | `OMPI_COMM_WORLD_RANK` | `OMPI_COMM_WORLD_SIZE` | `OMPI_COMM_WORLD_LOCAL_RANK` | – |
//! | PMI (MPICH/Hydra, `srun --mpi=pmi2`) | `PMI_RANK` and `PMI_SIZE` set | `PMI_RANK` | `PMI_SIZE` | – | `SLURM_STEP_NODELIST` if set |
//! | Slurm step | `SLURM_STEP_ID` set (inside `srun`) | `SLURM_PROCID` | `SLURM_STEP_NUM_TASKS` | `SLURM_LOCALID` | `SLURM_STEP_NODELIST` |
//!
//! Open MPI comes first because `mpirun` inside a Slurm allocation starts its daemons with
//! `srun`: every rank then inherits that step's `SLURM_PROCID=0`. A batch or `salloc` shell
//! (`SLURM_JOB_ID` without `SLURM_STEP_ID`) is not a step: its `SLURM_PROCID`/`SLURM_NTASKS`
//! describe the allocation, not this process, so no launcher is detected there.

use crate::hostlist::{self, HostlistError};

/// Most ranks one launch may announce: a size beyond it is refused where it is read.
pub const MAX_RANKS: u32 = 65_536;

/// The launcher kinds [`detect_with`] recognizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LauncherKind {
    /// Open MPI's `mpirun`/`mpiexec` (`OMPI_COMM_WORLD_*`).
    OpenMpi,
    /// A PMI launcher: MPICH's Hydra, or `srun --mpi=pmi2` (`PMI_RANK`, `PMI_SIZE`).
    Pmi,
    /// A Slurm job step: a task started by `srun` (`SLURM_STEP_ID`).
    SlurmStep,
}

impl std::fmt::Display for LauncherKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LauncherKind::OpenMpi => "Open MPI",
            LauncherKind::Pmi => "PMI",
            LauncherKind::SlurmStep => "Slurm step",
        })
    }
}

/// What a launcher says about this process and its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The launcher.
    pub kind: LauncherKind,
    /// This process's rank, `0..size`.
    pub rank: u32,
    /// The variable the rank was read from.
    pub rank_var: &'static str,
    /// The number of processes launched together (`1..=MAX_RANKS`).
    pub size: u32,
    /// The rank among the processes of this machine, when the launcher says.
    pub local_rank: Option<u32>,
    /// The step's hosts in rank-placement order (Slurm), expanded; empty when the launcher
    /// gives none (Open MPI).
    pub hosts: Vec<String>,
    /// The job: `slurm-<job>.<step>`, `ompi-<jobid>` or `pmi-<jobid>`; processes of other jobs
    /// have other names. `None` when the launcher gives no job id.
    pub job_name: Option<String>,
    /// A number identifying the job and step, from which a default port is derived.
    pub job_number: Option<u64>,
    /// CPU cores given to each task (`SLURM_CPUS_PER_TASK`), when the launcher says.
    pub cpus_per_task: Option<u32>,
    /// The first port Slurm reserved for the step (`SLURM_STEP_RESV_PORTS`, `srun --resv-ports`).
    pub reserved_port: Option<u16>,
    /// The addresses of `mpirun`'s own URI (`OMPI_MCA_orte_hnp_uri`), in its order: the
    /// machine `mpirun` runs on.
    pub mpirun_hosts: Vec<String>,
}

/// Why the launcher's variables cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LauncherError {
    /// A variable is set but is not the number it must be.
    #[error("environment variable {var} = {value:?} is not a valid {what}")]
    NotANumber {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should hold.
        what: &'static str,
    },
    /// A variable the launcher always sets is missing.
    #[error("{launcher} detected but {var} is not set")]
    Missing {
        /// The launcher.
        launcher: LauncherKind,
        /// The missing variable.
        var: &'static str,
    },
    /// The size is 0 or above [`MAX_RANKS`].
    #[error("{var} = {size}: a launch must have between 1 and {max} processes")]
    BadSize {
        /// The size variable.
        var: &'static str,
        /// Its value.
        size: u64,
        /// [`MAX_RANKS`].
        max: u32,
    },
    /// The rank is not below the size.
    #[error("{rank_var} = {rank} is not below {size_var} = {size}")]
    RankOutOfRange {
        /// The rank variable.
        rank_var: &'static str,
        /// The rank.
        rank: u64,
        /// The size variable.
        size_var: &'static str,
        /// The size.
        size: u32,
    },
    /// The step's node list is malformed.
    #[error("environment variable {var}: {source}")]
    Hostlist {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        #[source]
        source: HostlistError,
    },
}

fn number<T: std::str::FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    what: &'static str,
) -> Result<Option<T>, LauncherError> {
    match lookup(var) {
        None => Ok(None),
        Some(value) => value
            .trim()
            .parse::<T>()
            .map(Some)
            .map_err(|_| LauncherError::NotANumber { var, value, what }),
    }
}

fn required(
    lookup: &impl Fn(&str) -> Option<String>,
    launcher: LauncherKind,
    var: &'static str,
    what: &'static str,
) -> Result<u64, LauncherError> {
    number::<u64>(lookup, var, what)?.ok_or(LauncherError::Missing { launcher, var })
}

/// Reads the launcher's variables from the process environment; see [`detect_with`].
pub fn detect() -> Result<Option<Launch>, LauncherError> {
    detect_with(|var| std::env::var(var).ok())
}

/// The launcher that started this process, reading variables through `lookup` (`None` = not
/// set), or `None` when no launcher (or only a batch shell) is detected. See the
/// [module](self) docs for the order.
pub fn detect_with(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<Launch>, LauncherError> {
    let (kind, rank_var, size_var) = if lookup("OMPI_COMM_WORLD_SIZE").is_some() {
        (
            LauncherKind::OpenMpi,
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
        )
    } else if lookup("PMI_RANK").is_some() && lookup("PMI_SIZE").is_some() {
        (LauncherKind::Pmi, "PMI_RANK", "PMI_SIZE")
    } else if lookup("SLURM_STEP_ID").is_some() {
        (
            LauncherKind::SlurmStep,
            "SLURM_PROCID",
            "SLURM_STEP_NUM_TASKS",
        )
    } else {
        return Ok(None);
    };
    let size = required(&lookup, kind, size_var, "process count")?;
    if size == 0 || size > u64::from(MAX_RANKS) {
        return Err(LauncherError::BadSize {
            var: size_var,
            size,
            max: MAX_RANKS,
        });
    }
    let size = size as u32;
    let rank = required(&lookup, kind, rank_var, "rank")?;
    if rank >= u64::from(size) {
        return Err(LauncherError::RankOutOfRange {
            rank_var,
            rank,
            size_var,
            size,
        });
    }
    let local_rank = match kind {
        LauncherKind::OpenMpi => number(&lookup, "OMPI_COMM_WORLD_LOCAL_RANK", "local rank")?,
        LauncherKind::SlurmStep => number(&lookup, "SLURM_LOCALID", "local rank")?,
        LauncherKind::Pmi => None,
    };

    // Slurm's view, also for PMI under srun. Open MPI started by mpirun inside an allocation
    // inherits the variables of its daemons' step, which say nothing about its ranks.
    let in_step = kind != LauncherKind::OpenMpi && lookup("SLURM_STEP_ID").is_some();
    let hosts = if in_step {
        let var = "SLURM_STEP_NODELIST";
        let list = lookup(var).ok_or(LauncherError::Missing {
            launcher: kind,
            var,
        })?;
        hostlist::expand(&list).map_err(|source| LauncherError::Hostlist { var, source })?
    } else {
        Vec::new()
    };
    let slurm_ids = if in_step {
        let job = number::<u64>(&lookup, "SLURM_JOB_ID", "job id")?;
        let step = number::<u64>(&lookup, "SLURM_STEP_ID", "step id")?;
        job.zip(step)
    } else {
        None
    };
    let (job_name, job_number) = match (kind, slurm_ids) {
        (LauncherKind::OpenMpi, _) => {
            match number::<u64>(&lookup, "OMPI_MCA_ess_base_jobid", "job id")? {
                Some(id) => (Some(format!("ompi-{id}")), Some(id)),
                None => (None, None),
            }
        }
        (_, Some((job, step))) => (
            Some(format!("slurm-{job}.{step}")),
            Some(job.wrapping_mul(64).wrapping_add(step)),
        ),
        (LauncherKind::Pmi, None) => match lookup("PMI_JOBID") {
            Some(id) if !id.trim().is_empty() && !id.chars().any(char::is_control) => {
                let id = id.trim().to_owned();
                let number = id
                    .bytes()
                    .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
                (Some(format!("pmi-{id}")), Some(number))
            }
            _ => (None, None),
        },
        (LauncherKind::SlurmStep, None) => {
            return Err(LauncherError::Missing {
                launcher: kind,
                var: "SLURM_JOB_ID",
            })
        }
    };
    let cpus_per_task = if in_step {
        number::<u32>(&lookup, "SLURM_CPUS_PER_TASK", "CPU count")?.filter(|&c| c > 0)
    } else {
        None
    };
    let reserved_port = match lookup("SLURM_STEP_RESV_PORTS") {
        Some(ports) if in_step => {
            let first = ports
                .split([',', '-'])
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            match first.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    return Err(LauncherError::NotANumber {
                        var: "SLURM_STEP_RESV_PORTS",
                        value: ports,
                        what: "port range",
                    })
                }
            }
        }
        _ => None,
    };
    let mpirun_hosts = match kind {
        LauncherKind::OpenMpi => lookup("OMPI_MCA_orte_hnp_uri")
            .map(|u| hnp_hosts(&u))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Ok(Some(Launch {
        kind,
        rank: rank as u32,
        rank_var,
        size,
        local_rank,
        hosts,
        job_name,
        job_number,
        cpus_per_task,
        reserved_port,
        mpirun_hosts,
    }))
}

/// The addresses of an Open MPI URI such as
/// `214302720.0;tcp://10.0.0.1,127.0.0.1:58879;tcp6://[::1]:58880`, in order (at most 64).
fn hnp_hosts(uri: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in uri.split(';') {
        let Some((_, rest)) = part.split_once("://") else {
            continue;
        };
        // `a,b:port` or `[a],[b]:port`.
        let hosts = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
        for h in hosts.split(',') {
            let h = h.trim().trim_matches(|c| c == '[' || c == ']');
            if !h.is_empty() && out.len() < 64 && !out.iter().any(|o| o == h) {
                out.push(h.to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn detect(env: &[(&str, &str)]) -> Result<Option<Launch>, LauncherError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        detect_with(|v| env.get(v).cloned())
    }

    const STEP: [(&str, &str); 8] = [
        ("SLURM_JOB_ID", "41"),
        ("SLURM_STEP_ID", "3"),
        ("SLURM_PROCID", "2"),
        ("SLURM_STEP_NUM_TASKS", "4"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_STEP_NODELIST", "n[1-2]"),
        ("SLURM_NTASKS", "4"),
        ("SLURM_STEP_RESV_PORTS", "21001-21003"),
    ];

    #[test]
    fn slurm_step() {
        let l = detect(&STEP).unwrap().unwrap();
        assert_eq!(l.kind, LauncherKind::SlurmStep);
        assert_eq!((l.rank, l.size, l.local_rank), (2, 4, Some(0)));
        assert_eq!(l.hosts, ["n1", "n2"]);
        assert_eq!(l.job_name.as_deref(), Some("slurm-41.3"));
        assert_eq!(l.reserved_port, Some(21001));
        assert_eq!(l.cpus_per_task, None);
        let mut env = STEP.to_vec();
        env.push(("SLURM_CPUS_PER_TASK", "2"));
        assert_eq!(detect(&env).unwrap().unwrap().cpus_per_task, Some(2));
    }

    #[test]
    fn a_batch_shell_is_not_a_step() {
        let env = [
            ("SLURM_JOB_ID", "41"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
        ];
        assert_eq!(detect(&env), Ok(None));
        assert_eq!(detect(&[]), Ok(None));
    }

    #[test]
    fn open_mpi_wins_over_the_inherited_slurm_step() {
        let mut env = STEP.to_vec();
        env.extend([
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "3"),
            ("OMPI_MCA_ess_base_jobid", "214302721"),
            (
                "OMPI_MCA_orte_hnp_uri",
                "214302720.0;tcp://10.1.2.3,127.0.0.1:58879",
            ),
        ]);
        let l = detect(&env).unwrap().unwrap();
        assert_eq!(l.kind, LauncherKind::OpenMpi);
        assert_eq!((l.rank, l.size, l.local_rank), (3, 4, Some(3)));
        assert_eq!(l.job_name.as_deref(), Some("ompi-214302721"));
        assert_eq!(l.mpirun_hosts, ["10.1.2.3", "127.0.0.1"]);
        assert!(l.hosts.is_empty());
        assert_eq!(l.reserved_port, None);
    }

    #[test]
    fn pmi_under_srun_uses_the_step() {
        let mut env = STEP.to_vec();
        env.extend([("PMI_RANK", "1"), ("PMI_SIZE", "4")]);
        let l = detect(&env).unwrap().unwrap();
        assert_eq!((l.kind, l.rank), (LauncherKind::Pmi, 1));
        assert_eq!(l.job_name.as_deref(), Some("slurm-41.3"));
        assert_eq!(l.hosts, ["n1", "n2"]);
        let l = detect(&[("PMI_RANK", "0"), ("PMI_SIZE", "2"), ("PMI_JOBID", "kvs_7")])
            .unwrap()
            .unwrap();
        assert_eq!(l.job_name.as_deref(), Some("pmi-kvs_7"));
        // PMI_RANK alone is no launcher.
        assert_eq!(detect(&[("PMI_RANK", "0")]), Ok(None));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let mut env = STEP.to_vec();
        env[2] = ("SLURM_PROCID", "4");
        assert_eq!(
            detect(&env),
            Err(LauncherError::RankOutOfRange {
                rank_var: "SLURM_PROCID",
                rank: 4,
                size_var: "SLURM_STEP_NUM_TASKS",
                size: 4
            })
        );
        env[2] = ("SLURM_PROCID", "x");
        assert!(matches!(
            detect(&env),
            Err(LauncherError::NotANumber {
                var: "SLURM_PROCID",
                ..
            })
        ));
        env[2] = ("SLURM_PROCID", "0");
        env[5] = ("SLURM_STEP_NODELIST", "n[1-");
        assert!(matches!(
            detect(&env),
            Err(LauncherError::Hostlist {
                var: "SLURM_STEP_NODELIST",
                ..
            })
        ));
        assert_eq!(
            detect(&[("OMPI_COMM_WORLD_SIZE", "0"), ("OMPI_COMM_WORLD_RANK", "0")]),
            Err(LauncherError::BadSize {
                var: "OMPI_COMM_WORLD_SIZE",
                size: 0,
                max: MAX_RANKS
            })
        );
        assert_eq!(
            detect(&[("OMPI_COMM_WORLD_SIZE", "2")]),
            Err(LauncherError::Missing {
                launcher: LauncherKind::OpenMpi,
                var: "OMPI_COMM_WORLD_RANK"
            })
        );
    }

    #[test]
    fn mpirun_uri_forms() {
        assert_eq!(hnp_hosts("1.0;tcp://127.0.0.1:5"), ["127.0.0.1"]);
        assert_eq!(
            hnp_hosts("1.0;tcp://10.0.0.1,127.0.0.1:5;tcp6://[::1]:6"),
            ["10.0.0.1", "127.0.0.1", "::1"]
        );
        assert!(hnp_hosts("garbage").is_empty());
    }
}
