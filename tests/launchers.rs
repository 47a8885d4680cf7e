//! Clusters formed by the real launchers with no config file: `srun` (one node and two emulated
//! nodes), `sbatch`, and Open MPI's `mpirun` inside and outside a Slurm job; refused ranks (a
//! wrong secret, another job, a world-readable secret file, no secret at all); a rank SIGKILLed
//! mid-job; and the sort-last example under `srun` against `fragmenta launch`.
//!
//! Needs a running Slurm (`.ci/slurm/start.sh`, as CI does) and `mpirun`; each scenario is
//! skipped with the reason where they are missing. A custom harness (no libtest): `main` is the
//! scenario runner or, with `FRAGMENTA_TEST_SCENARIO` set, a host program started by the
//! launcher.

mod common;

use common::harness::{self, Outcome};
use fragmenta::*;
use fragmenta_net::secret::ClusterSecret;
use serde::{Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SCENARIO: &str = "FRAGMENTA_TEST_SCENARIO";
/// Wall-clock guard of one launcher command (a hang is a failure, not a performance check).
const LIMIT_S: &str = "120";

static REPLICAS: AtomicUsize = AtomicUsize::new(0);

fn count_replica<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    REPLICAS.fetch_add(1, Ordering::SeqCst);
    u8::deserialize(d)
}

/// A CLUSTER job that records where each fragment ran; the host named `kill_host` SIGKILLs
/// itself after running `kill_after` fragments.
#[derive(Serialize, Deserialize, Default)]
struct Probe {
    sleep_ms: u64,
    kill_host: Option<u32>,
    kill_after: usize,
    #[serde(deserialize_with = "count_replica")]
    marker: u8,
    #[serde(skip)]
    ran: Mutex<Vec<(usize, u32, u32)>>,
    #[serde(skip)]
    remote_runs: AtomicUsize,
}

impl FragmentedJob for Probe {
    const CLASS_ID: ClassId = ClassId::from_name("test.launchers.probe");
    fn execute_fragment(&self, _: &Transaction, index: usize, _: usize, ctx: &ExecutionContext) {
        std::thread::sleep(Duration::from_millis(self.sleep_ms));
        self.ran.lock().unwrap().push((index, ctx.host().0, 1));
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        _: usize,
        _: usize,
        ctx: &ExecutionContext,
    ) -> std::io::Result<()> {
        let n = self.remote_runs.fetch_add(1, Ordering::SeqCst) + 1;
        if self.kill_host == Some(ctx.host().0) && n == self.kill_after {
            let _ = Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
        }
        std::thread::sleep(Duration::from_millis(self.sleep_ms));
        out.write_all(&ctx.host().0.to_le_bytes())?;
        out.write_all(&(REPLICAS.load(Ordering::SeqCst) as u32).to_le_bytes())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, index: usize, _: usize) {
        let b = r.bytes();
        let word = |i: usize| {
            b.get(i..i + 4)
                .and_then(|w| w.try_into().ok())
                .map_or(u32::MAX, u32::from_le_bytes)
        };
        self.ran.lock().unwrap().push((index, word(0), word(4)));
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
}

fn check(ok: bool, what: impl Into<String>) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what.into())
    }
}

