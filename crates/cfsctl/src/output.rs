//! Writing results: atomically to a file (temp file, then rename), or to stdout.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Write `data` to `path` so that readers see either the old file or the complete new one, and
/// a failure leaves nothing behind. `-` means stdout, refused when stdout is a terminal.
pub fn write_output(path: &Path, data: &[u8]) -> Result<()> {
    if path == Path::new("-") {
        let stdout = std::io::stdout();
        if rustix::termios::isatty(&stdout) {
            bail!("refusing to write a binary image to a terminal");
        }
        let mut lock = stdout.lock();
        lock.write_all(data).context("writing image to stdout")?;
        lock.flush().context("writing image to stdout")?;
        return Ok(());
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-cfs-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(data)
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", tmp.path().display()))?;
    // Match what a plain create would give, rather than tempfile's 0600.
    let mode = 0o666 & !current_umask();
    rustix::fs::fchmod(tmp.as_file(), rustix::fs::Mode::from_raw_mode(mode))
        .with_context(|| format!("setting permissions of {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the new image into place at {}", path.display()))?;
    Ok(())
}

fn current_umask() -> u32 {
    // umask can only be read by setting it; restore at once (single-threaded at this point).
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    rustix::process::umask(old);
    old.bits()
}
