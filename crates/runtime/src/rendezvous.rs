//! Clusters formed by a launcher with no configuration file: the processes of a Slurm step or an
//! MPI launch meet at rank 0, which hands every rank the host table.
//!
//! 1. The launcher ([`fragmenta_config::launcher`]) gives the rank, the size and the job.
//! 2. The cluster secret (`FRAGMENTA_SECRET_FILE` or `FRAGMENTA_SECRET`) and the cluster name
//!    (`slurm-<job>.<step>`, `ompi-<jobid>`, `pmi-<jobid>`) give the cluster CA; each rank
//!    issues its own host certificate (host id = rank) with a fresh key
//!    ([`fragmenta_net::secret`]).
//! 3. Rank 0 binds the meeting point; every other rank binds its own endpoint, connects to rank
//!    0 (retrying until the join timeout) and sends its cores and GPUs. Rank 0 answers, once
//!    all ranks are in, with the table of every rank's address (as rank 0 saw it), cores and
//!    GPUs. The rendezvous connections then close and the ranks link to each other as the hosts
//!    of a configured cluster do, on the same endpoints.
//!
//! The meeting point: host `FRAGMENTA_RENDEZVOUS` (`host` or `host:port`), else the first host
//! of the step's node list (resolved by DNS, else by its `NodeAddr` from
//! `scontrol show node`), else the machine of `mpirun`'s own URI (`OMPI_MCA_orte_hnp_uri`:
//! Open MPI places rank 0 on the first node, where `mpirun` usually runs). Port
//! `FRAGMENTA_PORT`, else the port of `FRAGMENTA_RENDEZVOUS`, else the first of
//! `SLURM_STEP_RESV_PORTS` (`srun --resv-ports`), else one derived from the job and step.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use fragmenta_config::launcher::{Launch, LauncherError, LauncherKind};
use fragmenta_config::{ClusterConfig, ClusterSection, ConfigFile, HostSection};
use fragmenta_job::HostId;
use fragmenta_net::secret::{ClusterSecret, SecretError, SECRET_ENV, SECRET_FILE_ENV};
use fragmenta_net::{ConnectError, Connection, ConnectionError, Endpoint, NetConfig};
use fragmenta_wire::{read_header, write_frame, FrameLimits};
use serde::{Deserialize, Serialize};

use crate::{net, Cluster, ClusterBuilder, JoinError};

/// Environment variable with rank 0's host (`host` or `host:port`), overriding the launcher's.
pub(crate) const RENDEZVOUS_ENV: &str = "FRAGMENTA_RENDEZVOUS";
/// Environment variable with rank 0's port.
pub(crate) const PORT_ENV: &str = "FRAGMENTA_PORT";
/// Environment variable with the join timeout in milliseconds (default 30000).
pub(crate) const JOIN_TIMEOUT_ENV: &str = "FRAGMENTA_JOIN_TIMEOUT_MS";
/// First port derived from a job id; derived ports are `BASE_PORT..BASE_PORT + PORT_SPAN`.
const BASE_PORT: u16 = 10_000;
const PORT_SPAN: u64 = 20_000;
/// One connection attempt to rank 0 waits this long before it is retried.
const ATTEMPT: Duration = Duration::from_secs(3);
/// How long rank 0 waits for a rank to say who it is once connected, and for the table to be
/// read.
const EXCHANGE: Duration = Duration::from_secs(10);
/// Close code of a rendezvous connection that is done.
const CLOSE_DONE: u32 = 0;

