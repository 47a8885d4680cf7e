//! Every validation rule of the cluster configuration, with the exact error it gives.

use std::path::Path;
use std::time::Duration;

use fragmenta_config::{ClusterConfig, ConfigError};
use fragmenta_job::HostId;

const BASE: &str = r#"[cluster]
name = "test"
ca_cert = "certs/ca.pem"
heartbeat_interval_ms = 100
failure_timeout_ms = 1000

[[host]]
id = 0
address = "127.0.0.1:47100"
cores = 2
cert = "certs/host-0.pem"
key = "certs/host-0.key"

[[host]]
id = 1
address = "127.0.0.1:47101"
sub_cluster = 1
cores = 4
gpus = 2
cert = "certs/host-1.pem"
key = "certs/host-1.key"

[[host]]
id = 5
address = "node-c.example:47100"
cores = 8
cert = "certs/host-5.pem"
key = "certs/host-5.key"
"#;

/// `BASE` with `old` (which must occur exactly once) replaced by `new`.
fn with(old: &str, new: &str) -> String {
    assert_eq!(
        BASE.matches(old).count(),
        1,
        "{old:?} must occur once in BASE"
    );
    BASE.replacen(old, new, 1)
}

fn load(text: &str) -> Result<ClusterConfig, ConfigError> {
    ClusterConfig::from_toml_str(text, "/cfg")
}

fn invalid(field: &str, reason: &str) -> Result<ClusterConfig, ConfigError> {
    Err(ConfigError::InvalidField {
        field: field.to_owned(),
        reason: reason.to_owned(),
    })
}

#[test]
fn valid_config_loads_with_typed_values_and_defaults() {
    let c = load(BASE).expect("BASE is valid");
    assert_eq!(c.name(), "test");
    assert_eq!(c.ca_cert(), Path::new("/cfg/certs/ca.pem"));
    assert_eq!(c.min_hosts(), 3, "default min_hosts = number of hosts");
    assert_eq!(c.min_hosts_timeout(), Duration::from_secs(30));
    assert_eq!(c.heartbeat_interval(), Duration::from_millis(100));
    assert_eq!(c.failure_timeout(), Duration::from_secs(1));
    assert_eq!(c.max_frame_bytes(), None);
    assert!(
        c.same_machine(),
        "shared memory between hosts of a machine by default"
    );
    let ids: Vec<HostId> = c.host_ids().collect();
    assert_eq!(ids, [HostId(0), HostId(1), HostId(5)]);
    let h1 = c.host(HostId(1)).expect("host 1");
    assert_eq!(h1.address(), "127.0.0.1:47101");
    assert_eq!((h1.sub_cluster(), h1.cores(), h1.gpus()), (1, 4, 2));
    assert_eq!(h1.cert(), Path::new("/cfg/certs/host-1.pem"));
    assert_eq!(h1.key(), Path::new("/cfg/certs/host-1.key"));
    assert_eq!(
        h1.socket_addr(),
        Ok("127.0.0.1:47101".parse().expect("addr"))
    );
    let h0 = c.host(HostId(0)).expect("host 0");
    assert_eq!((h0.sub_cluster(), h0.gpus()), (0, 0), "defaults");
    assert_eq!(c.host_index(HostId(5)), Some(2));
    assert_eq!(c.host(HostId(2)), None);
}

#[test]
fn cores_default_to_available_parallelism() {
    let c = load(&with("cores = 8\n", "")).expect("valid");
    let n = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    assert_eq!(c.host(HostId(5)).map(|h| h.cores()), Some(n));
}

#[test]
fn round_trips_through_toml() {
    let c = load(&with(
        "failure_timeout_ms = 1000",
        "failure_timeout_ms = 1000\nmax_frame_bytes = 4096\nmin_hosts = 2\nsame_machine = false",
    ))
    .expect("valid");
    assert!(!c.same_machine());
    let text = c.to_toml_string();
    assert!(
        text.contains("ca_cert = \"certs/ca.pem\""),
        "paths stay relative:\n{text}"
    );
    assert_eq!(load(&text), Ok(c));
}

#[test]
fn load_reads_a_file_and_resolves_paths_against_its_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, BASE).expect("write");
    let c = ClusterConfig::load(&path).expect("valid");
    assert_eq!(c.ca_cert(), dir.path().join("certs/ca.pem"));
    assert_eq!(c.base_dir(), dir.path());
}

#[test]
fn load_names_an_unreadable_file() {
    let err = ClusterConfig::load("/nonexistent/c.toml").expect_err("no such file");
    assert!(
        matches!(&err, ConfigError::Read { path, kind: std::io::ErrorKind::NotFound, .. }
            if path == Path::new("/nonexistent/c.toml")),
        "{err:?}"
    );
}

