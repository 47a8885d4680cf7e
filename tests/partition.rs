//! A network partition with real processes: four hosts, each in its own network namespace,
//! joined by veth pairs to a bridge. Mid-job, one host's link is cut (its veth set down): the
//! job completes with correct results on the others, every other host declares the cut host
//! dead, and the cut host, alone, reports its primary lost.
//!
//! Needs iproute2 (`ip`) and the right to create network namespaces (root, or CAP_NET_ADMIN and
//! CAP_SYS_ADMIN); where either is missing the test prints why and skips. Namespaces, links and
//! processes are removed at the end, also when the test fails.
//!
//! A custom harness (no libtest): `main` is either the scenario runner or, with
//! `FRAGMENTA_TEST_HOST` set, a host program (see `procs`).

mod common;
mod procs;

use procs::{ms_since, Outcome, Procs};
use std::process::Command;
use std::time::Duration;

/// A guard against hangs (a test failure), never a performance assertion.
const LIMIT: Duration = Duration::from_secs(90);
const HOSTS: u32 = 4;

/// Runs `ip ARGS`; its error output on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces, bridge and veth pairs of one run; removed on drop.
struct Netns {
    tag: String,
    namespaces: Vec<String>,
    links: Vec<String>,
    bridge: Option<String>,
}

impl Netns {
    fn ns(&self, host: u32) -> String {
        format!("{}h{host}", self.tag)
    }

    /// The bridge side of `host`'s veth pair.
    fn link(&self, host: u32) -> String {
        format!("{}v{host}", self.tag)
    }

    fn address(host: u32) -> String {
        format!("10.213.0.{}", host + 1)
    }

    /// Creates a namespace per host, each with `eth0` (10.213.0.<host+1>/24) on a veth pair
    /// whose other end is on a bridge in this namespace.
    fn setup(&mut self) -> Result<(), String> {
        let bridge = format!("{}br", self.tag);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        self.bridge = Some(bridge.clone());
        ip(&["link", "set", &bridge, "up"])?;
        for h in 0..HOSTS {
            let ns = self.ns(h);
            ip(&["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            let (outer, inner) = (self.link(h), format!("{}p{h}", self.tag));
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            self.links.push(outer.clone());
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["-n", &ns, "link", "set", &inner, "name", "eth0"])?;
            let cidr = format!("{}/24", Self::address(h));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["link", "set", &outer, "master", &bridge])?;
            ip(&["link", "set", &outer, "up"])?;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes the other; a namespace goes once the last
        // process in it is gone.
        for link in &self.links {
            if let Err(e) = ip(&["link", "del", link]) {
                eprintln!("cleanup: {e}");
            }
        }
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
        if let Some(b) = &self.bridge {
            if let Err(e) = ip(&["link", "del", b]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Why this environment cannot run the test, if it cannot.
fn unavailable() -> Option<String> {
    match Command::new("ip").arg("-V").output() {
        Err(e) => return Some(format!("iproute2 is not installed (`ip`: {e})")),
        Ok(o) if !o.status.success() => return Some("`ip -V` failed".into()),
        Ok(_) => {}
    }
    // Creating a namespace tells whether this user may (root, or the capabilities).
    let probe = format!("frprobe{}", std::process::id());
    match ip(&["netns", "add", &probe]) {
        Ok(()) => {
            let _ = ip(&["netns", "del", &probe]);
            None
        }
        Err(e) => Some(format!("cannot create a network namespace here: {e}")),
    }
}

/// Issue #5 item 8: cut one host's link mid-job.
fn cut_link_mid_job() -> Result<Outcome, String> {
    if let Some(why) = unavailable() {
        return Ok(Outcome::Skipped(why));
    }
    let mut net = Netns {
        tag: format!("fr{}", std::process::id() % 1_000_000),
        namespaces: Vec::new(),
        links: Vec::new(),
        bridge: None,
    };
    if let Err(e) = net.setup() {
        return Ok(Outcome::Skipped(format!(
            "cannot build the namespaces and links: {e}"
        )));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let addrs: Vec<String> = (0..HOSTS)
        .map(|h| format!("{}:{}", Netns::address(h), 47000 + h))
        .collect();
    let config = procs::write_config(
        dir.path(),
        &addrs,
        "min_hosts = 4\nheartbeat_interval_ms = 100\nfailure_timeout_ms = 1000\nmin_hosts_timeout_ms = 60000",
    )?;
    // Declared after `net`: dropped (processes killed) before the namespaces go.
    let mut p = Procs::new(config);
    let r = (|| {
        for h in 0..HOSTS {
            let wrapper: Vec<String> = ["ip", "netns", "exec", &net.ns(h)]
                .iter()
                .map(|s| s.to_string())
                .collect();
            p.spawn(h, &wrapper)?;
        }
        for h in 0..HOSTS {
            p.expect(h, "joined ", LIMIT)?;
        }
        let cut = 3;
        p.send(0, &format!("chaos 0 240 12 300 {cut}"))?;
        p.expect(0, "at 0 ", LIMIT)?;
        let t = std::time::SystemTime::now();
        ip(&["link", "set", &net.link(cut), "down"])?;
        let done = p.expect(0, "job 0 ", LIMIT)?;
        println!("    job with host {cut} cut off at 30%: {}", done.text);
        if !done.text.starts_with("job 0 ok") {
            return Err(done.text);
        }
        for h in 0..cut {
            let down = p.expect(h, &format!("down {cut} "), LIMIT)?;
            println!(
                "    host {h} declared host {cut} dead {:.0} ms after the cut",
                ms_since(t, &down)?
            );
        }
        let alone = p.expect(cut, "down 0 ", LIMIT)?;
        println!(
            "    host {cut} declared host 0 dead {:.0} ms after the cut",
            ms_since(t, &alone)?
        );
        let serve = p.expect(cut, "serve ", LIMIT)?;
        if !serve.text.contains("primary host host-0 was lost") {
            return Err(format!("host {cut}: {:?}", serve.text));
        }
        // The rest of the cluster goes on without it.
        p.send(0, "chaos 1 120 5 1000 -")?;
        let done = p.expect(0, "job 1 ", LIMIT)?;
        println!("    next job: {}", done.text);
        let used = done
            .text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("used="))
            .unwrap_or("");
        if !done.text.starts_with("job 1 ok") || used.split(',').any(|h| h == "3") {
            return Err(done.text);
        }
        Ok(Outcome::Passed)
    })();
    let r = r.map_err(|e| format!("{e}\n--- host output ---\n{}\n---", p.log()));
    drop(p);
    drop(net);
    r
}

fn main() {
    if procs::is_host() {
        procs::host_main();
    }
    procs::run_scenarios("partition", &[("cut_link_mid_job", cut_link_mid_job)]);
}
