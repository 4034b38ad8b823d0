//! The `cfsctl` binary's code: a thin command-line layer over the cfs libraries (`cfs-format`,
//! `cfs-repo`, `cfs-mount`, `cfs-fuse`, `cfs-oci`).
//! It dispatches between the multi-call personalities (`mkcomposefs`, `composefs-info`) and the
//! `cfsctl` command set, turns library errors into messages with context, and maps them to exit
//! codes. No format logic lives here.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

mod cli;
mod composefs_info;
mod fuse;
mod mkcomposefs;
mod mount;
mod mount_composefs;
mod oci;
mod output;
mod progress;
mod sys;

/// The personalities of the multi-call binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// The `cfsctl` command set.
    Cfsctl,
    /// C-compatible `mkcomposefs`.
    Mkcomposefs,
    /// C-compatible `composefs-info`.
    ComposefsInfo,
    /// C-compatible `mount.composefs` (also the `mount -t composefs` helper).
    MountComposefs,
}

impl Tool {
    fn from_name(name: &str) -> Option<Tool> {
        match name {
            "mkcomposefs" => Some(Tool::Mkcomposefs),
            "composefs-info" => Some(Tool::ComposefsInfo),
            "mount.composefs" => Some(Tool::MountComposefs),
            "cfsctl" => Some(Tool::Cfsctl),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Tool::Cfsctl => "cfsctl",
            Tool::Mkcomposefs => "mkcomposefs",
            Tool::ComposefsInfo => "composefs-info",
            Tool::MountComposefs => "mount.composefs",
        }
    }
}

/// Entry point of the `cfsctl` binary: pick the personality from argv[0] or the first argument.
pub fn run() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let argv0 = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .and_then(Tool::from_name)
        .unwrap_or(Tool::Cfsctl);
    if argv0 != Tool::Cfsctl {
        return run_tool(argv0, args);
    }
    // `cfsctl mkcomposefs …` behaves like the multi-call name.
    if let Some(tool) = args
        .get(1)
        .and_then(|a| a.to_str())
        .and_then(Tool::from_name)
    {
        if tool != Tool::Cfsctl {
            return run_tool(tool, args[1..].to_vec());
        }
    }
    run_tool(Tool::Cfsctl, args)
}

/// Run one personality with `args` (args[0] is the program name).
pub fn run_tool(tool: Tool, args: Vec<OsString>) -> ExitCode {
    let result = match tool {
        Tool::Mkcomposefs => mkcomposefs::main(args),
        Tool::ComposefsInfo => composefs_info::main(args),
        Tool::MountComposefs => mount_composefs::main(args),
        Tool::Cfsctl => cfsctl_main(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{}: {}", tool.name(), error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn cfsctl_main(args: Vec<OsString>) -> anyhow::Result<ExitCode> {
    cli::main(args)
}

/// The error and its causes joined with `: `, leaving out a cause whose text the previous
/// message already includes (library errors often embed their source in their own message).
pub(crate) fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !previous.is_empty() && previous.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        previous = text;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chain_drops_repeated_causes() {
        let inner = std::io::Error::other("bad inode 36");
        let err = anyhow::Error::new(inner)
            .context("invalid image: bad inode 36")
            .context("serving x");
        assert_eq!(
            super::error_chain(&err),
            "serving x: invalid image: bad inode 36"
        );
    }
}
