//! The command line: argument parsing and the `certs` and `status` commands. This is the binary
//! part of the crate, so errors are `anyhow` here.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use fragmenta_config::ClusterConfig;
use fragmenta_job::HostId;
use fragmenta_net::certs;

use crate::launch::{launch, LaunchOptions};

/// Distributed fragmented jobs: start and manage fragmenta clusters.
#[derive(Debug, Parser)]
#[command(name = "fragmenta", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start N copies of a program as the hosts of a cluster on this machine (like mpirun -np).
    ///
    /// Each copy gets FRAGMENTA_CONFIG and FRAGMENTA_HOST_ID; its output lines are prefixed
    /// with [host-<id>]. The exit status is the first host's (the initiator's). If a host fails
    /// or the launcher is interrupted, all hosts are stopped (SIGTERM, then SIGKILL).
    Launch(LaunchArgs),
    /// Generate the cluster CA and a certificate and key for every host.
    Certs(CertsArgs),
    /// Create a cluster secret for srun/mpirun clusters with no config file (written to FILE
    /// with mode 0600, or printed as an export line).
    Secret(crate::secret::SecretArgs),
    /// Check a cluster config and list its hosts and whether their certificate files exist,
    /// name their host and are still valid.
    Status {
        /// The cluster config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check or run a typed operator pipeline (Clara api-version 0.5.0 YAML).
    Pipeline(crate::pipeline::PipelineArgs),
}

#[derive(Debug, Args)]
struct LaunchArgs {
    /// Number of hosts to start.
    #[arg(short = 'n', long = "np", value_name = "N")]
    hosts: usize,
    /// Use the first N hosts of this config instead of generating one (with certificates) in a
    /// temporary folder.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Cores of each host of the generated config (default: all of this machine's).
    #[arg(long, value_name = "C", value_parser = clap::value_parser!(u32).range(1..))]
    cores: Option<u32>,
    /// Milliseconds hosts get to exit by themselves after the initiator finished, and between
    /// SIGTERM and SIGKILL.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    grace_ms: u64,
    /// Keep the other hosts running when a host other than host 0 dies (to watch its fragments
    /// move to the others); host 0's death still stops everyone.
    #[arg(long)]
    keep_going: bool,
    /// The program and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROG ARGS"
    )]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