/// The program every launched process runs.
fn host_main(scenario: &str) -> Result<(), String> {
    let cluster = Cluster::builder()
        .register::<Probe>()
        .join()
        .map_err(|e| format!("join: {e}"))?;
    let size: usize = std::env::var("FRAGMENTA_TEST_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    if !cluster.is_primary() {
        println!(
            "host {} serving on node {}",
            cluster.host_id().0,
            std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| "-".into())
        );
        return cluster.serve().map_err(|e| e.to_string());
    }
    match scenario {
        "cluster" => {
            let hosts = cluster.hosts();
            check(
                hosts == (0..size as u32).map(HostId).collect::<Vec<_>>(),
                format!("hosts {hosts:?}, expected {size}"),
            )?;
            let n = 400;
            let job = Arc::new(Probe {
                sleep_ms: 1,
                ..Probe::default()
            });
            let report = cluster.execute(&job, n).map_err(|e| e.to_string())?;
            check(report.is_complete(), format!("incomplete: {report:?}"))?;
            let ran = job.ran.lock().unwrap().clone();
            let mut seen = vec![0u32; n];
            let mut used = std::collections::BTreeSet::new();
            for (index, host, replicas) in &ran {
                seen[*index] += 1;
                used.insert(*host);
                check(
                    *replicas == 1,
                    format!("host {host} made {replicas} replicas"),
                )?;
            }
            check(
                seen.iter().all(|&c| c == 1),
                "a fragment ran more or less than once",
            )?;
            check(
                used.len() == size,
                format!("fragments ran on hosts {used:?}"),
            )?;
            println!("cluster ok: {size} hosts, per host {:?}", report.per_host);
        }
        "kill" => {
            let events = cluster.host_events();
            let job = Arc::new(Probe {
                sleep_ms: 10,
                kill_host: Some(3),
                kill_after: 10,
                ..Probe::default()
            });
            let report = cluster.execute(&job, 600).map_err(|e| e.to_string())?;
            check(report.is_complete(), format!("incomplete: {report:?}"))?;
            let down = std::iter::from_fn(|| events.try_recv())
                .any(|e| e.host == HostId(3) && matches!(e.kind, HostEventKind::Down { .. }));
            check(down, "host 3 was never declared down")?;
            check(!cluster.hosts().contains(&HostId(3)), "host 3 still listed")?;
            println!(
                "kill ok: complete after host 3 died, per host {:?}",
                report.per_host
            );
        }
        "batch_shell" => {
            check(
                cluster.hosts() == [HostId(0)],
                format!("hosts {:?}", cluster.hosts()),
            )?;
            println!("batch shell ok: one embedded host");
        }
        other => return Err(format!("unknown scenario {other}")),
    }
    Ok(())
}

/// Where the launchers are, or why a scenario cannot run.
struct Env {
    slurm: Result<(), String>,
    mpirun: Result<(), String>,
    dir: tempfile::TempDir,
    secret: PathBuf,
}

