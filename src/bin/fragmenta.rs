fn main() -> std::process::ExitCode { fragmenta_cli::main() }
