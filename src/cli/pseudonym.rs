//! `kfr pseudonym`.
pub fn run(_settings: &crate::config::Settings, _args: &super::PseudonymArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