fn probe(program: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(program).args(args).output() {
        Err(e) => Err(format!("{program} is not available: {e}")),
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

fn env() -> Result<Env, String> {
    let slurm = probe("sinfo", &["-h", "-t", "idle,mix,alloc", "-o", "%D"]).and_then(|nodes| {
        let up: u32 = nodes
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .sum();
        if up >= 2 {
            Ok(())
        } else {
            Err(format!("Slurm has {up} nodes up, 2 needed"))
        }
    });
    let slurm = slurm.map_err(|e| format!("{e} (CI starts Slurm with .ci/slurm/start.sh)"));
    let mpirun = probe("mpirun", &["--version"]).map(|_| ());
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let secret = dir.path().join("secret");
    ClusterSecret::generate()
        .and_then(|s| s.write_file(&secret))
        .map_err(|e| e.to_string())?;
    Ok(Env {
        slurm,
        mpirun,
        dir,
        secret,
    })
}

fn self_exe() -> PathBuf {
    std::env::current_exe().expect("test binary path")
}

/// Runs `cmd` under a wall-clock guard with this scenario's environment; returns the status
/// and stdout + stderr.
fn run(env: &Env, scenario: &str, program: &str, args: &[&str]) -> (i32, String) {
    run_with(env, scenario, program, args, &[])
}

fn run_with(
    env: &Env,
    scenario: &str,
    program: &str,
    args: &[&str],
    vars: &[(&str, &str)],
) -> (i32, String) {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", LIMIT_S, program])
        .args(args)
        .current_dir(env.dir.path())
        .env(SCENARIO, scenario)
        .env("FRAGMENTA_SECRET_FILE", &env.secret)
        .env("FRAGMENTA_JOIN_TIMEOUT_MS", "20000")
        .env_remove("FRAGMENTA_CONFIG")
        .env_remove("FRAGMENTA_HOST_ID")
        // Open MPI refuses root unless told; CI runs as root.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    for (k, v) in vars {
        // An empty value removes the variable.
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    match cmd.output() {
        Ok(out) => (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (-1, format!("cannot run {program}: {e}")),
    }
}

fn ok_if(
    (status, out): (i32, String),
    want_status: bool,
    check: impl FnOnce(&str) -> Result<(), String>,
) -> Result<Outcome, String> {
    let result = if want_status && status != 0 {
        Err(format!("exit status {status}"))
    } else {
        check(&out)
    };
    result
        .map(|()| Outcome::Passed)
        .map_err(|e| format!("{e}\n--- output ---\n{out}\n---"))
}

/// Exactly one success line: one cluster, not one per process.
fn one_cluster(out: &str) -> Result<(), String> {
    let n = out
        .lines()
        .filter(|l| l.contains("cluster ok: 4 hosts"))
        .count();
    check(n == 1, format!("{n} success lines, expected 1"))
}

const MPI: &[&str] = &["--oversubscribe", "--mca", "oob_tcp_if_include", "lo"];

fn sbatch(env: &Env, scenario: &str, script: &str, tasks: &str) -> (i32, String) {
    let path = env.dir.path().join(format!("{scenario}.sbatch"));
    let log = env.dir.path().join(format!("{scenario}.out"));
    if let Err(e) = std::fs::write(&path, script) {
        return (-1, e.to_string());
    }
    let log_arg = format!("--output={}", log.display());
    let (status, out) = run(
        env,
        scenario,
        "sbatch",
        &["--wait", "-n", tasks, &log_arg, &path.display().to_string()],
    );
    let job_out = std::fs::read_to_string(&log).unwrap_or_default();
    (status, format!("{out}{job_out}"))
}

fn scenario(env: &Env, name: &str) -> Result<Outcome, String> {
    let exe = self_exe();
    let exe = exe.to_str().ok_or("non-UTF-8 test binary path")?;
    let needs_mpi = name.contains("mpirun");
    if let Err(why) = &env.slurm {
        if !(name == "mpirun_np4" && env.mpirun.is_ok()) {
            return Ok(Outcome::Skipped(why.clone()));
        }
    }
    if needs_mpi {
        if let Err(why) = &env.mpirun {
            return Ok(Outcome::Skipped(why.clone()));
        }
    }
    match name {
        "srun_n4" => ok_if(
            run(env, "cluster", "srun", &["-n", "4", exe]),
            true,
            one_cluster,
        ),
        "srun_pmi2" => ok_if(
            run(env, "cluster", "srun", &["--mpi=pmi2", "-n", "4", exe]),
            true,
            one_cluster,
        ),
        "srun_two_nodes" => ok_if(
            run(env, "cluster", "srun", &["-N", "2", "-n", "4", exe]),
            true,
            |out| {
                one_cluster(out)?;
                check(
                    out.contains("on node fnode2") || out.contains("on node fnode1"),
                    "no host served on an emulated node",
                )?;
                let nodes: std::collections::BTreeSet<&str> = out
                    .lines()
                    .filter_map(|l| l.split("on node ").nth(1))
                    .collect();
                check(nodes.len() == 2, format!("hosts served on nodes {nodes:?}"))
            },
        ),
        "sbatch_srun_and_batch_shell" => {
            let script = format!(
                "#!/bin/sh\nset -e\nsrun {exe}\nFRAGMENTA_TEST_SCENARIO=batch_shell {exe}\n"
            );
            ok_if(sbatch(env, "cluster", &script, "4"), true, |out| {
                one_cluster(out)?;
                check(
                    out.contains("batch shell ok: one embedded host"),
                    "the batch shell's program did not run alone",
                )
            })
        }
        "mpirun_np4" => {
            let mut args = MPI.to_vec();
            args.extend(["-np", "4", exe]);
            ok_if(run(env, "cluster", "mpirun", &args), true, one_cluster)
        }
        "mpirun_in_sbatch" => {
            let script = format!("#!/bin/sh\nmpirun {} -np 4 {exe}\n", MPI.join(" "));
            ok_if(sbatch(env, "cluster", &script, "4"), true, one_cluster)
        }
        "wrong_secret_refused" => {
            let other = ClusterSecret::generate()
                .map_err(|e| e.to_string())?
                .to_hex();
            let wrapper = format!(
                "if [ \"$SLURM_PROCID\" = 2 ]; then unset FRAGMENTA_SECRET_FILE; export FRAGMENTA_SECRET={other}; fi; exec {exe}"
            );
            let r = run_with(
                env,
                "cluster",
                "srun",
                &["-l", "-n", "3", "sh", "-c", &wrapper],
                &[
                    ("FRAGMENTA_TEST_SIZE", "3"),
                    ("FRAGMENTA_JOIN_TIMEOUT_MS", "5000"),
                ],
            );
            ok_if(r, false, |out| {
                check(
                    !out.contains("cluster ok"),
                    "a cluster formed with a wrong secret",
                )?;
                check(
                    out.lines()
                        .any(|l| l.starts_with("2:") && l.contains("TLS refused")),
                    "rank 2 was not refused by TLS",
                )?;
                check(
                    out.lines()
                        .any(|l| l.starts_with("0:") && l.contains("ranks 2 of 3 never joined")),
                    "rank 0 did not name the missing rank",
                )
            })
        }
        "other_job_refused" => {
            // Job A's rank 1 never starts: its rank 0 waits at port P. Job B's rank 1 (B's rank
            // 0 does not start) finds A's rank 0 there: same secret, other job.
            let port = common::free_ports(1)[0].to_string();
            let skip1 = format!("[ \"$SLURM_PROCID\" = 1 ] && exit 0; exec {exe}");
            let skip0 = format!("[ \"$SLURM_PROCID\" = 0 ] && exit 0; exec {exe}");
            let vars = [
                ("FRAGMENTA_PORT", port.as_str()),
                ("FRAGMENTA_TEST_SIZE", "2"),
                ("FRAGMENTA_JOIN_TIMEOUT_MS", "6000"),
            ];
            let a = std::thread::scope(|s| {
                let a = s.spawn(|| {
                    run_with(
                        env,
                        "cluster",
                        "srun",
                        &["-l", "-n", "2", "sh", "-c", &skip1],
                        &vars,
                    )
                });
                std::thread::sleep(Duration::from_millis(1500));
                let b = run_with(
                    env,
                    "cluster",
                    "srun",
                    &["-l", "-n", "2", "sh", "-c", &skip0],
                    &[vars[0], vars[1], ("FRAGMENTA_JOIN_TIMEOUT_MS", "3000")],
                );
                let a = a.join().unwrap_or((-1, "job A panicked".into()));
                (a.0, format!("--- job A ---\n{}--- job B ---\n{}", a.1, b.1))
            });
            ok_if(a, false, |out| {
                let (a, b) = out.split_once("--- job B ---").unwrap_or((out, ""));
                check(
                    b.lines()
                        .any(|l| l.starts_with("1:") && l.contains("TLS refused")),
                    "job B's rank was not refused",
                )?;
                check(
                    a.lines()
                        .any(|l| l.starts_with("0:") && l.contains("ranks 1 of 2 never joined")),
                    "job A's rank 0 did not report its missing rank",
                )
            })
        }
        "world_readable_secret_refused" => {
            let loose = env.dir.path().join("loose-secret");
            let text = std::fs::read_to_string(&env.secret).map_err(|e| e.to_string())?;
            std::fs::write(&loose, text).map_err(|e| e.to_string())?;
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644))
                    .map_err(|e| e.to_string())?;
            }
            let loose = loose.display().to_string();
            let r = run_with(
                env,
                "cluster",
                "srun",
                &["-l", "-n", "2", exe],
                &[("FRAGMENTA_SECRET_FILE", &loose)],
            );
            ok_if(r, false, |out| {
                check(!out.contains("cluster ok"), "a cluster formed")?;
                for rank in ["0:", "1:"] {
                    check(
                        out.lines().any(|l| {
                            l.starts_with(rank)
                                && l.contains("has mode 0644")
                                && l.contains("chmod 600")
                        }),
                        format!("rank {rank} did not refuse the file with the reason"),
                    )?;
                }
                Ok(())
            })
        }
        "no_secret_refused" => {
            let r = run_with(
                env,
                "cluster",
                "srun",
                &["-l", "-n", "2", exe],
                &[("FRAGMENTA_SECRET_FILE", ""), ("FRAGMENTA_SECRET", "")],
            );
            ok_if(r, false, |out| {
                check(
                    !out.contains("cluster ok"),
                    "a cluster formed without a secret",
                )?;
                for rank in ["0:", "1:"] {
                    check(
                        out.lines().any(|l| {
                            l.starts_with(rank)
                                && l.contains("no cluster secret is set")
                                && l.contains("fragmenta secret")
                        }),
                        format!("rank {rank} did not say how to provide a secret"),
                    )?;
                }
                Ok(())
            })
        }
        "srun_sigkill_rank" => ok_if(
            run(env, "kill", "srun", &["-l", "-n", "4", exe]),
            false,
            |out| {
                check(
                    out.lines()
                        .any(|l| l.starts_with("0:") && l.contains("kill ok")),
                    "the job did not complete after the kill",
                )
            },
        ),
        "sort_last_same_picture" => sort_last(env),
        other => Err(format!("no scenario {other}")),
    }
}