/// Why the ranks of a launch could not form a cluster.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RendezvousError {
    /// The launcher's variables are unusable.
    #[error(transparent)]
    Launcher(#[from] LauncherError),
    /// The secret is unusable (malformed, unreadable, or a file others can read).
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Several processes were launched, but there is neither a configuration nor a secret.
    #[error(
        "{launcher} started {size} processes but no cluster secret is set: create one with \
         `fragmenta secret ~/.fragmenta-secret` and set {SECRET_FILE_ENV}=~/.fragmenta-secret \
         (or {SECRET_ENV}=<hex>) for every process, or set FRAGMENTA_CONFIG to a cluster \
         configuration"
    )]
    NoSecret {
        /// The launcher.
        launcher: LauncherKind,
        /// The number of processes it started.
        size: u32,
    },
    /// The launcher gives no job id to name the cluster.
    #[error("{launcher} gives no job id to name the cluster (a Slurm step, mpirun or PMI_JOBID)")]
    NoJob {
        /// The launcher.
        launcher: LauncherKind,
    },
    /// Rank 0's host is unknown.
    #[error("{launcher} gives no host for rank 0: set {RENDEZVOUS_ENV}=<rank 0's host>")]
    NoRendezvous {
        /// The launcher.
        launcher: LauncherKind,
    },
    /// A variable is set but unusable.
    #[error("environment variable {var} = {value:?}: {reason}")]
    BadVariable {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: String,
    },
    /// Rank 0's host cannot be resolved, by DNS nor by Slurm.
    #[error("cannot resolve rank 0's host {host:?}: {reason}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The meeting point (rank 0) or this rank's endpoint cannot be bound.
    #[error("cannot bind {addr} ({origin}): {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Where the port came from, and what collides with it.
        origin: String,
        /// The OS's or the TLS layer's message.
        reason: String,
    },
    /// The certificates could not be made.
    #[error("cannot make this rank's certificate: {0}")]
    Cert(String),
    /// Rank 0 waited the join timeout and these ranks never joined.
    #[error(
        "ranks {} of {size} never joined rank 0 within {waited:?} (a rank with another \
         secret or of another job is refused)",
        ranks(missing)
    )]
    Missing {
        /// The launch's size.
        size: u32,
        /// The ranks that did not join, ascending.
        missing: Vec<u32>,
        /// How long rank 0 waited.
        waited: Duration,
    },
    /// This rank could not reach rank 0 within the join timeout.
    #[error("rank 0 did not answer within {waited:?} (tried {addrs:?}); last: {last}")]
    Unreachable {
        /// Rank 0's candidate addresses.
        addrs: Vec<SocketAddr>,
        /// How long this rank tried.
        waited: Duration,
        /// The last error.
        last: String,
    },
    /// Rank 0 refused this rank, or TLS failed between them.
    #[error("refused by rank 0 at {addr}: {reason}")]
    Refused {
        /// Rank 0's address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// Rank 0's table is not a table of this launch.
    #[error("rank 0 sent a bad host table: {0}")]
    BadTable(String),
}

