//! `fragmenta launch`: start N copies of a program as the hosts of a cluster on this machine,
//! like `mpirun -np N`.

use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::UdpSocket;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fragmenta_config::{
    ClusterConfig, ClusterSection, ConfigError, ConfigFile, HostSection, CONFIG_ENV, HOST_ID_ENV,
};
use fragmenta_job::HostId;
use fragmenta_net::certs::{self, CertError};

use crate::signals::{die_with_launcher, signal_group, StopSignals};

/// Default time children get to exit by themselves after the initiator finished, and to exit
/// after SIGTERM before SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);

/// How often the launcher looks at its children.
const POLL: Duration = Duration::from_millis(10);

/// A shared output stream; one whole line is written under the lock.
type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// What to launch, and where its output goes.
pub struct LaunchOptions {
    /// Number of hosts (copies of the program); at least 1.
    pub hosts: usize,
    /// Use the first `hosts` hosts of this configuration (its certificate files must exist)
    /// instead of generating a configuration and certificates in a temporary folder.
    pub config: Option<PathBuf>,
    /// `cores` of each host of a generated configuration (default: this machine's available
    /// parallelism); an error together with `config`.
    pub cores: Option<u32>,
    /// Time the other hosts get to exit by themselves once the initiator exited successfully,
    /// and between SIGTERM and SIGKILL when stopping them.
    pub grace: Duration,
    /// Keep the other hosts running when a host other than the initiator (host 0) exits
    /// abnormally, so the cluster's failure handling can be watched (its fragments move to the
    /// hosts left). The initiator's death still stops everyone.
    pub keep_going: bool,
    /// The program to run.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Where the children's standard output lines go, each prefixed with `[host-<id>] `.
    pub stdout: Box<dyn Write + Send>,
    /// Where the children's standard error lines go (and the launcher's own notes, prefixed
    /// with `[launch] `).
    pub stderr: Box<dyn Write + Send>,
}

impl LaunchOptions {
    /// `hosts` copies of `program args…` on a generated configuration, output to this
    /// process's stdout and stderr, grace period [`DEFAULT_GRACE`].
    pub fn new(
        hosts: usize,
        program: impl Into<OsString>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> LaunchOptions {
        LaunchOptions {
            hosts,
            config: None,
            cores: None,
            grace: DEFAULT_GRACE,
            keep_going: false,
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            stdout: Box::new(std::io::stdout()),
            stderr: Box::new(std::io::stderr()),
        }
    }
}

impl fmt::Debug for LaunchOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LaunchOptions")
            .field("hosts", &self.hosts)
            .field("config", &self.config)
            .field("cores", &self.cores)
            .field("grace", &self.grace)
            .field("keep_going", &self.keep_going)
            .field("program", &self.program)
            .field("args", &self.args)
            .finish_non_exhaustive()
    }
}

/// Why a launch could not start (once the children run, their exit status is the result).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// `-n 0`.
    #[error("the number of hosts (-n) must be at least 1")]
    NoHosts,
    /// More hosts requested than this machine can start.
    #[error("-n {requested}: this machine can start at most {limit} hosts ({reason})")]
    BeyondMachine {
        /// Hosts requested.
        requested: usize,
        /// The most this machine can start.
        limit: usize,
        /// Which of the machine's limits sets it.
        reason: String,
    },
    /// More hosts requested than the configuration lists.
    #[error("-n {requested}: the cluster config {} lists only {available} hosts", config.display())]
    TooManyHosts {
        /// Hosts requested.
        requested: usize,
        /// Hosts in the configuration.
        available: usize,
        /// The configuration file.
        config: PathBuf,
    },
    /// `--cores` given together with `--config` (the file sets each host's cores).
    #[error("--cores only applies to a generated config; with --config, set cores in the file")]
    CoresWithConfig,
    /// The configuration is invalid, or its certificate files are missing.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Generating certificates failed.
    #[error("cannot generate certificates: {0}")]
    Certs(#[from] CertError),
    /// An I/O operation of the launcher failed.
    #[error("cannot {action}: {source}")]
    Io {
        /// What the launcher was doing.
        action: String,
        /// The error.
        source: std::io::Error,
    },
    /// A child could not be started.
    #[error("cannot start {program:?} as {host}: {source}")]
    Spawn {
        /// The program.
        program: OsString,
        /// The host it was to be.
        host: HostId,
        /// The error.
        source: std::io::Error,
    },
}

fn io_error(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let action = action.into();
    move |source| LaunchError::Io { action, source }
}

/// The configuration the children use: a file, and the temporary folder holding it if the
/// launcher made it (removed when dropped).
struct Prepared {
    config_path: PathBuf,
    hosts: Vec<HostId>,
    _temp: Option<tempfile::TempDir>,
}