fn sort_last(env: &Env) -> Result<Outcome, String> {
    // `cargo test` builds the examples next to the test binaries' folder.
    let exe = self_exe();
    let example = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("examples").join("sort_last"))
        .ok_or("no target folder")?;
    if !example.is_file() {
        return Err(format!("{} is not built", example.display()));
    }
    let example = example.display().to_string();
    let args = ["--size", "48", "--image", "96x96"];
    let srun_png = env.dir.path().join("srun.png").display().to_string();
    let launch_png = env.dir.path().join("launch.png").display().to_string();
    let mut a = vec!["-n", "4", example.as_str()];
    a.extend(args);
    a.extend(["--out", &srun_png]);
    let r = run(env, "-", "srun", &a);
    if r.0 != 0 {
        return Err(format!("srun: exit status {}\n{}", r.0, r.1));
    }
    check(
        r.1.contains("on 4 host(s)"),
        format!("srun did not render on 4 hosts:\n{}", r.1),
    )?;
    let mut b = vec!["launch", "-n", "4", "--", example.as_str()];
    b.extend(args);
    b.extend(["--out", &launch_png]);
    let l = run(env, "-", env!("CARGO_BIN_EXE_fragmenta"), &b);
    if l.0 != 0 {
        return Err(format!("fragmenta launch: exit status {}\n{}", l.0, l.1));
    }
    let (x, y) = (
        std::fs::read(&srun_png).map_err(|e| format!("{srun_png}: {e}"))?,
        std::fs::read(&launch_png).map_err(|e| format!("{launch_png}: {e}"))?,
    );
    check(x == y, "the pictures differ")?;
    Ok(Outcome::Passed)
}

const NAMES: &[&str] = &[
    "srun_n4",
    "srun_two_nodes",
    "srun_pmi2",
    "sbatch_srun_and_batch_shell",
    "mpirun_np4",
    "mpirun_in_sbatch",
    "wrong_secret_refused",
    "other_job_refused",
    "world_readable_secret_refused",
    "no_secret_refused",
    "srun_sigkill_rank",
    "sort_last_same_picture",
];

fn main() {
    // Under a launcher the scenario variable selects the host program; "-" marks a launch of
    // another program (the example), never this one.
    harness::run_host_if_child(SCENARIO, host_main);
    let env = match env() {
        Ok(env) => env,
        Err(e) => {
            println!("launchers: cannot prepare: {e}");
            std::process::exit(1);
        }
    };
    harness::run_named("launchers", NAMES, |name| scenario(&env, name))
}