fn ranks(r: &[u32]) -> String {
    r.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// What a rank tells rank 0, and what rank 0 answers.
#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    /// A rank's offer (its host id is the one in its certificate).
    Join { cores: u32, gpus: u32 },
    /// Every rank, in rank order; rank 0's own address is `None` (the joiner dialed it).
    Table { hosts: Vec<Entry> },
    /// The launch cannot form a cluster; why.
    Refused { reason: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    rank: u32,
    addr: Option<SocketAddr>,
    cores: u32,
    gpus: u32,
}

/// The table from rank 0: no payload, a header bounded by the largest table.
fn table_limits() -> FrameLimits {
    FrameLimits {
        max_header: 64 * fragmenta_config::launcher::MAX_RANKS + 4096,
        max_payload: 0,
    }
}

/// A rank's offer: a few numbers.
const OFFER_LIMITS: FrameLimits = FrameLimits {
    max_header: 256,
    max_payload: 0,
};

/// Runs `fut` on `runtime` and waits for it on this thread (which may itself be inside another
/// runtime: nothing here blocks a reactor of ours).
fn wait_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, JoinError> {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| JoinError::RendezvousLost)
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// [`ClusterBuilder::join`] with no configuration file.
pub(crate) fn join(builder: ClusterBuilder) -> Result<Cluster, JoinError> {
    let Some(launch) = fragmenta_config::launcher::detect().map_err(RendezvousError::from)? else {
        return Ok(builder.embedded()?);
    };
    if launch.size == 1 {
        // One process: the embedded cluster is that one-host cluster.
        return Ok(builder.embedded()?);
    }
    let secret = ClusterSecret::from_env_with(env)
        .map_err(RendezvousError::from)?
        .ok_or(RendezvousError::NoSecret {
            launcher: launch.kind,
            size: launch.size,
        })?;
    let name = launch.job_name.clone().ok_or(RendezvousError::NoJob {
        launcher: launch.kind,
    })?;
    let timeout = join_timeout()?;
    let point = meeting_point(&launch)?;
    let host = HostId(launch.rank);
    let identity = fragmenta_net::secret::derive_ca(&secret, &name)
        .and_then(|ca| ca.issue_host(host))
        .map_err(|e| RendezvousError::Cert(e.to_string()))?;
    let me = Entry {
        rank: launch.rank,
        addr: None,
        cores: builder
            .cores
            .map(|c| c.ceil().max(1.0) as u32)
            .or(launch.cpus_per_task)
            .unwrap_or_else(machine_cores),
        // No configuration here: the builder's count is what the other ranks learn.
        gpus: builder.gpus.unwrap_or(0),
    };
    let runtime = net::runtime(host)?;
    let (endpoint, table) = if launch.rank == 0 {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), point.port);
        let endpoint = {
            let _guard = runtime.enter();
            Endpoint::bind_quic_identity(addr, &identity, &NetConfig::default()).map_err(|e| {
                RendezvousError::Bind {
                    addr,
                    origin: point.origin.clone(),
                    reason: net::bind_reason(e),
                }
            })?
        };
        let ep = endpoint.clone();
        let table = wait_on(&runtime, async move {
            collect(&ep, launch.size, me, timeout).await
        })?;
        (endpoint, table?)
    } else {
        let candidates = resolve(&point)?;
        let addr = SocketAddr::new(
            match candidates[0] {
                SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            },
            0,
        );
        let endpoint = {
            let _guard = runtime.enter();
            Endpoint::bind_quic_identity(addr, &identity, &NetConfig::default()).map_err(|e| {
                RendezvousError::Bind {
                    addr,
                    origin: "this rank's own endpoint".into(),
                    reason: net::bind_reason(e),
                }
            })?
        };
        let ep = endpoint.clone();
        let size = launch.size;
        let table = wait_on(&runtime, async move {
            meet(&ep, candidates, size, me, timeout).await
        })?;
        (endpoint, table?)
    };
    let config = cluster_config(&name, &table, endpoint.local_addr(), timeout)?;
    builder.join_node(config, host, Some(net::Bound { runtime, endpoint }))
}

fn machine_cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

fn join_timeout() -> Result<Duration, RendezvousError> {
    match env(JOIN_TIMEOUT_ENV) {
        None => Ok(Duration::from_millis(
            fragmenta_config::DEFAULT_MIN_HOSTS_TIMEOUT_MS,
        )),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if (1..=86_400_000).contains(&ms) => Ok(Duration::from_millis(ms)),
            _ => Err(RendezvousError::BadVariable {
                var: JOIN_TIMEOUT_ENV,
                value: v,
                reason: "must be a number of milliseconds between 1 and 86400000".into(),
            }),
        },
    }
}

/// Rank 0's host (candidates, tried in turn) and port, and where the port came from.
#[derive(Debug, PartialEq, Eq)]
struct MeetingPoint {
    hosts: Vec<String>,
    /// The host came from Slurm's node list: it may resolve only through `scontrol`.
    slurm_node: bool,
    port: u16,
    origin: String,
}

fn meeting_point(launch: &Launch) -> Result<MeetingPoint, RendezvousError> {
    meeting_point_with(launch, env)
}

