//! `kfr mock`.
pub async fn run(_args: &super::MockArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
