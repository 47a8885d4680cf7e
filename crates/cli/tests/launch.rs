//! `launch()` with real child processes (`sh -c` scripts).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fragmenta_cli::{launch, LaunchError, LaunchOptions};
use fragmenta_config::{resolve_host_id_with, ClusterConfig, ConfigError, HOST_ID_ENV};
use fragmenta_job::HostId;

/// An output sink the test can read afterwards.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

/// `n` hosts running `sh -c script`, with `$D` = `dir`; returns options and captured output.
fn sh(n: usize, script: &str, dir: &Path) -> (LaunchOptions, Captured, Captured) {
    let full = format!("D='{}'; {script}", dir.display());
    let mut opts = LaunchOptions::new(n, "sh", ["-c", full.as_str()]);
    let (out, err) = (Captured::default(), Captured::default());
    opts.stdout = Box::new(out.clone());
    opts.stderr = Box::new(err.clone());
    (opts, out, err)
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines.sort();
    lines
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

fn read_pid(path: PathBuf) -> u32 {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path:?} = {text:?}: {e}"))
}

fn wait_until_dead(pids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    while !pids.iter().all(|&p| is_dead(p)) {
        assert!(
            Instant::now() < deadline,
            "still alive: {:?}",
            pids.iter().filter(|&&p| !is_dead(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal base64 decoder, for reading PEM certificates.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .map(value)
        .collect();
    let mut out = Vec::new();
    for chunk in digits.chunks(4) {
        let mut acc = 0u32;
        for (i, d) in chunk.iter().enumerate() {
            acc |= u32::from(*d) << (18 - 6 * i);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[test]
fn output_lines_are_prefixed_with_the_host_and_never_mixed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let long = "x".repeat(3000);
    let script = format!(
        "echo \"hello from $FRAGMENTA_HOST_ID\"; echo \"oops $FRAGMENTA_HOST_ID\" >&2; \
         i=0; while [ $i -lt 200 ]; do echo \"$FRAGMENTA_HOST_ID:{long}\"; i=$((i+1)); done; \
         printf 'no newline'"
    );
    let (opts, out, err) = sh(3, &script, dir.path());
    assert_eq!(launch(opts).expect("launches"), 0);
    let out = out.text();
    let mut expected = Vec::new();
    for id in 0..3 {
        expected.push(format!("[host-{id}] hello from {id}"));
        expected.push(format!("[host-{id}] no newline"));
        for _ in 0..200 {
            expected.push(format!("[host-{id}] {id}:{long}"));
        }
    }
    expected.sort();
    assert_eq!(sorted_lines(&out), expected);
    assert_eq!(
        sorted_lines(&err.text()),
        ["[host-0] oops 0", "[host-1] oops 1", "[host-2] oops 2"]
    );
}

#[test]
fn each_child_sees_its_host_id_and_a_config_with_valid_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = "cp -r \"$(dirname \"$FRAGMENTA_CONFIG\")\" \"$D/copy-$FRAGMENTA_HOST_ID\" && \
                  echo \"$FRAGMENTA_CONFIG\" > \"$D/path-$FRAGMENTA_HOST_ID\"";
    let (mut opts, _, err) = sh(3, script, dir.path());
    opts.cores = Some(2);
    assert_eq!(launch(opts).expect("launches"), 0, "stderr: {}", err.text());
    for id in 0..3u32 {
        let copy = dir.path().join(format!("copy-{id}"));
        let seen_path =
            std::fs::read_to_string(dir.path().join(format!("path-{id}"))).expect("path");
        let file_name = Path::new(seen_path.trim())
            .file_name()
            .expect("file name")
            .to_owned();
        let config = ClusterConfig::load(copy.join(&file_name)).expect("child's config is valid");
        assert_eq!(
            config.host_ids().collect::<Vec<_>>(),
            [HostId(0), HostId(1), HostId(2)]
        );
        assert!(config.name().starts_with("launch-"), "{}", config.name());
        assert!(config.hosts().iter().all(|h| h.cores() == 2));
        let addrs: Vec<_> = config
            .hosts()
            .iter()
            .map(|h| h.socket_addr().expect("addr"))
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        config.check_files().expect("cert files exist");
        // FRAGMENTA_HOST_ID as the child saw it selects this host.
        let me = resolve_host_id_with(&config, None, |v| {
            (v == HOST_ID_ENV).then(|| id.to_string())
        });
        assert_eq!(me, Ok(HostId(id)));
        // The certificate really is this host's.
        let host = config.host(HostId(id)).expect("host");
        let pem = std::fs::read_to_string(host.cert()).expect("cert");
        let der = base64(&pem_body(&pem));
        assert_eq!(
            fragmenta_net::certs::host_id_from_cert(&der),
            Ok(HostId(id))
        );
        // The launcher removed its temporary folder.
        assert!(
            !Path::new(seen_path.trim()).exists(),
            "{seen_path} left behind"
        );
    }
}

#[test]
fn exit_status_is_the_initiators() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (opts, ..) = sh(
        3,
        "if [ \"$FRAGMENTA_HOST_ID\" = 0 ]; then exit 3; fi; exit 0",
        dir.path(),
    );
    assert_eq!(launch(opts).expect("launches"), 3);
    // Another host failing after the initiator succeeded does not change its status. Host 1
    // fails only once the launcher has reaped the initiator (a zombie still answers `kill -0`),
    // so the launcher saw the initiator's success first: a failure seen earlier stops everyone
    // (the initiator then reports SIGTERM), which is a different case.
    let (opts, ..) = sh(
        2,
        "if [ \"$FRAGMENTA_HOST_ID\" = 0 ]; then echo $$ > \"$D/init-pid\"; exit 0; fi; \
         while [ ! -s \"$D/init-pid\" ]; do sleep 0.01; done; \
         while kill -0 \"$(cat \"$D/init-pid\")\" 2>/dev/null; do sleep 0.01; done; exit 5",
        dir.path(),
    );
    assert_eq!(launch(opts).expect("launches"), 0);
    // Killed by a signal: 128 + signal.
    let (opts, ..) = sh(
        2,
        "if [ \"$FRAGMENTA_HOST_ID\" = 0 ]; then kill -9 $$; fi; exit 0",
        dir.path(),
    );
    assert_eq!(launch(opts).expect("launches"), 137);
}

#[test]
fn a_dying_host_stops_all_others_and_their_descendants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = "case $FRAGMENTA_HOST_ID in \
          0) echo $$ > \"$D/pid-0\"; exec sleep 60 ;; \
          1) sleep 60 & echo $! > \"$D/grandchild\"; echo $$ > \"$D/pid-1\"; wait ;; \
          2) while [ ! -s \"$D/pid-0\" ] || [ ! -s \"$D/pid-1\" ]; do sleep 0.05; done; \
             kill -9 $$ ;; \
        esac";
    let (opts, _, err) = sh(3, script, dir.path());
    let start = Instant::now();
    let code = launch(opts).expect("launches");
    let took = start.elapsed();
    assert_eq!(
        code,
        128 + libc::SIGTERM,
        "host 0 was stopped by SIGTERM; stderr: {}",
        err.text()
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        err.text()
            .contains("[launch] host-2 was killed by signal 9; stopping the other hosts"),
        "{}",
        err.text()
    );
    let pids = ["pid-0", "pid-1", "grandchild"].map(|f| read_pid(dir.path().join(f)));
    wait_until_dead(&pids, Duration::from_secs(2));
}

#[test]
fn after_the_initiator_succeeds_others_get_the_grace_period_then_are_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = "case $FRAGMENTA_HOST_ID in \
          0) while [ ! -s \"$D/pid-2\" ]; do sleep 0.05; done; exit 0 ;; \
          1) sleep 0.3; echo bye ;; \
          2) trap '' TERM; echo $$ > \"$D/pid-2\"; while true; do sleep 0.05; done ;; \
        esac";
    let (mut opts, out, _) = sh(3, script, dir.path());
    opts.grace = Duration::from_millis(700);
    let start = Instant::now();
    assert_eq!(launch(opts).expect("launches"), 0);
    let took = start.elapsed();
    // Host 1 finished by itself within the grace period; host 2 ignored SIGTERM and was killed
    // after two grace periods (one to exit by itself, one after SIGTERM).
    assert_eq!(out.text(), "[host-1] bye\n");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    wait_until_dead(
        &[read_pid(dir.path().join("pid-2"))],
        Duration::from_secs(1),
    );
}

#[test]
fn launch_with_a_config_uses_its_first_hosts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = [HostId(7), HostId(3), HostId(9)];
    fragmenta_net::certs::generate(&dir.path().join("certs"), "c", &ids).expect("certs");
    let mut text = String::from("[cluster]\nname = \"c\"\nca_cert = \"certs/ca.pem\"\n");
    for (i, id) in ids.iter().enumerate() {
        text.push_str(&format!(
            "[[host]]\nid = {0}\naddress = \"127.0.0.1:{1}\"\ncert = \"certs/host-{0}.pem\"\nkey = \"certs/host-{0}.key\"\n",
            id.0,
            47200 + i
        ));
    }
    let config = dir.path().join("c.toml");
    std::fs::write(&config, text).expect("write");

    let (mut opts, out, _) = sh(
        2,
        "echo \"$FRAGMENTA_HOST_ID $FRAGMENTA_CONFIG\"",
        dir.path(),
    );
    opts.config = Some(config.clone());
    assert_eq!(launch(opts).expect("launches"), 0);
    let config_text = config.display();
    assert_eq!(
        sorted_lines(&out.text()),
        [
            format!("[host-3] 3 {config_text}"),
            format!("[host-7] 7 {config_text}")
        ]
    );

    let (mut opts, ..) = sh(4, "true", dir.path());
    opts.config = Some(config.clone());
    assert!(matches!(
        launch(opts),
        Err(LaunchError::TooManyHosts {
            requested: 4,
            available: 3,
            ..
        })
    ));

    let (mut opts, ..) = sh(1, "true", dir.path());
    opts.config = Some(config.clone());
    opts.cores = Some(1);
    assert!(matches!(launch(opts), Err(LaunchError::CoresWithConfig)));

    std::fs::remove_file(dir.path().join("certs/host-3.key")).expect("rm");
    let (mut opts, ..) = sh(1, "true", dir.path());
    opts.config = Some(config);
    match launch(opts) {
        Err(LaunchError::Config(ConfigError::MissingFile { field, .. })) => {
            assert_eq!(field, "host[1].key")
        }
        other => panic!("expected a missing file error, got {other:?}"),
    }
}

#[test]
fn bad_arguments_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut opts, ..) = sh(0, "true", dir.path());
    assert!(matches!(launch(opts), Err(LaunchError::NoHosts)));
    (opts, ..) = sh(2, "true", dir.path());
    opts.program = "/nonexistent/program".into();
    assert!(matches!(
        launch(opts),
        Err(LaunchError::Spawn {
            host: HostId(0),
            ..
        })
    ));
}

