//! Test support: deciding whether kernel-mount tests can run here.

use std::io::Write;

use rustix::io::Errno;
use rustix::mount::{fsopen, FsOpenFlags};

const REQUIRE_ALL_ENV: &str = "CFS_TEST_REQUIRE_ALL";

/// Why this process cannot do kernel mounts, or `None`.
pub(crate) fn mount_unavailable() -> Option<String> {
    let euid = rustix::process::geteuid();
    if !euid.is_root() {
        return Some(format!("root (running as euid {})", euid.as_raw()));
    }
    for fs in ["erofs", "overlay"] {
        match fsopen(fs, FsOpenFlags::FSOPEN_CLOEXEC) {
            Ok(_) => {}
            Err(Errno::NODEV) => return Some(format!("kernel support for {fs} (ENODEV)")),
            Err(Errno::PERM) => return Some(format!("CAP_SYS_ADMIN (fsopen {fs}: EPERM)")),
            Err(e) => panic!("fsopen({fs}) failed unexpectedly: {e}"),
        }
    }
    None
}

/// `true` if the test may run; otherwise skip loudly, or panic under `CFS_TEST_REQUIRE_ALL`.
pub(crate) fn can_mount(test: &str) -> bool {
    let Some(reason) = mount_unavailable() else {
        return true;
    };
    if std::env::var_os(REQUIRE_ALL_ENV).is_some() {
        panic!("{test} cannot run: missing {reason} ({REQUIRE_ALL_ENV} is set)");
    }
    // Straight to the stderr handle: libtest captures `eprintln!` of passing tests, and a
    // skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!! SKIPPED: {test}\n!!! missing: {reason}\n!!! (set {REQUIRE_ALL_ENV}=1 to fail)\n"
    );
    false
}
