//! `kfr pseudonym ID`: prints the name a customer identifier has in kfr's logs, so an operator
//! can search the logs for one customer without the logs ever holding the identifier.
//!
//! The identifier is validated under the configured policy first (only valid identifiers are
//! ever logged by pseudonym), then the installation's key (`pseudonym_key_file`) is loaded, or
//! created if this is the first use, and installed exactly as a long-running command would. The
//! output is therefore what `CustomerId::log()` writes in this installation's logs: an
//! organisation number as it is, a person as `p-` and 12 hex digits.

use crate::ids::{CustomerId, mask};
use anyhow::Context as _;

pub fn run(
    settings: &crate::config::Settings,
    args: &super::PseudonymArgs,
    p: &super::printer::Printer,
) -> anyhow::Result<()> {
    let id = CustomerId::parse(&args.id, &super::build::id_policy(settings))
        .with_context(|| format!("{} is not a valid customer identifier", mask(&args.id)))?;
    super::install_pseudonyms(settings)?;
    p.data(id.log())?;
    Ok(())
}
