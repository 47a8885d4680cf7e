//! Runs the scheduling-mode examples the way a user would: alone (the embedded one-host cluster)
//! and as four processes under `fragmenta launch -n 4` (cargo builds examples for `cargo test`).

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target folder")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "example not built at {} (run `cargo test` or `cargo build --examples`)",
        path.display()
    );
    path
}

/// Runs the command; returns its output after checking it succeeded.
fn run(command: &mut Command) -> String {
    let out = command.output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

fn launch4(name: &str) -> String {
    run(Command::new(env!("CARGO_BIN_EXE_fragmenta"))
        .args(["launch", "-n", "4", "--"])
        .arg(example(name)))
}

#[test]
fn user_defined_example_computes_each_shard_where_it_lives() {
    let alone = run(&mut Command::new(example("user_defined")));
    assert!(
        alone.contains("host-0 holds shards [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]"),
        "{alone}"
    );
    assert!(alone.contains("12 of 12 shards on 1 host(s)"), "{alone}");

    let four = launch4("user_defined");
    assert!(four.contains("12 of 12 shards on 4 host(s)"), "{four}");
    // Shard s lives on host s mod 4, and the table shows it computed there.
    for h in 0..4 {
        let shards: Vec<String> = (h..12).step_by(4).map(|s| s.to_string()).collect();
        let line = format!("[host-{h}] host-{h} holds shards [{}]", shards.join(", "));
        assert!(four.contains(&line), "missing {line:?} in\n{four}");
    }
    for s in 0..12 {
        let row = four
            .lines()
            .find(|l| {
                l.strip_prefix("[host-0] ")
                    .and_then(|r| r.split_whitespace().next())
                    == Some(&s.to_string())
            })
            .unwrap_or_else(|| panic!("no row for shard {s} in\n{four}"));
        assert!(
            row.contains(&format!(" host-{} ", s % 4)),
            "shard {s} computed away from its data: {row}"
        );
    }
    // Identical data, identical statistics, whatever the number of hosts.
    let total = |out: &str| {
        out.lines()
            .find(|l| l.contains("of 12 shards"))
            .and_then(|l| l.split(": ").nth(1))
            .map(str::to_owned)
    };
    assert_eq!(total(&alone), total(&four));
}

#[test]
fn once_per_host_example_reports_every_host() {
    let alone = run(&mut Command::new(example("once_per_host")));
    assert!(alone.contains("host-0*"), "{alone}");
    assert!(alone.contains("no remote host"), "{alone}");

    let four = launch4("once_per_host");
    for h in 0..4 {
        let mark = if h == 0 { "*" } else { " " };
        let row = format!("[host-0] host-{h}{mark}");
        assert!(four.contains(&row), "missing {row:?} in\n{four}");
    }
    assert!(four.contains("3 of 3 remote hosts answered"), "{four}");
}
