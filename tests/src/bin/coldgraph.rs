//! The cold-graph section of the benchmark alone (see
//! `modmesh_tests::benchsec::coldgraph`):
//!
//! ```text
//! cargo build --release -p modmesh-tests -p modmesh-gateway -p modmesh-storage -p modmesh-lock -p modmesh-fetcher --bins
//! target/release/coldgraph [ROUNDS (3)] [KINDS (direct,embedded,mesh,gocmd,athens)]
//! ```

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rounds = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(3);
    let only = std::env::args().nth(2);
    let tmp = tempfile::Builder::new()
        .prefix("modmesh-coldgraph-")
        .tempdir()?;
    let report =
        modmesh_tests::benchsec::coldgraph::run(tmp.path(), rounds, only.as_deref()).await?;
    println!("{report}");
    Ok(())
}
