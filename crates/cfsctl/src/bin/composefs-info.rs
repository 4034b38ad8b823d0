//! `composefs-info`, a small entry point into the `cfsctl` multi-call binary's code.
fn main() -> std::process::ExitCode {
    cfsctl::run_tool(cfsctl::Tool::ComposefsInfo, std::env::args_os().collect())
}