fn meeting_point_with(
    launch: &Launch,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<MeetingPoint, RendezvousError> {
    let bad = |var: &'static str, value: &str, reason: &str| RendezvousError::BadVariable {
        var,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let mut given_port = None;
    let given_host = match lookup(RENDEZVOUS_ENV) {
        None => None,
        Some(v) => {
            let t = v.trim();
            let (host, port) = if let Ok(sa) = t.parse::<SocketAddr>() {
                (sa.ip().to_string(), Some(sa.port()))
            } else if t.parse::<IpAddr>().is_ok() {
                (t.to_owned(), None)
            } else {
                match t.rsplit_once(':') {
                    Some((h, p)) => {
                        let port = p
                            .parse::<u16>()
                            .map_err(|_| bad(RENDEZVOUS_ENV, &v, "the port is not a number"))?;
                        (h.to_owned(), Some(port))
                    }
                    None => (t.to_owned(), None),
                }
            };
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad(RENDEZVOUS_ENV, &v, "expected host or host:port"));
            }
            if port == Some(0) {
                return Err(bad(RENDEZVOUS_ENV, &v, "the port must not be 0"));
            }
            given_port = port;
            Some(host)
        }
    };
    let (hosts, slurm_node) = match (given_host, launch.hosts.first()) {
        (Some(h), _) => (vec![h], false),
        (None, Some(first)) => (vec![first.clone()], true),
        (None, None) if !launch.mpirun_hosts.is_empty() => (launch.mpirun_hosts.clone(), false),
        (None, None) => {
            return Err(RendezvousError::NoRendezvous {
                launcher: launch.kind,
            })
        }
    };
    let (port, origin) = if let Some(v) = lookup(PORT_ENV) {
        match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => (p, format!("{PORT_ENV}={p}")),
            _ => {
                return Err(bad(
                    PORT_ENV,
                    &v,
                    "must be a port number between 1 and 65535",
                ))
            }
        }
    } else if let Some(p) = given_port {
        (p, format!("the port of {RENDEZVOUS_ENV}"))
    } else if let Some(p) = launch.reserved_port {
        (p, "the first port of SLURM_STEP_RESV_PORTS".to_owned())
    } else if let Some(n) = launch.job_number {
        let p = BASE_PORT + (n % PORT_SPAN) as u16;
        let job = launch.job_name.as_deref().unwrap_or("this job");
        let what = if launch.kind == LauncherKind::OpenMpi {
            format!("job id mod {PORT_SPAN}")
        } else {
            format!("(job id × 64 + step id) mod {PORT_SPAN}")
        };
        (
            p,
            format!(
                "port {p} derived from {job}: {BASE_PORT} + {what}; another launch on rank 0's \
                 machine with the same value, or any program using the port, collides: set \
                 {PORT_ENV}, or use `srun --resv-ports`"
            ),
        )
    } else {
        return Err(RendezvousError::NoJob {
            launcher: launch.kind,
        });
    };
    Ok(MeetingPoint {
        hosts,
        slurm_node,
        port,
        origin,
    })
}

/// Rank 0's candidate socket addresses: each host by DNS, else (for a Slurm node) by its
/// `NodeAddr`; IPv4 first, loopback last, one address family (that of the first).
fn resolve(point: &MeetingPoint) -> Result<Vec<SocketAddr>, RendezvousError> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for host in &point.hosts {
        match resolve_host(point, host) {
            Ok(addr) => found.push(addr),
            Err(e) => errors.push(e),
        }
    }
    found.sort_by_key(|a: &SocketAddr| (!a.is_ipv4(), a.ip().is_loopback()));
    found.dedup();
    let Some(first) = found.first().copied() else {
        return Err(errors.pop().unwrap_or(RendezvousError::Resolve {
            host: point.hosts.join(","),
            reason: "no host to resolve".into(),
        }));
    };
    found.retain(|a| a.is_ipv4() == first.is_ipv4());
    Ok(found)
}

