#[tokio::main]
async fn main() -> mabeam::Result<()> {
    let mesh = mabeam::MeshClient::connect(&std::env::var("MABEAM_MESHD").unwrap())?; // a meshd's host:port
    println!("{} members", mesh.members().await?.len());
    println!("leader {}", mesh.leader("mesh").await?.unwrap_or_default().node_id);
    Ok(())
}
