//! Hostlist expansion against the real `scontrol show hostnames`, where Slurm is installed
//! (skipped with a printed reason otherwise); the fixed cases are in the library's unit tests.

use fragmenta_config::hostlist::expand;

const CASES: &[&str] = &[
    "n[1-2]",
    "node[001-003,7]",
    "rack[1-2]-node[01-02]",
    "login1,c[8-10]",
    "n1,n1",
    "n[08-10]",
    "n[9-011]",
    "n[01-1]",
    "n,,m",
    "n1 n2",
    "gpu07",
    "a[1-3]-b[7,9]-c[0-1]",
    "n[0-999]",
];

/// Expressions both refuse (scontrol prints "Invalid hostlist").
const INVALID: &[&str] = &["a[1-2]b", "n[3-1]", "x[]", "n[a-b]", "n[1-2]]", "n[1-2,]"];

fn scontrol(expr: &str) -> Option<std::process::Output> {
    std::process::Command::new("scontrol")
        .args(["show", "hostnames", expr])
        .output()
        .ok()
}

#[test]
fn matches_scontrol_show_hostnames() {
    match scontrol("n1") {
        Some(out) if out.status.success() => {}
        Some(out) => {
            println!(
                "skipped: scontrol cannot run here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        None => {
            println!("skipped: scontrol is not installed");
            return;
        }
    }
    for expr in CASES {
        let out = scontrol(expr).expect("scontrol ran before");
        let theirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(expand(expr).expect(expr), theirs, "{expr}");
    }
    for expr in INVALID {
        let out = scontrol(expr).expect("scontrol ran before");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("Invalid hostlist"),
            "scontrol on {expr}: {text}"
        );
        assert!(expand(expr).is_err(), "{expr}");
    }
}