/// Env var that turns [`launcher_process_helper`] into a real launcher process.
const HELPER_DIR: &str = "FRAGMENTA_TEST_LAUNCHER_DIR";

/// Not a test by itself: run by [`sigint_to_the_launcher_stops_all_children`] in a child
/// process of this test binary, where it launches three hosts that sleep and exits with the
/// launcher's status. Without the variable it does nothing.
#[test]
fn launcher_process_helper() {
    let Some(dir) = std::env::var_os(HELPER_DIR) else {
        return;
    };
    let script = "if [ \"$FRAGMENTA_HOST_ID\" = 1 ]; then sleep 60 & echo $! > \"$D/grandchild\"; fi; \
                  echo \"$FRAGMENTA_CONFIG\" > \"$D/config-path\"; echo $$ > \"$D/pid-$FRAGMENTA_HOST_ID.tmp\"; mv \"$D/pid-$FRAGMENTA_HOST_ID.tmp\" \"$D/pid-$FRAGMENTA_HOST_ID\"; \
                  exec sleep 60";
    let (mut opts, ..) = sh(3, script, Path::new(&dir));
    opts.stdout = Box::new(std::io::stdout());
    opts.stderr = Box::new(std::io::stderr());
    let code = launch(opts).expect("launches");
    std::process::exit(code);
}

