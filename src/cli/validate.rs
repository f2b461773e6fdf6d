//! `kfr validate`.
pub fn run(_settings: &crate::config::Settings, _args: &super::ValidateArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