/// Starts `opts.hosts` copies of the program, one per host, and waits for them.
///
/// Each child gets `FRAGMENTA_CONFIG` (absolute path of the configuration) and
/// `FRAGMENTA_HOST_ID` (its host, in config order; the first is the initiator), stdin from
/// `/dev/null`, its own process group, and (on Linux) SIGKILL should the launcher die. Every line it writes to stdout/stderr is copied to
/// `opts.stdout`/`opts.stderr` prefixed with `[host-<id>] `, whole lines at a time.
///
/// Without `opts.config`, a temporary folder gets certificates for hosts `0..n`, a config
/// (cluster `launch-<pid>`, free UDP ports on 127.0.0.1) and is removed at the end.
///
/// Stopping: if a child exits abnormally (non-zero status or a signal), or the launcher gets
/// SIGINT, SIGTERM or SIGHUP, every remaining child's process group gets SIGTERM, then SIGKILL
/// after `opts.grace`. When the initiator exits successfully the others get `opts.grace` to exit
/// by themselves before being stopped the same way. With `opts.keep_going`, a host other than
/// the initiator that exits abnormally is only noted, and the others go on. When all children are gone, their process
/// groups get SIGKILL, so no descendant is left behind.
///
/// Returns the initiator's exit code, or 128 + signal number if a signal killed it.
pub fn launch(opts: LaunchOptions) -> Result<i32, LaunchError> {
    if opts.hosts == 0 {
        return Err(LaunchError::NoHosts);
    }
    let (limit, reason) = machine_host_limit(opts.config.is_none());
    if opts.hosts > limit {
        return Err(LaunchError::BeyondMachine {
            requested: opts.hosts,
            limit,
            reason,
        });
    }
    let prepared = match &opts.config {
        Some(path) => {
            if opts.cores.is_some() {
                return Err(LaunchError::CoresWithConfig);
            }
            use_config(path, opts.hosts)?
        }
        None => generate_config(opts.hosts, opts.cores)?,
    };
    let signals = StopSignals::install().map_err(io_error("install signal handlers"))?;
    let stdout: Sink = Arc::new(Mutex::new(opts.stdout));
    let stderr: Sink = Arc::new(Mutex::new(opts.stderr));
    let (readers_done_tx, readers_done) = mpsc::channel::<()>();

    let mut children: Vec<Running> = Vec::with_capacity(prepared.hosts.len());
    for &host in &prepared.hosts {
        let mut command = Command::new(&opts.program);
        command
            .args(&opts.args)
            .env(CONFIG_ENV, &prepared.config_path)
            .env(HOST_ID_ENV, host.0.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        die_with_launcher(&mut command);
        let spawned = command.spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(source) => {
                stop_all(&mut children, opts.grace);
                return Err(LaunchError::Spawn {
                    program: opts.program.clone(),
                    host,
                    source,
                });
            }
        };
        let prefix = format!("[{host}] ");
        if let Some(out) = child.stdout.take() {
            forward_lines(out, prefix.clone(), stdout.clone(), readers_done_tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward_lines(err, prefix, stderr.clone(), readers_done_tx.clone());
        }
        children.push(Running {
            host,
            pgid: child.id(),
            child,
            status: None,
        });
    }
    drop(readers_done_tx);

    supervise(
        &mut children,
        &signals,
        opts.grace,
        opts.keep_going,
        &stderr,
    );

    // Descendants that outlived their child must not keep running (nor keep the pipes open).
    for child in &children {
        signal_group(child.pgid, libc::SIGKILL);
    }
    // All writers are gone once the pipes close; don't wait forever on one that escaped its
    // process group.
    let deadline = Instant::now() + opts.grace.max(Duration::from_secs(1));
    while readers_done
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .is_ok()
    {}
    drop(signals);
    drop(prepared);

    Ok(children.first().and_then(|c| c.status).map_or(1, exit_code))
}

/// Descriptors the launcher holds per host (its two output pipes, and a UDP socket while it
/// picks ports), and those it needs besides.
const FDS_PER_HOST: u64 = 3;
const FDS_SPARE: u64 = 64;

/// The most hosts this machine lets the launcher start, and which limit sets it: the user's
/// process limit (`ulimit -u`), the launcher's open-file limit (`ulimit -n`), and for a
/// generated configuration the local port range (each host needs its own UDP port).
fn machine_host_limit(generated: bool) -> (usize, String) {
    let soft = |resource| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid, writable rlimit for getrlimit to fill.
        let ok = unsafe { libc::getrlimit(resource, &mut lim) } == 0;
        (ok && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
    };
    let mut limits: Vec<(u64, String)> = Vec::new();
    if let Some(n) = soft(libc::RLIMIT_NPROC) {
        limits.push((n, format!("the process limit, ulimit -u, is {n}")));
    }
    if let Some(n) = soft(libc::RLIMIT_NOFILE) {
        limits.push((
            n.saturating_sub(FDS_SPARE) / FDS_PER_HOST,
            format!("the open-file limit, ulimit -n, is {n}, and each host needs {FDS_PER_HOST}"),
        ));
    }
    if generated {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| {
                let mut it = text.split_whitespace().map(str::parse::<u64>);
                match (it.next(), it.next()) {
                    (Some(Ok(lo)), Some(Ok(hi))) if hi >= lo => Some((lo, hi)),
                    _ => None,
                }
            });
        let (lo, hi) = range.unwrap_or((1024, 65535));
        limits.push((
            hi - lo + 1,
            format!("each host needs a UDP port of the local port range {lo}-{hi}"),
        ));
    }
    // Host ids of a generated configuration are 0..n, below the reserved u32::MAX.
    limits.push((u64::from(u32::MAX), "host ids are 32-bit".to_owned()));
    let (n, reason) = limits
        .into_iter()
        .min_by_key(|(n, _)| *n)
        .unwrap_or((u64::from(u32::MAX), String::new()));
    (usize::try_from(n).unwrap_or(usize::MAX), reason)
}