struct CertsArgs {
    /// Write the files the config names (ca_cert, each host's cert and key; the CA key next to
    /// the CA certificate, with extension .key).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["out", "hosts", "cluster"])]
    config: Option<PathBuf>,
    /// Write ca.pem, ca.key, host-<id>.pem and host-<id>.key into this folder.
    #[arg(
        long,
        value_name = "DIR",
        requires = "hosts",
        required_unless_present = "config"
    )]
    out: Option<PathBuf>,
    /// Host ids, comma-separated.
    #[arg(long, value_name = "IDS", value_delimiter = ',', requires = "out")]
    hosts: Vec<u32>,
    /// Cluster name written into the CA certificate.
    #[arg(long, value_name = "NAME", default_value = "fragmenta")]
    cluster: String,
    /// Replace an existing CA (every host then needs its new certificate).
    #[arg(long)]
    force: bool,
    /// Days each host certificate is valid (the CA: ten years, or longer to cover them). An
    /// expired host can no longer join: regenerate with --force before then (see the
    /// README's "Certificates" section).
    #[arg(long, value_name = "DAYS", default_value_t = 365,
        value_parser = clap::value_parser!(u32).range(1..=36500))]
    validity_days: u32,
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fragmenta: error: {}", render_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `: `-separated, leaving out a cause whose text the
/// message before it already shows (many errors print their source themselves).
fn render_error(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// `n hosts` or `1 host`.
fn hosts_phrase(n: usize) -> String {
    if n == 1 {
        "1 host".to_owned()
    } else {
        format!("{n} hosts")
    }
}

/// Certificate options from `--validity-days`.
fn cert_options(validity_days: u32) -> certs::CertOptions {
    certs::CertOptions {
        host_validity: Duration::from_secs(u64::from(validity_days) * 86_400),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Launch(args) => {
            let mut command = args.command.into_iter();
            let program = command.next().context("no program to launch")?;
            let mut opts = LaunchOptions::new(args.hosts, program, command);
            opts.config = args.config;
            opts.cores = args.cores;
            opts.grace = Duration::from_millis(args.grace_ms);
            opts.keep_going = args.keep_going;
            let code = launch(opts)?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)))
        }
        Command::Secret(args) => {
            crate::secret::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(args) => {
            let options = cert_options(args.validity_days);
            match args.config {
                Some(config) => certs_for_config(&config, args.force, &options)?,
                None => {
                    let out = args.out.context("--out is required without --config")?;
                    fragmenta_config::check_cluster_name(&args.cluster, "--cluster")?;
                    let hosts: Vec<HostId> = args.hosts.into_iter().map(HostId).collect();
                    if let Some(h) = hosts.iter().find(|h| **h == HostId::UNASSIGNED) {
                        bail!(
                            "--hosts: {} is reserved (it marks a fragment assigned to no host)",
                            h.0
                        );
                    }
                    refuse_overwrite(&[out.join("ca.pem")], args.force)?;
                    certs::generate_with(&out, &args.cluster, &hosts, &options)
                        .with_context(|| format!("generating certificates in {}", out.display()))?;
                    println!(
                        "wrote the CA and certificates for {} of cluster {:?} into {} \
                         (host certificates valid {} days)",
                        hosts_phrase(hosts.len()),
                        args.cluster,
                        out.display(),
                        args.validity_days
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pipeline(args) => crate::pipeline::run(args),
        Command::Status { config: path } => {
            let config = ClusterConfig::load(&path)?;
            print!("{}", render_status(&config, &path));
            let mut ok = true;
            if let Err(e) = config.check_files() {
                eprintln!("fragmenta: {e}");
                ok = false;
            }
            for problem in certificate_problems(&config) {
                eprintln!("fragmenta: {problem}");
                ok = false;
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn refuse_overwrite(existing: &[PathBuf], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    if let Some(file) = existing.iter().find(|p| p.exists()) {
        bail!(
            "{} exists; pass --force to replace the cluster's CA and certificates \
             (every host then needs the new files)",
            file.display()
        );
    }
    Ok(())
}

/// Writes certificates to the paths the config names: straight into the folder when all files
/// have `generate`'s names in one folder, otherwise generated in a temporary folder and copied.
fn certs_for_config(path: &Path, force: bool, options: &certs::CertOptions) -> anyhow::Result<()> {
    let config = ClusterConfig::load(path)?;
    let ids: Vec<HostId> = config.host_ids().collect();
    let ca_key = config.ca_cert().with_extension("key");
    let mut targets = vec![config.ca_cert().to_owned(), ca_key.clone()];
    for host in config.hosts() {
        targets.push(host.cert().to_owned());
        targets.push(host.key().to_owned());
    }
    refuse_overwrite(&targets, force)?;

    let dir = config.ca_cert().parent().unwrap_or(Path::new("/"));
    let conventional = config.ca_cert() == dir.join("ca.pem")
        && config.hosts().iter().all(|h| {
            let expected = certs::HostCertPaths::in_dir(dir, h.id());
            h.cert() == expected.cert && h.key() == expected.key
        });
    if conventional {
        certs::generate_with(dir, config.name(), &ids, options)
            .with_context(|| format!("generating certificates in {}", dir.display()))?;
    } else {
        let temp = tempfile::tempdir().context("creating a temporary folder")?;
        let made = certs::generate_with(temp.path(), config.name(), &ids, options)
            .context("generating certificates")?;
        let mut copies = vec![
            (made.ca.clone(), config.ca_cert().to_owned()),
            (temp.path().join("ca.key"), ca_key),
        ];
        for ((_, files), host) in made.hosts.iter().zip(config.hosts()) {
            copies.push((files.cert.clone(), host.cert().to_owned()));
            copies.push((files.key.clone(), host.key().to_owned()));
        }
        for (from, to) in copies {
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::copy(&from, &to).with_context(|| format!("writing {}", to.display()))?;
        }
    }
    println!(
        "wrote the CA and certificates for {} of cluster {:?} (ca_cert {})",
        hosts_phrase(ids.len()),
        config.name(),
        config.ca_cert().display()
    );
    Ok(())
}

/// Whether the certificate at `path` has expired (unreadable ones count as not: they are
/// reported as such).
fn expired(path: &Path) -> bool {
    fragmenta_net::tls::certificate_expiry(path).is_ok_and(|at| at <= std::time::SystemTime::now())
}

/// The state of a host's certificate file for `status`: `None` when it names the host and has
/// not expired.
fn certificate_state(host: &fragmenta_config::HostConfig) -> Option<String> {
    match fragmenta_net::tls::certificate_host(host.cert()) {
        Ok(id) if id != host.id() => Some(format!("cert is {id}'s")),
        Ok(_) if expired(host.cert()) => Some("cert expired".to_owned()),
        Ok(_) => None,
        Err(_) => Some("unreadable cert".to_owned()),
    }
}

/// What is wrong with the certificates that exist: one that names another host (a host given
/// another host's certificate and key cannot join: both sides wait for the host its
/// certificate names), or one that is not a host certificate.
fn certificate_problems(config: &ClusterConfig) -> Vec<String> {
    config
        .hosts()
        .iter()
        .filter(|h| h.cert().is_file())
        .filter_map(|h| {
            let cert = h.cert().display();
            match fragmenta_net::tls::certificate_host(h.cert()) {
                Ok(id) if id == h.id() && expired(h.cert()) => Some(format!(
                    "{}'s certificate {cert} has expired: rotate the cluster's certificates \
                     (`fragmenta certs --config <this config file> --force`)",
                    h.id()
                )),
                Ok(id) if id == h.id() => None,
                Ok(id) => Some(format!(
                    "{}'s certificate {cert} is {id}'s: give each host its own certificate \
                     (`fragmenta certs --config <this config file> --force`)",
                    h.id()
                )),
                Err(e) => Some(format!("{}'s certificate: {e}", h.id())),
            }
        })
        .collect()
}

/// The `status` report: cluster settings and a table of hosts.
fn render_status(config: &ClusterConfig, path: &Path) -> String {
    let present = |p: &Path| if p.is_file() { "present" } else { "MISSING" };
    let mut out = String::new();
    let _ = writeln!(out, "cluster {:?} ({})", config.name(), path.display());
    let _ = writeln!(
        out,
        "  CA certificate {} ({})",
        config.ca_cert().display(),
        present(config.ca_cert())
    );
    let _ = writeln!(
        out,
        "  waits for {} of {} hosts for {:?}; heartbeat {:?}, failure timeout {:?}",
        config.min_hosts(),
        config.hosts().len(),
        config.min_hosts_timeout(),
        config.heartbeat_interval(),
        config.failure_timeout()
    );
    let rows: Vec<[String; 6]> = config
        .hosts()
        .iter()
        .map(|h| {
            let certs = match (h.cert().is_file(), h.key().is_file()) {
                (true, true) => certificate_state(h).unwrap_or_else(|| "ok".to_owned()),
                (false, true) => "missing cert".to_owned(),
                (true, false) => "missing key".to_owned(),
                (false, false) => "missing cert+key".to_owned(),
            };
            [
                h.id().0.to_string(),
                h.address().to_owned(),
                h.sub_cluster().to_string(),
                h.cores().to_string(),
                h.gpus().to_string(),
                certs,
            ]
        })
        .collect();
    let header = ["ID", "ADDRESS", "SUB-CLUSTER", "CORES", "GPUS", "CERTS"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in(dir: &Path, cert_names: &str) -> PathBuf {
        let mut text = String::from("[cluster]\nname = \"t\"\n");
        text.push_str(&format!("ca_cert = \"{cert_names}/ca.pem\"\n"));
        for i in 0..2 {
            text.push_str(&format!(
                "[[host]]\nid = {i}\naddress = \"127.0.0.1:{}\"\ncores = 2\ngpus = {i}\n\
                 cert = \"{cert_names}/host-{i}.pem\"\nkey = \"{cert_names}/host-{i}.key\"\n",
                47100 + i
            ));
        }
        let path = dir.join("c.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    #[test]
    fn cli_parses_launch_with_trailing_program_arguments() {
        let cli = Cli::try_parse_from([
            "fragmenta",
            "launch",
            "-n",
            "4",
            "--grace-ms",
            "500",
            "--",
            "prog",
            "-x",
            "--y",
        ])
        .expect("parses");
        let Command::Launch(args) = cli.command else {
            panic!("not launch")
        };
        assert_eq!(args.hosts, 4);
        assert_eq!(args.grace_ms, 500);
        assert!(!args.keep_going);
        assert_eq!(args.command, ["prog", "-x", "--y"].map(OsString::from));
        let cli = Cli::try_parse_from(["fragmenta", "launch", "-n", "2", "--keep-going", "p"])
            .expect("parses");
        let Command::Launch(args) = cli.command else {
            panic!("not launch")
        };
        assert!(args.keep_going);
        assert_eq!(args.command, [OsString::from("p")]);
    }

    #[test]
    fn cli_certs_needs_config_or_out_and_hosts() {
        assert!(Cli::try_parse_from(["fragmenta", "certs"]).is_err());
        assert!(Cli::try_parse_from(["fragmenta", "certs", "--out", "d"]).is_err());
        assert!(
            Cli::try_parse_from(["fragmenta", "certs", "--config", "c", "--out", "d"]).is_err()
        );
        let cli = Cli::try_parse_from(["fragmenta", "certs", "--out", "d", "--hosts", "0,1,5"])
            .expect("parses");
        let Command::Certs(args) = cli.command else {
            panic!("not certs")
        };
        assert_eq!(args.hosts, [0, 1, 5]);
        assert_eq!(args.cluster, "fragmenta");
    }

    #[test]
    fn certs_for_config_writes_every_named_file_and_refuses_to_overwrite() {
        for folder in ["certs", "."] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = config_in(dir.path(), folder);
            let config = ClusterConfig::load(&path).expect("valid");
            assert!(config.check_files().is_err());
            certs_for_config(&path, false, &Default::default()).expect("generates");
            assert_eq!(config.check_files(), Ok(()));
            let err = certs_for_config(&path, false, &Default::default()).expect_err("CA exists");
            assert!(err.to_string().contains("--force"), "{err}");
            certs_for_config(&path, true, &Default::default()).expect("--force regenerates");
        }
    }

    #[test]
    fn certs_for_config_copies_to_unconventional_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = "[cluster]\nname = \"t\"\nca_cert = \"pki/cluster-ca.crt\"\n\
                    [[host]]\nid = 3\naddress = \"127.0.0.1:1\"\n\
                    cert = \"node3/cert.pem\"\nkey = \"node3/private/key.pem\"\n";
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).expect("write");
        certs_for_config(&path, false, &Default::default()).expect("generates");
        let config = ClusterConfig::load(&path).expect("valid");
        assert_eq!(config.check_files(), Ok(()));
        assert!(dir.path().join("pki/cluster-ca.key").is_file());
        let pem = std::fs::read_to_string(dir.path().join("node3/cert.pem")).expect("cert");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    }

    #[test]
    fn status_lists_hosts_and_certificate_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = config_in(dir.path(), "certs");
        let config = ClusterConfig::load(&path).expect("valid");
        let before = render_status(&config, &path);
        assert!(before.contains("ca.pem (MISSING)"), "{before}");
        let lines: Vec<&str> = before.lines().skip(3).collect();
        assert_eq!(
            lines[0],
            "ID  ADDRESS          SUB-CLUSTER  CORES  GPUS  CERTS"
        );
        assert_eq!(
            lines[1],
            "0   127.0.0.1:47100  0            2      0     missing cert+key"
        );
        assert_eq!(
            lines[2],
            "1   127.0.0.1:47101  0            2      1     missing cert+key"
        );
        certs_for_config(&path, false, &Default::default()).expect("generates");
        let after = render_status(&config, &path);
        assert!(after.contains("ca.pem (present)"), "{after}");
        assert!(
            after.lines().skip(4).all(|l| l.ends_with("  ok")),
            "{after}"
        );
    }

    #[test]
    fn certs_refuses_an_empty_cluster_name_and_the_reserved_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("certs");
        let out_arg = out.to_str().expect("utf-8 path");
        for name in ["", "  ", "a\nb"] {
            let cli = Cli::try_parse_from([
                "fragmenta",
                "certs",
                "--out",
                out_arg,
                "--hosts",
                "0",
                "--cluster",
                name,
            ])
            .expect("parses");
            let err = run(cli).expect_err("refused");
            assert!(err.to_string().contains("--cluster"), "{err}");
        }
        let cli = Cli::try_parse_from([
            "fragmenta",
            "certs",
            "--out",
            out_arg,
            "--hosts",
            "0,4294967295",
        ])
        .expect("parses");
        let err = run(cli).expect_err("refused");
        assert!(err.to_string().contains("reserved"), "{err}");
        assert!(!out.exists(), "nothing written");
    }

    #[test]
    fn certs_validity_days_sets_the_host_certificates_lifetime() {
        assert!(Cli::try_parse_from([
            "fragmenta",
            "certs",
            "--out",
            "d",
            "--hosts",
            "0",
            "--validity-days",
            "0"
        ])
        .is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("certs");
        let cli = Cli::try_parse_from([
            "fragmenta",
            "certs",
            "--out",
            out.to_str().expect("utf-8 path"),
            "--hosts",
            "0",
            "--validity-days",
            "30",
        ])
        .expect("parses");
        run(cli).expect("generates");
        let pem = std::fs::read(out.join("host-0.pem")).expect("cert");
        let ders: Vec<_> = rustls_pki_types::pem::PemObject::pem_slice_iter(&pem)
            .collect::<Result<Vec<rustls_pki_types::CertificateDer<'static>>, _>>()
            .expect("pem");
        let (_, cert) = x509_parser::parse_x509_certificate(&ders[0]).expect("x509");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let days = (cert.validity().not_after.timestamp() - now) / 86_400;
        assert!((29..=30).contains(&days), "{days}");
    }

    #[test]
    fn status_names_a_host_holding_another_hosts_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = config_in(dir.path(), "certs");
        certs_for_config(&path, false, &Default::default()).expect("generates");
        let config = ClusterConfig::load(&path).expect("valid");
        assert!(certificate_problems(&config).is_empty());
        // Host 1 gets host 0's certificate and key.
        let certs = dir.path().join("certs");
        std::fs::copy(certs.join("host-0.pem"), certs.join("host-1.pem")).expect("copy");
        std::fs::copy(certs.join("host-0.key"), certs.join("host-1.key")).expect("copy");
        let status = render_status(&config, &path);
        let row = status.lines().last().expect("host 1's row");
        assert!(
            row.starts_with("1 ") && row.ends_with("cert is host-0's"),
            "{status}"
        );
        let problems = certificate_problems(&config);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("host-1's certificate") && problems[0].contains("is host-0's")
        );
    }

    #[test]
    fn status_names_an_expired_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = config_in(dir.path(), "certs");
        let config = ClusterConfig::load(&path).expect("valid");
        let now = certs::CertOptions {
            host_validity: Duration::ZERO,
        };
        certs::generate_with(
            &dir.path().join("certs"),
            "t",
            &[HostId(0), HostId(1)],
            &now,
        )
        .expect("generates");
        // Valid until this very second.
        std::thread::sleep(Duration::from_millis(1100));
        let status = render_status(&config, &path);
        assert!(
            status
                .lines()
                .skip(4)
                .all(|l| l.ends_with("  cert expired")),
            "{status}"
        );
        let problems = certificate_problems(&config);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("expired") && problems[0].contains("--force"));
    }

    #[test]
    fn errors_show_each_cause_once() {
        let e = anyhow::Error::from(crate::launch::LaunchError::Spawn {
            program: "/nonexistent".into(),
            host: HostId(0),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
        let text = render_error(&e);
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
        let e = e.context("launching");
        assert!(render_error(&e).starts_with("launching: cannot start"));
    }

    #[test]
    fn host_counts_are_pluralised() {
        assert_eq!(hosts_phrase(1), "1 host");
        assert_eq!(hosts_phrase(0), "0 hosts");
        assert_eq!(hosts_phrase(4), "4 hosts");
    }
}
