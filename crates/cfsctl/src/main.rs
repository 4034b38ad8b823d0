//! `cfsctl`: the composefs command-line tool.
fn main() {}
