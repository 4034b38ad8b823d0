//! `cfsctl`: the composefs command-line tool. Also answers to the names `mkcomposefs` and
//! `composefs-info` (argv[0] or first argument).
fn main() -> std::process::ExitCode {
    cfsctl::run()
}
