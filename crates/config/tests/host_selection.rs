//! Which host a process is: command line, FRAGMENTA_HOST_ID, then launcher ranks.

use std::collections::HashMap;

use fragmenta_config::{
    load_from_env_with, resolve_host_id_with, ClusterConfig, ConfigError, HostIdOrigin, CONFIG_ENV,
    HOST_ID_ENV,
};
use fragmenta_job::HostId;

/// Hosts 10, 20, 30 in that file order.
fn config() -> ClusterConfig {
    let mut text = String::from("[cluster]\nname = \"t\"\nca_cert = \"ca.pem\"\n");
    for (i, id) in [10, 20, 30].iter().enumerate() {
        text.push_str(&format!(
            "[[host]]\nid = {id}\naddress = \"127.0.0.1:{}\"\ncert = \"c\"\nkey = \"k\"\n",
            47100 + i
        ));
    }
    ClusterConfig::from_toml_str(&text, "/").expect("valid")
}

fn resolve(cli: Option<u32>, env: &[(&str, &str)]) -> Result<HostId, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    resolve_host_id_with(&config(), cli, |var| env.get(var).cloned())
}

#[test]
fn command_line_wins_over_everything() {
    let env = [
        (HOST_ID_ENV, "20"),
        ("SLURM_PROCID", "2"),
        ("PMI_RANK", "0"),
    ];
    assert_eq!(resolve(Some(10), &env), Ok(HostId(10)));
}

#[test]
fn unknown_command_line_id() {
    assert_eq!(
        resolve(Some(11), &[(HOST_ID_ENV, "20")]),
        Err(ConfigError::UnknownHostId {
            origin: HostIdOrigin::CommandLine,
            id: 11,
            known: "10, 20, 30".into()
        })
    );
}

#[test]
fn host_id_env_wins_over_ranks() {
    assert_eq!(
        resolve(None, &[(HOST_ID_ENV, " 30 "), ("SLURM_PROCID", "0")]),
        Ok(HostId(30))
    );
}

#[test]
fn host_id_env_errors_name_variable_and_value() {
    assert_eq!(
        resolve(None, &[(HOST_ID_ENV, "abc"), ("SLURM_PROCID", "0")]),
        Err(ConfigError::NotANumber {
            origin: HostIdOrigin::Env(HOST_ID_ENV),
            value: "abc".into(),
            what: "host id"
        })
    );
    let err = resolve(None, &[(HOST_ID_ENV, "2")]).expect_err("unknown id");
    assert_eq!(
        err,
        ConfigError::UnknownHostId {
            origin: HostIdOrigin::Env(HOST_ID_ENV),
            id: 2,
            known: "10, 20, 30".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "environment variable FRAGMENTA_HOST_ID = 2: no host with id 2 in cluster config (ids: 10, 20, 30)"
    );
}

#[test]
fn launcher_ranks_pick_hosts_in_config_order_open_mpi_first() {
    // mpirun inside an sbatch job: every rank inherits its daemons' step, SLURM_PROCID=0.
    let step = [
        ("SLURM_JOB_ID", "5"),
        ("SLURM_STEP_ID", "0"),
        ("SLURM_PROCID", "0"),
        ("SLURM_STEP_NUM_TASKS", "1"),
        ("SLURM_STEP_NODELIST", "n1"),
    ];
    let mut env = step.to_vec();
    env.extend([("OMPI_COMM_WORLD_RANK", "2"), ("OMPI_COMM_WORLD_SIZE", "3")]);
    assert_eq!(resolve(None, &env), Ok(HostId(30)));
    assert_eq!(
        resolve(None, &[("PMI_RANK", "1"), ("PMI_SIZE", "3")]),
        Ok(HostId(20))
    );
    let mut env = step.to_vec();
    env[2] = ("SLURM_PROCID", "1");
    env[3] = ("SLURM_STEP_NUM_TASKS", "3");
    assert_eq!(resolve(None, &env), Ok(HostId(20)));
}

#[test]
fn a_batch_shell_is_no_rank() {
    // SLURM_PROCID of a batch script describes the allocation, not this process.
    assert_eq!(
        resolve(
            None,
            &[
                ("SLURM_JOB_ID", "5"),
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "4")
            ]
        ),
        Err(ConfigError::NoHostId)
    );
}

#[test]
fn rank_errors_name_variable_and_value() {
    assert_eq!(
        resolve(
            None,
            &[("OMPI_COMM_WORLD_RANK", "3"), ("OMPI_COMM_WORLD_SIZE", "4")]
        ),
        Err(ConfigError::RankOutOfRange {
            var: "OMPI_COMM_WORLD_RANK",
            rank: 3,
            hosts: 3
        })
    );
    assert_eq!(
        resolve(None, &[("PMI_RANK", "-1"), ("PMI_SIZE", "4")]),
        Err(ConfigError::Launcher(
            fragmenta_config::launcher::LauncherError::NotANumber {
                var: "PMI_RANK",
                value: "-1".into(),
                what: "rank"
            }
        ))
    );
}

#[test]
fn nothing_set_is_an_error() {
    assert_eq!(resolve(None, &[]), Err(ConfigError::NoHostId));
}

#[test]
fn config_env_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config().to_toml_string()).expect("write");
    let loaded = load_from_env_with(|var| (var == CONFIG_ENV).then(|| path.display().to_string()))
        .expect("loads")
        .expect("set");
    assert_eq!(
        loaded.host_ids().collect::<Vec<_>>(),
        [HostId(10), HostId(20), HostId(30)]
    );
    assert_eq!(load_from_env_with(|_| None), Ok(None));
}
