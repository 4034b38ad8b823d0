//! `compat-cfsctl`: the `cfsctl` multi-call binary under another name, for this crate's tests.
fn main() -> std::process::ExitCode {
    cfsctl::run()
}
