//! `rxvmm bench`: measurements (filled in by the benchmark work).

#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub fn run(_args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("no benchmarks yet")
}
