//! `kfr token`.
pub async fn run(_settings: crate::config::Settings, _args: &super::TokenArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
