//! `kfr config show`.
pub fn run(_settings: &crate::config::Settings, _json: bool) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
