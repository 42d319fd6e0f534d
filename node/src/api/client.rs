//! Connecting to a gateway as a client: mTLS with the mesh's TLS settings, over a tonic channel.
//!
//! Used by `mesh-ctl`, the tests and the benchmark, so every client speaks exactly what the node
//! accepts. `connect_with` takes any rustls client config, which is how tests offer TLS 1.2 or a
//! foreign certificate on purpose.

use crate::security::tls::{self, TlsError, TlsMaterial};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("invalid server name `{0}`")]
    ServerName(String),
    #[error("cannot connect to the gateway: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// TLS settings of a client holding `cert`/`key`, trusting the mesh CA in `ca`.
pub fn client_tls(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    tls::client_config(&TlsMaterial::load(ca, cert, key)?, &[b"h2"])
}

/// Connects to the gateway at `addr`, verifying it as `server_name` (a DNS name or IP in the node's
/// certificate; `localhost` for a local mesh).
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<ClientConfig>,
) -> Result<Channel, ConnectError> {
    connect_with(addr, server_name, tls).await
}

pub(crate) async fn connect_with(
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<ClientConfig>,
) -> Result<Channel, ConnectError> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| ConnectError::ServerName(server_name.to_owned()))?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true);
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let (connector, name) = (connector.clone(), name.clone());
            async move {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await?;
    Ok(channel)
}
