//! Progress on a terminal: bars for the library's [`cfs_repo::Progress`] reports and for files
//! stored by `create-image`. Nothing is drawn when stderr is not a terminal (piped, redirected,
//! under a test harness), so scripts see only the results on stdout.

use std::fs::File;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cfs_format::Algorithm;
use cfs_repo::scan::ContentSink;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

/// A spinner on stderr when it is a terminal (somebody is watching), else a hidden bar.
fn stderr_bar() -> ProgressBar {
    if std::io::stderr().is_terminal() {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    }
}

/// A bar on stderr (hidden when stderr is not a terminal) that follows a library operation's
/// phases: a bar with a count when the phase's size is known, a spinner otherwise.
pub struct PhaseBar {
    bar: ProgressBar,
    counted: ProgressStyle,
    open_ended: ProgressStyle,
}

impl PhaseBar {
    /// A bar for the operation `label` (shown in front of each phase).
    pub fn new(label: &str) -> PhaseBar {
        let bar = stderr_bar();
        let counted = ProgressStyle::with_template(&format!(
            "{label}: {{msg}} [{{bar:24}}] {{pos}}/{{len}} {{elapsed}}"
        ))
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let open_ended = ProgressStyle::with_template(&format!(
            "{label}: {{spinner}} {{msg}} {{pos}} {{elapsed}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.enable_steady_tick(Duration::from_millis(100));
        PhaseBar {
            bar,
            counted,
            open_ended,
        }
    }

    /// Remove the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl cfs_repo::Progress for PhaseBar {
    fn phase(&self, what: &str, total: Option<u64>) {
        self.bar.reset();
        match total {
            Some(n) => {
                self.bar.set_style(self.counted.clone());
                self.bar.set_length(n);
            }
            None => self.bar.set_style(self.open_ended.clone()),
        }
        self.bar.set_message(what.to_owned());
    }

    fn advance(&self, steps: u64) {
        self.bar.inc(steps);
    }
}

/// A content sink that counts the files and bytes going through it on a spinner, for
/// `create-image` (the number of files is not known in advance).
pub struct CountingSink<'a> {
    inner: &'a dyn ContentSink,
    bar: ProgressBar,
    bytes: AtomicU64,
}

impl<'a> CountingSink<'a> {
    /// Count what goes to `inner`, labelled `label`.
    pub fn new(inner: &'a dyn ContentSink, label: &str) -> CountingSink<'a> {
        let bar = stderr_bar();
        let style = ProgressStyle::with_template(&format!(
            "{label}: {{spinner}} {{pos}} files, {{msg}} {{elapsed}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(100));
        CountingSink {
            inner,
            bar,
            bytes: AtomicU64::new(0),
        }
    }

    /// Remove the spinner from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl ContentSink for CountingSink<'_> {
    fn consume(
        &self,
        file: &mut File,
        algorithm: Algorithm,
    ) -> std::io::Result<(cfs_format::Digest, u64)> {
        let result = self.inner.consume(file, algorithm)?;
        self.bar.inc(1);
        // The byte total rides in the message: the position counts files.
        let bytes = self.bytes.fetch_add(result.1, Ordering::Relaxed) + result.1;
        self.bar.set_message(HumanBytes(bytes).to_string());
        Ok(result)
    }
}