#[test]
fn empty_cluster_name() {
    assert_eq!(
        load(&with("name = \"test\"", "name = \"  \"")),
        invalid("cluster.name", "must not be empty")
    );
}

#[test]
fn empty_path() {
    assert_eq!(
        load(&with("key = \"certs/host-1.key\"", "key = \"\"")),
        invalid("host[1].key", "must name a file, got an empty string")
    );
}

#[test]
fn no_hosts() {
    let text = BASE.split("[[host]]").next().expect("cluster part");
    assert_eq!(
        load(text),
        invalid("host", "the cluster needs at least one [[host]] table")
    );
}

#[test]
fn duplicate_host_id() {
    assert_eq!(
        load(&with("id = 5", "id = 1")),
        invalid("host[2].id", "duplicate id 1, already used by host[1]")
    );
}

#[test]
fn negative_host_id() {
    assert_eq!(
        load(&with("id = 5", "id = -5")),
        invalid("host[2].id", "must be between 0 and 4294967294, got -5")
    );
}

#[test]
fn unassigned_marker_is_not_a_host_id() {
    // 4294967295 is `HostId::UNASSIGNED`: a host with it would run the fragments a job left
    // unassigned.
    assert_eq!(HostId::UNASSIGNED.0, 4294967295);
    let err = load(&with("id = 5", "id = 4294967295")).expect_err("reserved");
    assert_eq!(
        err,
        ConfigError::ReservedHostId {
            field: "host[2].id".into(),
            id: u32::MAX,
        }
    );
    assert!(err.to_string().contains("reserved"), "{err}");
    assert_eq!(
        load(&with("id = 5", "id = 4294967296")),
        invalid(
            "host[2].id",
            "must be between 0 and 4294967294, got 4294967296"
        )
    );
    assert!(load(&with("id = 5", "id = 4294967294")).is_ok());
}

#[test]
fn duplicate_address() {
    assert_eq!(
        load(&with("\"node-c.example:47100\"", "\"127.0.0.1:47100\"")),
        invalid(
            "host[2].address",
            "duplicate address \"127.0.0.1:47100\", already used by host[0]"
        )
    );
}

#[test]
fn malformed_addresses() {
    for bad in [
        "127.0.0.1",
        "127.0.0.1:99999",
        "node c:1",
        ":47100",
        "node-c.example:",
        "-x:1",
        "a..b:1",
    ] {
        assert_eq!(
            load(&with("\"node-c.example:47100\"", &format!("{bad:?}"))),
            invalid(
                "host[2].address",
                &format!("{bad:?} is neither ip:port, [ipv6]:port nor hostname:port")
            ),
            "address {bad:?}"
        );
    }
    assert_eq!(
        load(&with("\"127.0.0.1:47101\"", "\"127.0.0.1:0\"")),
        invalid("host[1].address", "\"127.0.0.1:0\": port must not be 0")
    );
}

#[test]
fn hostname_and_ipv6_addresses_are_accepted() {
    let c = load(&with("\"127.0.0.1:47101\"", "\"[::1]:47101\"")).expect("ipv6 is valid");
    assert_eq!(
        c.hosts()[1].socket_addr(),
        Ok("[::1]:47101".parse().expect("addr"))
    );
    let c = load(&with("\"node-c.example:47100\"", "\"localhost:47100\"")).expect("hostname");
    let resolved = c.hosts()[2].socket_addr().expect("localhost resolves");
    assert!(
        resolved.ip().is_loopback() && resolved.port() == 47100,
        "{resolved}"
    );
}

#[test]
fn zero_cores() {
    assert_eq!(
        load(&with("cores = 4", "cores = 0")),
        invalid("host[1].cores", "must be between 1 and 4294967295, got 0")
    );
}

#[test]
fn negative_gpus_and_sub_cluster() {
    assert_eq!(
        load(&with("gpus = 2", "gpus = -1")),
        invalid("host[1].gpus", "must be between 0 and 4294967295, got -1")
    );
    assert_eq!(
        load(&with("sub_cluster = 1", "sub_cluster = -1")),
        invalid(
            "host[1].sub_cluster",
            "must be between 0 and 4294967295, got -1"
        )
    );
}

#[test]
fn min_hosts_out_of_range() {
    for n in [0, 4] {
        assert_eq!(
            load(&with(
                "failure_timeout_ms = 1000",
                &format!("failure_timeout_ms = 1000\nmin_hosts = {n}")
            )),
            invalid(
                "cluster.min_hosts",
                &format!("must be between 1 and 3 (the number of hosts), got {n}")
            )
        );
    }
}

#[test]
fn heartbeat_must_be_below_failure_timeout() {
    assert_eq!(
        load(&with(
            "heartbeat_interval_ms = 100",
            "heartbeat_interval_ms = 1000"
        )),
        invalid(
            "cluster.heartbeat_interval_ms",
            "must be less than cluster.failure_timeout_ms (1000 ms), got 1000 ms"
        )
    );
}

