//! [`FuseOptions`]: how a FUSE session serves, parsed from a comma-separated option string.

use std::fmt;
use std::str::FromStr;

/// The options [`FuseOptions`] understands, for error messages and help texts.
pub const VALID_OPTIONS: &str =
    "passthrough, uring, threads=N (N >= 1), verify=on|off, trees=DIR, allow_other";

/// How a FUSE session serves an image.
///
/// The text form is a comma-separated list: `passthrough`, `uring`, `threads=N`,
/// `verify=on|off`, `trees=DIR`, `allow_other`; the empty string means the defaults. [`Display`](fmt::Display) writes the same
/// form back, so options survive a round trip through a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuseOptions {
    /// Worker threads, each on its own cloned `/dev/fuse` fd; `None` = one per CPU.
    pub threads: Option<usize>,
    /// Let the kernel read external files straight from their objects (FUSE passthrough, Linux
    /// 6.9+, needs CAP_SYS_ADMIN). Falls back to userspace reads when unavailable.
    pub passthrough: bool,
    /// Take requests from per-CPU io_uring queues (FUSE over io_uring, Linux 6.14+ with
    /// `/sys/module/fuse/parameters/enable_uring` on), each answered by a worker pinned to its
    /// CPU, so a request and its reply never cross CPUs. `threads` then does not apply: there
    /// is one worker per possible CPU. Falls back to `/dev/fuse` when unavailable.
    pub uring: bool,
    /// Check what is read from each object against its fs-verity digest in the image: every
    /// READ that reaches the server, block by block against the object's Merkle tree (small
    /// objects whole), unless the object has kernel fs-verity of that digest (the kernel then
    /// checks). With passthrough, READs never reach the server, so objects are checked whole
    /// at their first open instead.
    pub verify: bool,
    /// Where Merkle trees of large objects are kept between mounts (`trees=DIR`; a
    /// repository's is `cache/verity`). Without one, trees are built in memory on first use.
    pub trees: Option<std::path::PathBuf>,
    /// Let users other than the mounting one access the mount.
    pub allow_other: bool,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            threads: None,
            passthrough: false,
            uring: false,
            verify: true,
            trees: None,
            allow_other: false,
        }
    }
}

impl FuseOptions {
    /// The number of worker threads to run: `threads`, else the available parallelism.
    pub fn worker_threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

/// A bad option string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid FUSE option {token:?}: {reason} (valid options: {VALID_OPTIONS})")]
pub struct ParseOptionsError {
    /// The offending option.
    pub token: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for FuseOptions {
    type Err = ParseOptionsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut opts = FuseOptions::default();
        for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let bad = |reason| ParseOptionsError {
                token: token.to_owned(),
                reason,
            };
            let (key, value) = match token.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (token, None),
            };
            match (key, value) {
                ("passthrough", None) => opts.passthrough = true,
                ("uring", None) => opts.uring = true,
                ("allow_other", None) => opts.allow_other = true,
                ("threads", Some(v)) => {
                    let n: usize = v.parse().map_err(|_| bad("not a number"))?;
                    if n == 0 {
                        return Err(bad("at least one thread is needed"));
                    }
                    if n > 1024 {
                        return Err(bad("more than 1024 threads"));
                    }
                    opts.threads = Some(n);
                }
                ("verify", Some("on")) => opts.verify = true,
                ("verify", Some("off")) => opts.verify = false,
                ("verify", Some(_)) => return Err(bad("expected verify=on or verify=off")),
                ("trees", Some("")) => return Err(bad("needs a directory")),
                ("trees", Some(dir)) => opts.trees = Some(dir.into()),
                ("passthrough" | "uring" | "allow_other", Some(_)) => {
                    return Err(bad("takes no value"))
                }
                ("threads" | "verify" | "trees", None) => return Err(bad("needs a value")),
                _ => return Err(bad("unknown option")),
            }
        }
        Ok(opts)
    }
}

impl fmt::Display for FuseOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.passthrough {
            parts.push("passthrough".into());
        }
        if self.uring {
            parts.push("uring".into());
        }
        if let Some(n) = self.threads {
            parts.push(format!("threads={n}"));
        }
        if !self.verify {
            parts.push("verify=off".into());
        }
        if let Some(dir) = &self.trees {
            parts.push(format!("trees={}", dir.display()));
        }
        if self.allow_other {
            parts.push("allow_other".into());
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn empty_means_defaults() {
        assert_eq!("".parse::<FuseOptions>().unwrap(), FuseOptions::default());
        assert_eq!(" ".parse::<FuseOptions>().unwrap(), FuseOptions::default());
        let d = FuseOptions::default();
        assert!(d.verify && !d.passthrough && !d.allow_other && d.threads.is_none());
        assert!(d.worker_threads() >= 1);
    }

    #[test]
    fn every_option() {
        let o: FuseOptions = "passthrough,uring,threads=3,verify=off,allow_other"
            .parse()
            .unwrap();
        assert_eq!(
            o,
            FuseOptions {
                threads: Some(3),
                passthrough: true,
                uring: true,
                verify: false,
                trees: None,
                allow_other: true
            }
        );
        assert_eq!(o.worker_threads(), 3);
        let o: FuseOptions = "verify=on, threads=1,".parse().unwrap();
        assert!(o.verify);
        assert_eq!(o.threads, Some(1));
        // Later options win.
        let o: FuseOptions = "verify=off,verify=on".parse().unwrap();
        assert!(o.verify);
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "",
            "passthrough",
            "threads=2",
            "verify=off",
            "allow_other",
            "uring",
            "passthrough,uring,threads=8,verify=off,allow_other",
        ] {
            let o: FuseOptions = s.parse().unwrap();
            assert_eq!(o.to_string(), s);
            assert_eq!(o.to_string().parse::<FuseOptions>().unwrap(), o);
        }
    }

    #[test]
    fn bad_options_list_the_valid_ones() {
        for (s, token) in [
            ("bogus", "bogus"),
            ("passthrough,nope", "nope"),
            ("threads", "threads"),
            ("threads=", "threads="),
            ("threads=0", "threads=0"),
            ("threads=-1", "threads=-1"),
            ("threads=x", "threads=x"),
            ("threads=99999", "threads=99999"),
            ("verify=maybe", "verify=maybe"),
            ("verify", "verify"),
            ("passthrough=1", "passthrough=1"),
            ("allow_other=yes", "allow_other=yes"),
            ("uring=on", "uring=on"),
        ] {
            let e = s.parse::<FuseOptions>().unwrap_err();
            assert_eq!(e.token, token, "{s}");
            let msg = e.to_string();
            assert!(msg.contains(VALID_OPTIONS), "{msg}");
            assert!(msg.contains(token), "{msg}");
        }
    }
}