fn resolve_host(point: &MeetingPoint, host: &str) -> Result<SocketAddr, RendezvousError> {
    let dns = |host: &str| -> Result<SocketAddr, String> {
        let addrs: Vec<SocketAddr> = (host, point.port)
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| "the name has no addresses".to_owned())
    };
    let dns_error = match dns(host) {
        Ok(addr) => return Ok(addr),
        Err(e) => e,
    };
    if !point.slurm_node {
        return Err(RendezvousError::Resolve {
            host: host.to_owned(),
            reason: dns_error,
        });
    }
    let node_addr = slurm_node_addr(host).map_err(|e| RendezvousError::Resolve {
        host: host.to_owned(),
        reason: format!("DNS: {dns_error}; scontrol show node: {e}"),
    })?;
    dns(&node_addr).map_err(|e| RendezvousError::Resolve {
        host: host.to_owned(),
        reason: format!("DNS: {dns_error}; its NodeAddr {node_addr:?}: {e}"),
    })
}

/// The `NodeAddr` of a Slurm node, from `scontrol show node <name>`.
fn slurm_node_addr(node: &str) -> Result<String, String> {
    let out = std::process::Command::new("scontrol")
        .args(["show", "node", node])
        .output()
        .map_err(|e| format!("cannot run scontrol: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    node_addr_of(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| "no NodeAddr in its output".to_owned())
}

fn node_addr_of(scontrol: &str) -> Option<String> {
    scontrol
        .split_whitespace()
        .find_map(|w| w.strip_prefix("NodeAddr="))
        .filter(|a| !a.is_empty() && *a != "(null)")
        .map(ToOwned::to_owned)
}

/// Rank 0: accepts every other rank's offer, then sends each the table.
async fn collect(
    endpoint: &Endpoint,
    size: u32,
    me: Entry,
    timeout: Duration,
) -> Result<Vec<Entry>, RendezvousError> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut joined: BTreeMap<u32, (Connection, fragmenta_net::SendStream, Entry)> = BTreeMap::new();
    while joined.len() + 1 < size as usize {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                None => break,
                Some(Err(e)) => tracing::warn!(error = %e, "rendezvous: refused a connection"),
                Some(Ok(conn)) => {
                    let rank = conn.peer().0;
                    if rank == 0 || rank >= size {
                        let reason = format!("rank {rank} is not a rank of this launch of {size}");
                        tracing::warn!(%reason, "rendezvous: refused a rank");
                        conn.close(fragmenta_net::handshake::CLOSE_REJECTED, reason.as_bytes());
                        continue;
                    }
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let offer = tokio::time::timeout(EXCHANGE, read_offer(&conn)).await;
                        let _ = tx.send((conn, offer));
                    });
                }
            },
            Some((conn, offer)) = rx.recv() => {
                let rank = conn.peer().0;
                match offer {
                    Ok(Ok((send, cores, gpus))) if !joined.contains_key(&rank) => {
                        let entry = Entry { rank, addr: Some(conn.remote_address()), cores, gpus };
                        joined.insert(rank, (conn, send, entry));
                    }
                    Ok(Ok(_)) => {
                        let reason = format!("rank {rank} already joined");
                        tracing::warn!(%reason, "rendezvous: refused a rank");
                        conn.close(fragmenta_net::handshake::CLOSE_REJECTED, reason.as_bytes());
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(rank, error = %e, "rendezvous: bad offer");
                        conn.close(fragmenta_net::handshake::CLOSE_PROTOCOL_ERROR, e.as_bytes());
                    }
                    Err(_) => {
                        tracing::warn!(rank, "rendezvous: no offer in time");
                        conn.close(fragmenta_net::handshake::CLOSE_PROTOCOL_ERROR, b"no offer in time");
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    if joined.len() + 1 < size as usize {
        let missing: Vec<u32> = (1..size).filter(|r| !joined.contains_key(r)).collect();
        let err = RendezvousError::Missing {
            size,
            missing,
            waited: start.elapsed(),
        };
        // The ranks that came learn why the cluster does not form, at once.
        let reason = err.to_string();
        for (conn, mut send, _) in joined.into_values() {
            let _ = write_frame(
                &mut send,
                &Msg::Refused {
                    reason: reason.clone(),
                },
                &[],
            )
            .await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
        }
        return Err(err);
    }
    let mut hosts = vec![me];
    hosts.extend(joined.values().map(|(_, _, e)| e.clone()));
    let table = Msg::Table {
        hosts: hosts.clone(),
    };
    let mut waits = Vec::new();
    for (rank, (conn, mut send, _)) in joined {
        if let Err(e) = write_frame(&mut send, &table, &[]).await {
            tracing::warn!(rank, error = %e, "rendezvous: cannot send the table");
        }
        let _ = send.finish();
        // The rank closes once it has read the table; closing first could drop it.
        waits.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(EXCHANGE, conn.closed()).await;
        }));
    }
    for w in waits {
        let _ = w.await;
    }
    Ok(hosts)
}

