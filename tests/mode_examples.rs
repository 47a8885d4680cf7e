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

#[test]
fn word_count_example_counts_the_same_embedded_and_on_four_hosts() {
    // A text whose counts are known: case folds, any whitespace separates.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("text.txt");
    let mut text = String::new();
    for i in 0..500 {
        let first = if i % 5 == 0 { "Alpha" } else { "alpha" };
        text.push_str(&format!("{first} beta  beta\tgamma gamma gamma\n"));
    }
    std::fs::write(&file, text).expect("write the text");
    let expected = [
        "3000 words, 3 distinct, in 500 lines",
        "  gamma: 1500",
        "  beta: 1000",
        "  alpha: 500",
    ];

    let alone = run(Command::new(example("word_count")).arg(&file));
    for line in expected {
        assert!(
            alone.lines().any(|l| l == line),
            "missing {line:?} in\n{alone}"
        );
    }
    assert!(
        alone.contains("16 of 16 fragments done on 1 host(s)"),
        "{alone}"
    );

    let four = run(Command::new(env!("CARGO_BIN_EXE_fragmenta"))
        .args(["launch", "-n", "4", "--"])
        .arg(example("word_count"))
        .arg(&file));
    for line in expected {
        let line = format!("[host-0] {line}");
        assert!(
            four.lines().any(|l| l == line),
            "missing {line:?} in\n{four}"
        );
    }
    let summary = four
        .lines()
        .find(|l| l.contains("16 of 16 fragments done on 4 host(s)"))
        .unwrap_or_else(|| panic!("no complete report on 4 hosts in\n{four}"));
    // The job type is registered by its attribute alone: the other hosts ran fragments.
    assert!(
        (1..4).any(|h| summary.contains(&format!("host-{h}: "))
            && !summary.contains(&format!("host-{h}: 0"))),
        "no fragment ran on another host: {summary}"
    );

    // The generated text: the same counts, whatever the number of hosts.
    let counts = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| l.strip_prefix("[host-0] ").unwrap_or(l).to_owned())
            .filter(|l| l.contains("words,") || l.starts_with("  "))
            .collect()
    };
    let alone = run(&mut Command::new(example("word_count")));
    let four = launch4("word_count");
    assert_eq!(counts(&alone).len(), 6, "{alone}");
    assert_eq!(counts(&alone), counts(&four), "{alone}\n{four}");
}

#[test]
fn the_readmes_first_job_is_the_squares_example_and_runs_both_ways() {
    let readme = include_str!("../README.md");
    let section = readme
        .split("## A job in 20 lines")
        .nth(1)
        .expect("README section");
    let code = section
        .split("```rust\n")
        .nth(1)
        .and_then(|s| s.split("```\n").next())
        .expect("README code block");
    let source = include_str!("../examples/squares.rs");
    let body: String = source
        .lines()
        .skip_while(|l| l.starts_with("//!") || l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        body, code,
        "examples/squares.rs differs from the README's first job"
    );

    // Sum of i² for i < 1000.
    let line = "1000 fragments done, sum 332833500";
    let alone = run(&mut Command::new(example("squares")));
    assert!(alone.contains(line), "{alone}");
    let four = launch4("squares");
    assert!(four.contains(&format!("[host-0] {line}")), "{four}");
}
