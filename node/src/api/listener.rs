//! The gateway's TLS listener: accepts TCP, runs the mTLS handshake with a deadline, and hands
//! tonic a stream that knows who is on the other end.
//!
//! The caller's identity is parsed once per connection from its verified certificate and attached
//! to every request on that connection as [`PeerInfo`] (tonic's `Connected` extension). A handshake
//! that fails (no certificate, another CA, expired, TLS 1.2) never reaches gRPC.

use crate::security::identity::{Identity, IdentityError};
use crate::telemetry::metrics::Metrics;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// Who is connected: attached to every request of the connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// The identity from the verified client certificate, or why it was not acceptable.
    pub identity: Result<Arc<Identity>, IdentityError>,
    /// The certificate chain the client presented (DER, leaf first): forwarded with its requests
    /// so the owner node can verify the client's proof itself.
    pub chain: Arc<Vec<Vec<u8>>>,
}

/// A TLS connection whose client certificate has been verified.
#[derive(Debug)]
pub struct AuthenticatedStream {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for AuthenticatedStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for AuthenticatedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AuthenticatedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// At most this many handshakes run at once; further connections wait in the kernel backlog.
const MAX_CONCURRENT_HANDSHAKES: usize = 256;

/// Accepts connections until `shutdown`; yields the ones that complete the mTLS handshake.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<AuthenticatedStream, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (tcp, remote) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "gateway accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let certs = stream.get_ref().1.peer_certificates().unwrap_or_default();
                        let identity = certs
                            .first()
                            .ok_or(IdentityError::Missing)
                            .and_then(|leaf| Identity::from_certificate(leaf))
                            .map(Arc::new);
                        let chain = Arc::new(certs.iter().map(|c| c.to_vec()).collect());
                        let _ = tx
                            .send(Ok(AuthenticatedStream {
                                stream,
                                info: PeerInfo {
                                    remote,
                                    identity,
                                    chain,
                                },
                            }))
                            .await;
                    }
                    Ok(Err(e)) => {
                        metrics.handshake_failures.inc();
                        tracing::info!(%remote, error = %e, "gateway TLS handshake refused");
                    }
                    Err(_) => {
                        metrics.handshake_failures.inc();
                        tracing::info!(%remote, "gateway TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
