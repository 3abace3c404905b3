//! TEMPORARY placeholder, replaced by the simulator module.
use std::net::SocketAddr;
use std::time::Duration;
pub struct SimConfig {
    pub uuid: String,
    pub secret: String,
    pub token_ttl: Duration,
    pub latency: Duration,
    pub create_min_interval: Duration,
    pub mount_delay: Duration,
}
impl Default for SimConfig {
    fn default() -> Self {
        todo!()
    }
}
pub struct Simulator;
impl Simulator {
    pub async fn bind(_addr: SocketAddr, _cfg: SimConfig) -> std::io::Result<Simulator> {
        todo!()
    }
    pub fn local_addr(&self) -> SocketAddr {
        todo!()
    }
    pub async fn run(
        self,
        _shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        todo!()
    }
}