/// A started child.
struct Running {
    host: HostId,
    pgid: u32,
    child: Child,
    status: Option<ExitStatus>,
}

/// The launcher's state while children run.
enum Phase {
    /// All is well.
    Running,
    /// The initiator succeeded; the others may exit by themselves until the deadline.
    Draining(Instant),
    /// SIGTERM sent; SIGKILL at the deadline.
    Terminating(Instant),
    /// SIGKILL sent.
    Killed,
}

/// Polls the children until all have exited, stopping them as [`launch`] describes.
fn supervise(
    children: &mut [Running],
    signals: &StopSignals,
    grace: Duration,
    keep_going: bool,
    notes: &Sink,
) {
    let mut phase = Phase::Running;
    let mut signal_noted = false;
    let initiator = children.first().map(|c| c.host);
    loop {
        let mut abnormal: Option<(HostId, ExitStatus)> = None;
        for running in children.iter_mut().filter(|c| c.status.is_none()) {
            match running.child.try_wait() {
                Ok(Some(status)) => {
                    running.status = Some(status);
                    if status.success() {
                        continue;
                    }
                    if keep_going && Some(running.host) != initiator {
                        note(
                            notes,
                            &format!(
                                "{} {}; --keep-going: the other hosts keep running",
                                running.host,
                                describe(status)
                            ),
                        );
                    } else if abnormal.is_none() {
                        abnormal = Some((running.host, status));
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    // Cannot wait on it: treat it as gone abnormally and stop its group.
                    signal_group(running.pgid, libc::SIGKILL);
                    running.status = Some(ExitStatus::from_raw(libc::SIGKILL));
                }
            }
        }
        if children.iter().all(|c| c.status.is_some()) {
            return;
        }
        let now = Instant::now();
        let stopping = matches!(phase, Phase::Terminating(_) | Phase::Killed);
        if !stopping {
            if let Some((host, status)) = abnormal {
                note(
                    notes,
                    &format!("{host} {}; stopping the other hosts", describe(status)),
                );
                phase = terminate(children, now + grace);
            } else if let Some(signal) = signals.received().filter(|_| !signal_noted) {
                signal_noted = true;
                note(
                    notes,
                    &format!("received signal {signal}; stopping all hosts"),
                );
                phase = terminate(children, now + grace);
            } else if matches!(phase, Phase::Running)
                && children[0].status.is_some_and(|s| s.success())
            {
                phase = Phase::Draining(now + grace);
            }
        }
        match phase {
            Phase::Draining(deadline) if now >= deadline => {
                note(
                    notes,
                    "initiator finished, stopping the hosts still running",
                );
                phase = terminate(children, now + grace);
            }
            Phase::Terminating(deadline) if now >= deadline => {
                for c in children.iter().filter(|c| c.status.is_none()) {
                    signal_group(c.pgid, libc::SIGKILL);
                }
                phase = Phase::Killed;
            }
            _ => {}
        }
        std::thread::sleep(POLL);
    }
}

/// Sends SIGTERM to every running child's group.
fn terminate(children: &[Running], kill_at: Instant) -> Phase {
    for c in children.iter().filter(|c| c.status.is_none()) {
        signal_group(c.pgid, libc::SIGTERM);
    }
    Phase::Terminating(kill_at)
}

/// Stops already started children (SIGTERM, SIGKILL after `grace`) and reaps them.
fn stop_all(children: &mut [Running], grace: Duration) {
    for c in children.iter() {
        signal_group(c.pgid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    for c in children.iter_mut() {
        while !matches!(c.child.try_wait(), Ok(Some(_)) | Err(_)) {
            if Instant::now() >= deadline {
                signal_group(c.pgid, libc::SIGKILL);
                let _ = c.child.wait();
                break;
            }
            std::thread::sleep(POLL);
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended ({status})"),
    }
}

/// The exit code of a status as a shell reports it: the code, or 128 + signal.
fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

fn note(sink: &Sink, text: &str) {
    let mut out = sink.lock().unwrap_or_else(|e| e.into_inner());
    let _ = writeln!(out, "[launch] {text}");
    let _ = out.flush();
}

/// Copies `from` to `to` line by line, prefixing each line; the thread ends at end of file and
/// then drops `done`.
fn forward_lines(
    from: impl Read + Send + 'static,
    prefix: String,
    to: Sink,
    done: mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let _done = done;
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line.last() != Some(&b'\n') {
                line.push(b'\n');
            }
            let mut whole = Vec::with_capacity(prefix.len() + line.len());
            whole.extend_from_slice(prefix.as_bytes());
            whole.extend_from_slice(&line);
            let mut out = to.lock().unwrap_or_else(|e| e.into_inner());
            // A closed output must not block the child: keep draining its pipe.
            let _ = out.write_all(&whole).and_then(|()| out.flush());
        }
    });
}

/// Uses the first `n` hosts of the configuration at `path`.
fn use_config(path: &Path, n: usize) -> Result<Prepared, LaunchError> {
    let config = ClusterConfig::load(path)?;
    if n > config.hosts().len() {
        return Err(LaunchError::TooManyHosts {
            requested: n,
            available: config.hosts().len(),
            config: path.to_owned(),
        });
    }
    config.check_files()?;
    let config_path = std::path::absolute(path).map_err(io_error("resolve the config path"))?;
    Ok(Prepared {
        config_path,
        hosts: config.host_ids().take(n).collect(),
        _temp: None,
    })
}

/// Writes certificates and a config for hosts `0..n` on free loopback ports into a temporary
/// folder.
fn generate_config(n: usize, cores: Option<u32>) -> Result<Prepared, LaunchError> {
    let temp = tempfile::Builder::new()
        .prefix("fragmenta-launch-")
        .tempdir()
        .map_err(io_error("create a temporary folder"))?;
    let dir = temp.path();
    let hosts: Vec<HostId> = (0..n)
        .map(|i| u32::try_from(i).map(HostId))
        .collect::<Result<_, _>>()
        .map_err(|_| LaunchError::NoHosts)?;
    let name = format!("launch-{}", std::process::id());
    let paths = certs::generate(&dir.join("certs"), &name, &hosts)?;
    let ports = free_udp_ports(n)?;
    let text = |p: &Path| p.to_string_lossy().into_owned();
    let file = ConfigFile {
        cluster: ClusterSection {
            name,
            ca_cert: text(&paths.ca),
            ..ClusterSection::default()
        },
        hosts: paths
            .hosts
            .iter()
            .zip(ports)
            .map(|((id, files), port)| HostSection {
                id: i64::from(id.0),
                address: format!("127.0.0.1:{port}"),
                cores: cores.map(i64::from),
                cert: text(&files.cert),
                key: text(&files.key),
                ..HostSection::default()
            })
            .collect(),
    };
    let config = ClusterConfig::from_config_file(file, dir)?;
    let config_path = dir.join("cluster.toml");
    std::fs::write(&config_path, config.to_toml_string())
        .map_err(io_error(format!("write {}", config_path.display())))?;
    Ok(Prepared {
        config_path,
        hosts,
        _temp: Some(temp),
    })
}

/// `n` distinct UDP ports free on 127.0.0.1 right now (all bound at once, then released).
fn free_udp_ports(n: usize) -> Result<Vec<u16>, LaunchError> {
    let sockets = (0..n)
        .map(|_| UdpSocket::bind(("127.0.0.1", 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_error("bind a UDP port on 127.0.0.1"))?;
    sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(io_error("read a bound UDP port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
    }

    #[test]
    fn launching_more_hosts_than_the_machine_can_start_is_refused_at_once() {
        let (limit, reason) = machine_host_limit(true);
        assert!(limit >= 1, "{reason}");
        let err =
            launch(LaunchOptions::new(3_000_000_000, "/bin/true", ["x"; 0])).expect_err("refused");
        assert!(
            matches!(&err, LaunchError::BeyondMachine { requested: 3_000_000_000, limit: l, .. } if *l == limit),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&format!("at most {limit} hosts")), "{text}");
        assert!(text.contains("ulimit") || text.contains("port"), "{text}");
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_udp_ports(8).expect("ports");
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 8);
        assert!(ports.iter().all(|&p| p != 0));
    }
}
