//! `fragmenta pipeline check|run` as a user runs them: the real binary, the shipped passthrough
//! definition, operator processes sharing the host's Fast I/O context.

use std::path::{Path, PathBuf};
use std::process::Command;

const YAML: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crates/pipeline/pipelines/passthrough.yaml"
);
const REAL_NIFTI: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/nifti/avg152T1_LR_nifti.nii.gz"
);

fn fragmenta(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fragmenta"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn payload(dir: &Path) -> PathBuf {
    let real = PathBuf::from(REAL_NIFTI);
    if real.exists() {
        return real;
    }
    println!(
        "real NIfTI {} is absent: running on a generated volume",
        real.display()
    );
    let p = dir.join("generated.nii.gz");
    fragmenta::pipeline::passthrough::write_test_nifti(&p, [19, 13, 7]).unwrap();
    p
}

#[test]
fn check_accepts_the_shipped_passthrough_and_names_every_error_of_a_broken_one() {
    let (code, out, _) = fragmenta(&["pipeline", "check", YAML]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pipeline fastio-passthrough-dynamic-pipeline (api-version 0.5.0) with 3 operators is valid"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(YAML).unwrap().replacen(
        "    element-type: int32\n    shape: [4]\n  output:",
        "    element-type: int64\n    shape: [4]\n  output:",
        1,
    );
    std::fs::write(&broken, text).unwrap();
    let (code, _, err) = fragmenta(&["pipeline", "check", broken.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("1 error(s)"), "{err}");
    assert!(
        err.contains("operators[1].input[1].element-type (line 37), operator `fastio-to-npz`, port `segmentation_shape`: element-type mismatch: input is array of int64 [4], but output operators[0].output[1].element-type (line 21), operator `nifti-to-fastio`, port `segmentation_shape` is array of int32 [4]"),
        "{err}"
    );
}

#[test]
fn run_executes_the_passthrough_as_operator_processes() {
    let dir = tempfile::tempdir().unwrap();
    let payload = payload(dir.path());
    let out = dir.path().join("out");
    let (code, stdout, err) = fragmenta(&[
        "pipeline",
        "run",
        YAML,
        "--payload",
        payload.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    for op in [
        "nifti-to-fastio",
        "fastio-to-npz",
        "compare-original-to-output",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(op) && l.contains("Completed")),
            "{stdout}"
        );
    }
    let verdict = out.join("operators/compare-original-to-output/truth-val/comparison.txt");
    assert_eq!(std::fs::read_to_string(verdict).unwrap(), "true");
    assert!(out
        .join("operators/fastio-to-npz/numpy_npz/segmentation.npz")
        .is_file());
}

/// The built passthrough example (cargo builds examples for `cargo test`).
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join("passthrough");
    assert!(
        path.exists(),
        "example not built at {} (run `cargo test` or `cargo build --examples`)",
        path.display()
    );
    path
}

#[test]
fn the_passthrough_example_runs_alone_and_as_the_operator_binary_of_the_cli() {
    // Alone: a generated NIfTI, threads, then one process per operator.
    for args in [&[][..], &["--processes"][..]] {
        let out = Command::new(example()).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("truth-val") && text.trim_end().ends_with(": true"),
            "{text}"
        );
    }
    // A user's operator binary under `fragmenta pipeline run`.
    let dir = tempfile::tempdir().unwrap();
    let payload = payload(dir.path());
    let out = dir.path().join("out");
    let example = example();
    let (code, stdout, err) = fragmenta(&[
        "pipeline",
        "run",
        YAML,
        "--payload",
        payload.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--",
        example.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    let verdict = out.join("operators/compare-original-to-output/truth-val/comparison.txt");
    assert_eq!(std::fs::read_to_string(verdict).unwrap(), "true");
}
