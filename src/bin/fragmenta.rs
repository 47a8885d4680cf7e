//! The `fragmenta` command line: see `fragmenta --help`.
fn main() -> std::process::ExitCode {
    fragmenta_cli::main()
}
