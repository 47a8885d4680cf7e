//! Runs the two-process example the way a user would (cargo builds examples for `cargo test`).

#[test]
fn two_process_example_runs() {
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join("fastio_two_process");
    assert!(
        example.exists(),
        "example not built at {}",
        example.display()
    );
    let out = std::process::Command::new(&example).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("published \"example/matrix\""), "{stdout}");
    assert!(stdout.contains("[0.0, 1.0, 4.0, 9.0]"), "{stdout}");
    assert!(stdout.contains("ok: 16 values"), "{stdout}");
}
