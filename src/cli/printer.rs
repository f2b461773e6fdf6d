//! The one place command output goes through: data on stdout, messages on stderr, and how much of
//! each the operator asked for.
//!
//! Rules it enforces so commands do not each re-decide them:
//! - **Data on stdout, messages on stderr.** A plan, a summary or JSON lines are data; progress,
//!   "report written to …" and warnings are messages.
//! - **`-q`**: nothing on stderr except errors (and the lines that explain an error, such as the
//!   bad lines that refuse a load). `-v`: extra detail lines. Data is written either way.
//! - **JSON lines** (`--json`): data as one JSON value a line; no progress bar.
//! - **Progress bars** only on a terminal stderr, never in quiet or JSON mode; messages printed
//!   while a bar is shown go above it instead of through it.
//! - **`NO_COLOR`** (any value) or a stderr that is not a terminal: no colour.
//! - **A closed stdout** (`kfr … | head -1`) is not an error: writes fail with `BrokenPipe`, the
//!   printer remembers it, drops further data quietly and tells the caller, which may stop early
//!   (a report command) or carry on (a load should not die half way because a pager closed).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fmt::Display;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// How much goes to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: errors only.
    Quiet,
    Normal,
    /// `-v` and more: detail lines too.
    Verbose,
}

/// How data is written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    /// `--json`: one JSON value a line.
    JsonLines,
}

/// Stdout is closed (the reader went away); further data is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stdout is closed")]
pub struct StdoutClosed;

/// Where command output goes (see the module docs).
#[derive(Debug)]
pub struct Printer {
    verbosity: Verbosity,
    format: Format,
    color: bool,
    stderr_terminal: bool,
    stdout_closed: AtomicBool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Printer {
    /// From the global flags and the environment (`NO_COLOR`, whether stderr is a terminal).
    pub fn new(quiet: bool, verbose: u8) -> Self {
        let verbosity = match (quiet, verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, _) => Verbosity::Verbose,
        };
        let stderr_terminal = std::io::stderr().is_terminal();
        let color = stderr_terminal && std::env::var_os(crate::env_vars::NO_COLOR).is_none();
        Self::with(verbosity, Format::Human, color, stderr_terminal)
    }

    /// A printer with every choice explicit (tests, other front ends).
    pub fn with(verbosity: Verbosity, format: Format, color: bool, stderr_terminal: bool) -> Self {
        Printer {
            verbosity,
            format,
            color,
            stderr_terminal,
            stdout_closed: AtomicBool::new(false),
            bar: Mutex::new(None),
        }
    }

    /// The same settings writing data as `format` (a command's `--json`).
    pub fn with_format(self, format: Format) -> Self {
        Printer { format, ..self }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// Data on stdout (a line is added). `Err` once stdout is closed.
    pub fn data(&self, text: impl Display) -> Result<(), StdoutClosed> {
        if self.stdout_closed.load(Ordering::Relaxed) {
            return Err(StdoutClosed);
        }
        let written = self.above_bar(|| writeln!(std::io::stdout().lock(), "{text}"));
        match written {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.stdout_closed.store(true, Ordering::Relaxed);
                Err(StdoutClosed)
            }
            // Any other failure to write stdout (a full disk behind a redirect) is not worth
            // failing a command over that has done its work; it cannot be reported on stdout.
            _ => Ok(()),
        }
    }