/// Reads a rank's offer on the first stream it opens.
async fn read_offer(conn: &Connection) -> Result<(fragmenta_net::SendStream, u32, u32), String> {
    let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    match read_header::<_, Msg>(&mut recv, &OFFER_LIMITS).await {
        Ok(Some((Msg::Join { cores, gpus }, 0))) if cores >= 1 => Ok((send, cores, gpus)),
        Ok(Some((Msg::Join { .. }, 0))) => Err("an offer of 0 cores".into()),
        Ok(_) => Err("expected a join offer".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A TLS failure (a wrong secret, another job): retrying cannot help.
fn tls_refusal(e: &ConnectError) -> Option<String> {
    match e {
        ConnectError::Connection(
            ConnectionError::TransportError { reason }
            | ConnectionError::TransportClosed { reason },
        ) if reason.to_lowercase().contains("certificate") => Some(format!(
            "{reason} (TLS refused: the cluster secret or the job differs from rank 0's)"
        )),
        ConnectError::Rejected(r) => Some(r.to_string()),
        _ => None,
    }
}

/// A rank other than 0: offers itself to rank 0 (trying each candidate address in turn) until
/// it answers with the table.
async fn meet(
    endpoint: &Endpoint,
    candidates: Vec<SocketAddr>,
    size: u32,
    me: Entry,
    timeout: Duration,
) -> Result<Vec<Entry>, RendezvousError> {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut last = String::from("no attempt");
    // Candidates whose TLS refused this rank: a wrong secret or another job. When every
    // candidate refused, retrying cannot help.
    let mut refused: BTreeMap<SocketAddr, String> = BTreeMap::new();
    let mut turn = 0usize;
    while start.elapsed() < timeout {
        let primary = candidates[turn % candidates.len()];
        turn += 1;
        if refused.contains_key(&primary) {
            continue;
        }
        let attempt = tokio::time::timeout(ATTEMPT, endpoint.connect(primary, HostId(0))).await;
        let conn = match attempt {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                if let Some(reason) = tls_refusal(&e) {
                    refused.insert(primary, reason.clone());
                    if refused.len() == candidates.len() {
                        return Err(RendezvousError::Refused {
                            addr: primary,
                            reason,
                        });
                    }
                    continue;
                }
                last = format!("{primary}: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
            Err(_) => {
                last = format!("{primary}: no answer within {ATTEMPT:?}");
                continue;
            }
        };
        match exchange(&conn, &me).await {
            Ok(Msg::Table { hosts }) => {
                conn.close(CLOSE_DONE, b"joined");
                return check_table(hosts, size, primary);
            }
            Ok(Msg::Refused { reason }) => {
                conn.close(CLOSE_DONE, b"refused");
                return Err(RendezvousError::Refused {
                    addr: primary,
                    reason,
                });
            }
            Ok(Msg::Join { .. }) => {
                conn.close(
                    fragmenta_net::handshake::CLOSE_PROTOCOL_ERROR,
                    b"unexpected",
                );
                return Err(RendezvousError::BadTable("a join offer instead".into()));
            }
            Err(ExchangeError::Refused(reason)) => {
                return Err(RendezvousError::Refused {
                    addr: primary,
                    reason,
                })
            }
            Err(ExchangeError::Broken(e)) => {
                // Rank 0 went away mid-exchange (restarted, or still starting): try again.
                last = format!("{primary}: {e}");
                tokio::time::sleep(backoff).await;
            }
        }
    }
    Err(RendezvousError::Unreachable {
        addrs: candidates,
        waited: start.elapsed(),
        last,
    })
}

enum ExchangeError {
    Refused(String),
    Broken(String),
}

async fn exchange(conn: &Connection, me: &Entry) -> Result<Msg, ExchangeError> {
    let broken = |e: &dyn std::fmt::Display| ExchangeError::Broken(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| broken(&e))?;
    let offer = Msg::Join {
        cores: me.cores,
        gpus: me.gpus,
    };
    write_frame(&mut send, &offer, &[])
        .await
        .map_err(|e| broken(&e))?;
    // Rank 0 answers when every rank is in: wait as long as the connection lives.
    match read_header::<_, Msg>(&mut recv, &table_limits()).await {
        Ok(Some((msg, 0))) => Ok(msg),
        Ok(Some(_)) => Err(ExchangeError::Broken("a payload on the rendezvous".into())),
        Ok(None) => Err(ExchangeError::Broken("rank 0 closed the stream".into())),
        Err(e) => match conn.close_reason() {
            Some(ConnectionError::ClosedByPeer { code, reason })
                if code == u64::from(fragmenta_net::handshake::CLOSE_REJECTED) =>
            {
                Err(ExchangeError::Refused(
                    String::from_utf8_lossy(&reason).into_owned(),
                ))
            }
            _ => Err(broken(&e)),
        },
    }
}

fn check_table(
    hosts: Vec<Entry>,
    size: u32,
    primary: SocketAddr,
) -> Result<Vec<Entry>, RendezvousError> {
    if hosts.len() != size as usize {
        return Err(RendezvousError::BadTable(format!(
            "{} hosts for a launch of {size}",
            hosts.len()
        )));
    }
    let mut out = Vec::with_capacity(hosts.len());
    for (i, mut h) in hosts.into_iter().enumerate() {
        if h.rank as usize != i || h.cores == 0 {
            return Err(RendezvousError::BadTable(format!(
                "entry {i} is rank {} with {} cores",
                h.rank, h.cores
            )));
        }
        match (i, h.addr) {
            (0, _) => h.addr = Some(primary),
            (_, Some(a)) if a.port() != 0 => {}
            _ => {
                return Err(RendezvousError::BadTable(format!(
                    "rank {i} has no address"
                )))
            }
        }
        out.push(h);
    }
    Ok(out)
}

/// The configuration of the met cluster: one host per rank, all of them required. Its
/// certificate paths are unused (the endpoint is already bound with the derived identity).
fn cluster_config(
    name: &str,
    table: &[Entry],
    own_addr: SocketAddr,
    timeout: Duration,
) -> Result<ClusterConfig, JoinError> {
    const DERIVED: &str = "(derived from the cluster secret)";
    let file = ConfigFile {
        cluster: ClusterSection {
            name: name.to_owned(),
            ca_cert: DERIVED.to_owned(),
            min_hosts: Some(table.len() as i64),
            min_hosts_timeout_ms: Some(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)),
            ..ClusterSection::default()
        },
        hosts: table
            .iter()
            .map(|h| HostSection {
                id: i64::from(h.rank),
                address: h.addr.unwrap_or(own_addr).to_string(),
                cores: Some(i64::from(h.cores)),
                gpus: Some(i64::from(h.gpus)),
                cert: DERIVED.to_owned(),
                key: DERIVED.to_owned(),
                ..HostSection::default()
            })
            .collect(),
    };
    Ok(ClusterConfig::from_config_file(file, "/")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendezvous_task_that_ends_without_an_answer_is_a_typed_error() {
        let runtime = crate::net::runtime(HostId(0)).unwrap();
        assert_eq!(wait_on(&runtime, async { 5 }), Ok(5));
        let lost: Result<(), JoinError> = wait_on(&runtime, async {
            panic!("the task ends without an answer")
        });
        assert_eq!(lost, Err(JoinError::RendezvousLost));
    }

    fn slurm(hosts: &[&str]) -> Launch {
        Launch {
            kind: LauncherKind::SlurmStep,
            rank: 1,
            rank_var: "SLURM_PROCID",
            size: 4,
            local_rank: None,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            job_name: Some("slurm-12.3".into()),
            job_number: Some(12 * 64 + 3),
            cpus_per_task: None,
            reserved_port: None,
            mpirun_hosts: Vec::new(),
        }
    }

    #[test]
    fn meeting_point_precedence() {
        let none = |_: &str| None;
        let p = meeting_point_with(&slurm(&["n1", "n2"]), none).unwrap();
        assert_eq!(
            (p.hosts.clone(), p.slurm_node),
            (vec!["n1".to_owned()], true)
        );
        assert_eq!(p.port, BASE_PORT + (12 * 64 + 3) as u16);
        assert!(p.origin.contains("collides"), "{}", p.origin);
        let mut l = slurm(&["n1"]);
        l.reserved_port = Some(21001);
        assert_eq!(meeting_point_with(&l, none).unwrap().port, 21001);
        let port = |v: &str| (v == PORT_ENV).then(|| "4000".to_owned());
        assert_eq!(meeting_point_with(&l, port).unwrap().port, 4000);
        let rdv = |v: &str| (v == RENDEZVOUS_ENV).then(|| "10.0.0.9:4100".to_owned());
        let p = meeting_point_with(&l, rdv).unwrap();
        assert_eq!(
            (p.hosts[0].as_str(), p.port, p.slurm_node),
            ("10.0.0.9", 4100, false)
        );
        let mut mpi = slurm(&[]);
        mpi.kind = LauncherKind::OpenMpi;
        assert!(matches!(
            meeting_point_with(&mpi, none),
            Err(RendezvousError::NoRendezvous { .. })
        ));
        mpi.mpirun_hosts = vec!["10.0.0.1".into(), "127.0.0.1".into()];
        let p = meeting_point_with(&mpi, none).unwrap();
        assert_eq!(p.hosts, ["10.0.0.1", "127.0.0.1"]);
        // Loopback last.
        let order = resolve(&MeetingPoint {
            hosts: vec!["127.0.0.1".into(), "10.0.0.1".into()],
            ..p
        })
        .unwrap();
        assert_eq!(order[0].ip(), "10.0.0.1".parse::<IpAddr>().unwrap());
        let bad = |v: &str| (v == PORT_ENV).then(|| "0".to_owned());
        assert!(matches!(
            meeting_point_with(&mpi, bad),
            Err(RendezvousError::BadVariable { var: PORT_ENV, .. })
        ));
    }

    #[test]
    fn node_addr_from_scontrol_output() {
        let out = "NodeName=fnode1 Arch=x86_64 CoresPerSocket=1\n   CPUAlloc=0 NodeAddr=127.0.0.1 NodeHostName=vm";
        assert_eq!(node_addr_of(out).as_deref(), Some("127.0.0.1"));
        assert_eq!(node_addr_of("NodeName=x"), None);
    }

    #[test]
    fn tables_are_checked() {
        let p: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let e = |rank, addr: Option<&str>| Entry {
            rank,
            addr: addr.map(|a| a.parse().unwrap()),
            cores: 2,
            gpus: 0,
        };
        let t = check_table(vec![e(0, None), e(1, Some("10.0.0.2:6000"))], 2, p).unwrap();
        assert_eq!(t[0].addr, Some(p));
        assert!(check_table(vec![e(0, None)], 2, p).is_err());
        assert!(check_table(vec![e(0, None), e(2, Some("10.0.0.2:6000"))], 2, p).is_err());
        assert!(check_table(vec![e(0, None), e(1, None)], 2, p).is_err());
    }
}