/// Starts [`launcher_process_helper`] as a separate launcher process, waits until its three
/// hosts run, sends it `signal`, and returns its exit status, its stderr, the hosts' pids and
/// the pid of a grandchild (a background process of host 1).
fn signal_a_launcher_process(
    signal: libc::c_int,
) -> (std::process::ExitStatus, String, [u32; 3], u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut launcher = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "launcher_process_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_DIR, dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("launcher.err")).expect("stderr file"))
        .spawn()
        .expect("spawn launcher");
    let files = ["pid-0", "pid-1", "pid-2", "grandchild"].map(|f| dir.path().join(f));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !files.iter().all(|f| f.exists()) {
        if Instant::now() > deadline {
            let _ = launcher.kill();
            panic!("children did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let [p0, p1, p2, grandchild] = files.map(read_pid);
    assert!(
        [p0, p1, p2, grandchild].iter().all(|&p| !is_dead(p)),
        "children run before the signal"
    );

    let launcher_pid = libc::pid_t::try_from(launcher.id()).expect("pid");
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(launcher_pid, signal) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = launcher.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = launcher.kill();
            panic!("launcher did not exit after signal {signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut notes = std::fs::read_to_string(dir.path().join("launcher.err")).expect("stderr");
    if signal == libc::SIGKILL {
        // The launcher could not remove its temporary folder: do it for it.
        let config = std::fs::read_to_string(dir.path().join("config-path")).expect("config path");
        let temp = Path::new(config.trim()).parent().expect("temp folder");
        assert!(temp.join("certs/ca.pem").is_file(), "{temp:?}");
        std::fs::remove_dir_all(temp).expect("remove the launcher's temp folder");
        notes.push_str("(temp folder removed by the test)");
    }
    (status, notes, [p0, p1, p2], grandchild)
}

#[test]
fn sigint_to_the_launcher_stops_all_children() {
    let (status, notes, hosts, grandchild) = signal_a_launcher_process(libc::SIGINT);
    assert!(
        notes.contains("[launch] received signal 2; stopping all hosts"),
        "{notes}"
    );
    // Host 0 was stopped with SIGTERM: 128 + 15.
    assert_eq!(status.code(), Some(143), "{notes}");
    wait_until_dead(&hosts, Duration::from_secs(2));
    wait_until_dead(&[grandchild], Duration::from_secs(2));
}

#[test]
fn sigterm_to_the_launcher_stops_all_children() {
    let (status, notes, hosts, grandchild) = signal_a_launcher_process(libc::SIGTERM);
    assert!(
        notes.contains("[launch] received signal 15; stopping all hosts"),
        "{notes}"
    );
    assert_eq!(status.code(), Some(143), "{notes}");
    wait_until_dead(&hosts, Duration::from_secs(2));
    wait_until_dead(&[grandchild], Duration::from_secs(2));
}

#[test]
fn hosts_die_with_a_launcher_killed_by_sigkill() {
    use std::os::unix::process::ExitStatusExt;
    let (status, _, hosts, grandchild) = signal_a_launcher_process(libc::SIGKILL);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // The hosts themselves die with their launcher (Linux parent-death signal).
    let dead_in_time = std::panic::catch_unwind(|| wait_until_dead(&hosts, Duration::from_secs(2)));
    // A host's own background process is out of reach once the launcher is gone: clean up.
    for pid in hosts
        .into_iter()
        .chain([grandchild])
        .filter(|&p| !is_dead(p))
    {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: these pids were written by processes this test started, moments ago.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    assert!(
        dead_in_time.is_ok(),
        "hosts outlived their SIGKILLed launcher"
    );
}