    /// Bytes on stdout as they are (a generated script or manual page). `Err` once stdout is
    /// closed; any other write failure is returned as it is, since the output is the whole point.
    pub fn raw(&self, bytes: &[u8]) -> anyhow::Result<()> {
        if self.stdout_closed.load(Ordering::Relaxed) {
            return Err(StdoutClosed.into());
        }
        let mut out = std::io::stdout().lock();
        match out.write_all(bytes).and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.stdout_closed.store(true, Ordering::Relaxed);
                Err(StdoutClosed.into())
            }
            r => Ok(r?),
        }
    }

    /// One JSON value as a line on stdout.
    pub fn json(&self, value: &impl serde::Serialize) -> Result<(), StdoutClosed> {
        match serde_json::to_string(value) {
            Ok(line) => self.data(line),
            Err(e) => {
                self.warning(format!("could not encode a JSON line: {e}"));
                Ok(())
            }
        }
    }

    /// A message on stderr, unless quiet.
    pub fn message(&self, text: impl Display) {
        if self.verbosity > Verbosity::Quiet {
            self.stderr(text);
        }
    }

    /// A detail line on stderr, only when verbose.
    pub fn detail(&self, text: impl Display) {
        if self.verbosity >= Verbosity::Verbose {
            self.stderr(text);
        }
    }

    /// `warning: …` on stderr, unless quiet.
    pub fn warning(&self, text: impl Display) {
        if self.verbosity > Verbosity::Quiet {
            let label = self.paint("warning", "1;33");
            self.stderr(format_args!("{label}: {text}"));
        }
    }

    /// A line that explains an error (a bad input line, a failed operation): shown even when
    /// quiet, since `-q` keeps errors.
    pub fn problem(&self, text: impl Display) {
        self.stderr(text);
    }

    /// Starts a progress bar of `total` at `position`: drawn on a terminal stderr in human,
    /// non-quiet mode, hidden otherwise. Replaces any earlier bar.
    pub fn start_progress(&self, total: u64, position: u64, template: &str) {
        let shown = self.stderr_terminal && self.verbosity > Verbosity::Quiet && self.format == Format::Human;
        let target = if shown {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_position(position);
        bar.reset_eta();
        if shown {
            // The spinner turns on its own, so it never looks frozen during a long wait.
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
        }
        if let Ok(mut b) = self.bar.lock()
            && let Some(old) = b.replace(bar)
        {
            old.finish_and_clear();
        }
    }

    /// Off a terminal (human, not quiet): a plain line with the bar's count and message every
    /// `every`, from a thread of its own so a long step never silences it (issue 9 item 12:
    /// `kfr load F 2>log`). Ends with [`Self::finish_progress`].
    pub fn progress_lines(&self, every: std::time::Duration) {
        if self.stderr_terminal || self.verbosity == Verbosity::Quiet || self.format != Format::Human {
            return;
        }
        let Some(bar) = self.bar.lock().ok().and_then(|b| b.clone()) else {
            return;
        };
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let start_pos = bar.position();
            loop {
                std::thread::sleep(every);
                if bar.is_finished() {
                    return;
                }
                let pos = bar.position();
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let rate = (pos.saturating_sub(start_pos)) as f64 / secs;
                let msg = bar.message();
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "progress: {pos}/{} ingested ({rate:.0}/s){}",
                    bar.length().unwrap_or(0),
                    if msg.is_empty() {
                        String::new()
                    } else {
                        format!("; {msg}")
                    }
                );
            }
        });
    }

    /// The phase shown with the bar and in the plain progress lines.
    pub fn set_phase(&self, phase: impl Into<String>) {
        if let Ok(b) = self.bar.lock()
            && let Some(bar) = b.as_ref()
        {
            bar.set_message(phase.into());
        }
    }

    /// Moves the bar, if one is shown.
    pub fn set_progress(&self, position: u64) {
        if let Ok(b) = self.bar.lock()
            && let Some(bar) = b.as_ref()
        {
            bar.set_position(position);
        }
    }

    /// Removes the bar.
    pub fn finish_progress(&self) {
        if let Ok(mut b) = self.bar.lock()
            && let Some(bar) = b.take()
        {
            bar.finish_and_clear();
        }
    }

    fn paint(&self, label: &str, sgr: &str) -> String {
        if self.color {
            format!("\x1b[{sgr}m{label}\x1b[0m")
        } else {
            label.to_string()
        }
    }

    /// Runs `write` with the bar (if any) cleared, so the output is not drawn through it.
    fn above_bar<T>(&self, write: impl FnOnce() -> T) -> T {
        match self.bar.lock().ok().and_then(|b| b.clone()) {
            Some(bar) if !bar.is_hidden() => bar.suspend(write),
            _ => write(),
        }
    }

    fn stderr(&self, text: impl Display) {
        // A stderr that cannot be written leaves nowhere to say so; never panic over it.
        let _ = self.above_bar(|| writeln!(std::io::stderr().lock(), "{text}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_bar_is_drawn_in_quiet_or_json_mode_or_off_a_terminal() {
        for (v, f, tty) in [
            (Verbosity::Quiet, Format::Human, true),
            (Verbosity::Normal, Format::JsonLines, true),
            (Verbosity::Normal, Format::Human, false),
        ] {
            let p = Printer::with(v, f, false, tty);
            p.start_progress(10, 0, "{pos}/{len}");
            assert!(p.bar.lock().unwrap().as_ref().unwrap().is_hidden(), "{v:?} {f:?} {tty}");
            p.finish_progress();
            assert!(p.bar.lock().unwrap().is_none());
        }
    }

    #[test]
    fn colour_only_when_asked() {
        let plain = Printer::with(Verbosity::Normal, Format::Human, false, true);
        assert_eq!(plain.paint("error", "1;31"), "error");
        let coloured = Printer::with(Verbosity::Normal, Format::Human, true, true);
        assert_eq!(coloured.paint("error", "1;31"), "\x1b[1;31merror\x1b[0m");
    }
}
