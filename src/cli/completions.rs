//! `kfr completions SHELL`: the shell's completion script on stdout, generated from the same clap
//! definitions `kfr` parses its arguments with, so it cannot drift from the commands and flags.
//!
//! Install, for example: `kfr completions bash > ~/.local/share/bash-completion/completions/kfr`,
//! `kfr completions zsh > ~/.zfunc/_kfr`, `kfr completions fish > ~/.config/fish/completions/kfr.fish`.

use super::{Cli, CompletionsArgs};
use anyhow::Context as _;
use clap::CommandFactory;

pub(super) fn run(args: &CompletionsArgs, p: &super::printer::Printer) -> anyhow::Result<()> {
    let script = script(args.shell);
    // Written whole through the printer: the generator itself would panic on a closed pipe.
    p.raw(&script)
        .context("cannot write the completion script to standard output")
}

/// The completion script for `shell`.
pub(crate) fn script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "kfr", &mut buf);
    buf
}
