//! `kfr certs local`.
pub fn run(_args: &super::CertsLocalArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
