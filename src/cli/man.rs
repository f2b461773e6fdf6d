//! `kfr man`: the manual page, in roff, generated from the clap definitions (`clap_mangen`), so
//! every command and flag in it is one `kfr` accepts.
//!
//! `kfr man > kfr.1` gives the top page; `kfr man --dir DIR` writes it with one page per command
//! (`kfr-load.1`, `kfr-certs-local.1`, …), the layout packagers install under `man1/`.

use super::{Cli, ManArgs};
use anyhow::Context as _;
use clap::CommandFactory;
use std::path::{Path, PathBuf};

pub(super) fn run(args: &ManArgs, p: &super::printer::Printer) -> anyhow::Result<()> {
    match &args.dir {
        None => {
            let page = page()?;
            p.raw(&page).context("cannot write the manual page to standard output")
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let mut written = Vec::new();
            let mut cmd = Cli::command().disable_help_subcommand(true);
            // Building names every subcommand's page after its path (`kfr-certs-local`).
            cmd.build();
            write_pages(&cmd, dir, &mut written)
                .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
            // The pages written, one path a line, for a packaging script to pick up.
            for path in written {
                p.data(path.display())?;
            }
            Ok(())
        }
    }
}

/// `cmd`'s page and those of its visible subcommands, depth first, into `dir`.
fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    written.push(clap_mangen::Man::new(cmd.clone()).generate_to(dir)?);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

/// The top page, `kfr.1`: clap's sections, then what clap does not know (exit codes, variables,
/// files), each stated where the code defines it.
pub(crate) fn page() -> anyhow::Result<Vec<u8>> {
    use clap_mangen::roff::{Roff, bold, roman};
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .context("cannot render the manual page")?;

    let mut extra = Roff::new();
    let item = |roff: &mut Roff, term: &str, text: &str| {
        roff.control("TP", []).text([bold(term)]).text([roman(text)]);
    };
    extra.control("SH", ["EXIT STATUS"]);
    item(
        &mut extra,
        "0",
        "the command did what was asked (an already registered or already ended relationship included)",
    );
    item(
        &mut extra,
        "1",
        "the operation was attempted and failed (network, refused by a service, bad data)",
    );
    item(
        &mut extra,
        "2",
        "the command line or the configuration is wrong; nothing was attempted",
    );
    item(
        &mut extra,
        "130, 143",
        "a long-running command (kfr load) ended by SIGINT or SIGTERM, after saving its state",
    );
    extra.control("SH", ["ENVIRONMENT"]);
    use crate::env_vars as v;
    item(&mut extra, v::KFR_CONFIG, "configuration file, as --config");
    item(
        &mut extra,
        v::KFR_SYSTEM_CONFIG,
        "where the installation's configuration is (default /etc/kfr/kfr.toml; empty: none); for tests and packagers",
    );
    item(
        &mut extra,
        v::KFR_CERTIFICATE_PASSWORD,
        "password of the PKCS#12 file or the encrypted PKCS#8 key (never a flag)",
    );
    item(
        &mut extra,
        "KFR_<KEY>",
        "any configuration key, upper case, dots as underscores (KFR_ORG_NUMBER, KFR_SYNC_RATE)",
    );
    item(&mut extra, v::KFR_LOG, "log filter, e.g. kfr=debug; overrides -v");
    item(&mut extra, v::KFR_LOG_FORMAT, "log format: text (default) or json");
    item(
        &mut extra,
        v::KFR_STATE_HOME,
        "per-installation state: the pseudonym key and the list of running loads (default $XDG_STATE_HOME/kfr, else ~/.local/state/kfr)",
    );
    item(&mut extra, v::NO_COLOR, "no colour in terminal output");
    extra.control("SH", ["FILES"]);
    item(
        &mut extra,
        "/etc/kfr/kfr.toml",
        "the installation's configuration, read by every command when no --config and no KFR_CONFIG is given",
    );
    item(
        &mut extra,
        "./kfr.toml",
        "configuration, when present and neither of the above applies",
    );
    item(
        &mut extra,
        "./kfr-state.db",
        "the state store (state_file): holds customer identifiers in full, mode 0600",
    );
    extra.control("SH", ["SEE ALSO"]);
    extra.text([roman(
        "docs/configuration.md, docs/operations.md and docs/security.md in the kfr sources; kfr help COMMAND",
    )]);
    buf.extend_from_slice(extra.to_roff().as_bytes());
    Ok(buf)
}