#[test]
fn durations_must_be_positive() {
    assert_eq!(
        load(&with(
            "heartbeat_interval_ms = 100",
            "heartbeat_interval_ms = 0"
        )),
        invalid(
            "cluster.heartbeat_interval_ms",
            "must be > 0 milliseconds, got 0"
        )
    );
    assert_eq!(
        load(&with(
            "failure_timeout_ms = 1000",
            "failure_timeout_ms = -1"
        )),
        invalid(
            "cluster.failure_timeout_ms",
            "must be > 0 milliseconds, got -1"
        )
    );
    assert_eq!(
        load(&with(
            "failure_timeout_ms = 1000",
            "failure_timeout_ms = 1000\nmin_hosts_timeout_ms = 0"
        )),
        invalid(
            "cluster.min_hosts_timeout_ms",
            "must be > 0 milliseconds, got 0"
        )
    );
    assert_eq!(
        load(&with(
            "failure_timeout_ms = 1000",
            "failure_timeout_ms = 1000\nmax_frame_bytes = 0"
        )),
        invalid("cluster.max_frame_bytes", "must be > 0, got 0")
    );
}

#[test]
fn unknown_fields_are_named_with_their_line() {
    assert_eq!(
        load(&with("gpus = 2", "gpus = 2\ngpu = 1")),
        Err(ConfigError::UnknownField {
            field: "host[1].gpu".into(),
            line: 20
        })
    );
    assert_eq!(
        load(&with("name = \"test\"", "name = \"test\"\nnmae = \"x\"")),
        Err(ConfigError::UnknownField {
            field: "cluster.nmae".into(),
            line: 3
        })
    );
    assert_eq!(
        load(&format!("{BASE}[extra]\nx = 1\n")),
        Err(ConfigError::UnknownField {
            field: "extra".into(),
            line: 29
        })
    );
}

#[test]
fn missing_fields_are_named() {
    assert_eq!(
        load(&with("address = \"127.0.0.1:47101\"\n", "")),
        Err(ConfigError::MissingField {
            field: "host[1].address".into(),
            line: 14
        })
    );
    assert_eq!(
        load(&with("ca_cert = \"certs/ca.pem\"\n", "")),
        Err(ConfigError::MissingField {
            field: "cluster.ca_cert".into(),
            line: 1
        })
    );
}

#[test]
fn wrong_types_are_named_with_their_line() {
    assert_eq!(
        load(&with("cores = 4", "cores = \"four\"")),
        Err(ConfigError::WrongType {
            field: "host[1].cores".into(),
            line: 18,
            message: "invalid type: string \"four\", expected i64".into(),
        })
    );
    let err = load(&with(
        "failure_timeout_ms = 1000",
        "failure_timeout_ms = 1000\nsame_machine = \"yes\"",
    ))
    .expect_err("not a bool");
    assert!(
        matches!(&err, ConfigError::WrongType { field, .. } if field == "cluster.same_machine"),
        "{err:?}"
    );
    let err = load(&with("id = 5", "id = 99999999999999999999")).expect_err("too large");
    assert!(
        matches!(&err, ConfigError::WrongType { field, line: 24, .. } if field == "host[2].id"),
        "{err:?}"
    );
}

#[test]
fn syntax_errors_give_line_and_column() {
    let err = load(&with("cores = 4", "cores = ")).expect_err("syntax");
    assert!(
        matches!(
            err,
            ConfigError::Syntax {
                line: 18,
                column: 9,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("TOML syntax error at line 18, column 9"),
        "{err}"
    );
}

#[test]
fn check_files_names_the_first_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = ClusterConfig::from_toml_str(BASE, dir.path()).expect("valid");
    let err = c.check_files().expect_err("nothing exists");
    assert_eq!(
        err,
        ConfigError::MissingFile {
            field: "cluster.ca_cert".into(),
            path: dir.path().join("certs/ca.pem")
        }
    );
    assert!(
        err.to_string().contains("fragmenta certs --config"),
        "{err}"
    );
    std::fs::create_dir(dir.path().join("certs")).expect("mkdir");
    for f in [
        "ca.pem",
        "host-0.pem",
        "host-0.key",
        "host-1.pem",
        "host-5.pem",
        "host-5.key",
    ] {
        std::fs::write(dir.path().join("certs").join(f), "x").expect("write");
    }
    assert_eq!(
        c.check_files(),
        Err(ConfigError::MissingFile {
            field: "host[1].key".into(),
            path: dir.path().join("certs/host-1.key")
        })
    );
    std::fs::write(dir.path().join("certs/host-1.key"), "x").expect("write");
    assert_eq!(c.check_files(), Ok(()));
}
