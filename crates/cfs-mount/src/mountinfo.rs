//! What is mounted where, from `/proc/self/mountinfo`: enough to refuse stacking a composefs
//! mount on top of another, which would hide the first without a word.

use std::io;
use std::path::Path;

/// A mount as `/proc/self/mountinfo` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The filesystem type (`overlay`, `fuse`, `erofs`, …).
    pub fstype: String,
    /// The mount's source (ours: `composefs:<image>` for overlayfs, `composefs-fuse` for FUSE).
    pub source: String,
}

impl MountEntry {
    /// Whether this is a composefs mount made by this tool, the C tools or composefs-rs: an
    /// overlayfs whose source names composefs, or our FUSE server.
    pub fn is_composefs(&self) -> bool {
        (self.fstype == "overlay" && self.source.starts_with("composefs"))
            || (self.fstype.starts_with("fuse") && self.source.starts_with("composefs"))
    }
}

impl std::fmt::Display for MountEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.source, self.fstype)
    }
}

/// The topmost mount whose mount point is exactly `path` (compared as given: pass a
/// canonical path), if any.
pub fn mounted_at(path: &Path) -> io::Result<Option<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mounted_at(&text, path))
}

fn parse_mounted_at(mountinfo: &str, path: &Path) -> Option<MountEntry> {
    let wanted = path.as_os_str().as_encoded_bytes();
    // Later lines are mounted later: the last match is the one on top.
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        if unescape(mount_point) != wanted {
            return None;
        }
        let mut right = right.split(' ');
        Some(MountEntry {
            fstype: right.next()?.to_owned(),
            source: String::from_utf8_lossy(&unescape(right.next()?)).into_owned(),
        })
    })
}

/// Undo mountinfo's escapes: it writes space, tab, newline and backslash as three octal digits
/// after a backslash.
pub fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
40 22 0:40 / /mnt/a\\040b rw,relatime shared:2 - overlay composefs:abc ro,lowerdir+=/x
41 22 0:41 / /mnt/f rw,relatime - fuse composefs-fuse ro,user_id=0
42 41 0:42 / /mnt/f rw,relatime - tmpfs tmpfs rw
43 22 0:43 / /mnt/o rw - overlay overlay rw,lowerdir=/a
";

    #[test]
    fn finds_the_topmost_mount_at_a_path() {
        let at = |p: &str| parse_mounted_at(SAMPLE, Path::new(p));
        let spaced = at("/mnt/a b").expect("escaped mount point");
        assert_eq!(spaced.source, "composefs:abc");
        assert!(spaced.is_composefs());
        // The tmpfs mounted over the FUSE mount is the one on top.
        assert_eq!(at("/mnt/f").map(|m| m.fstype), Some("tmpfs".to_owned()));
        assert!(!at("/mnt/o").expect("plain overlay").is_composefs());
        assert_eq!(at("/mnt"), None);
        assert!(at("/").is_some_and(|m| !m.is_composefs()));
    }

    #[test]
    fn fuse_mounts_of_ours_count_as_composefs() {
        let fuse = MountEntry {
            fstype: "fuse".into(),
            source: "composefs-fuse".into(),
        };
        assert!(fuse.is_composefs());
        assert_eq!(fuse.to_string(), "composefs-fuse (fuse)");
    }
}
