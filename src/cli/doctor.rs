//! `kfr doctor`.
pub async fn run(_settings: crate::config::Settings) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
