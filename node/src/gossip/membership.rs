//! Members-only gossip: the libp2p security upgrade `/zorgmesh/noise-member/1`.
//!
//! It runs libp2p noise (which proves each side's ed25519 key), then exchanges node
//! certificates inside the noise channel before any multiplexing: the dialer sends its hello,
//! the listener checks it and answers with its own hello or a refusal, the dialer checks the
//! listener's. A peer without a current certificate from the network CA for the very key it
//! proved is refused before it can see a topic, a subscription or a message. The frames and
//! their bounds live in [`zorgmesh_protocol::membership`].

use crate::mesh::Mesh;
use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::{noise, PeerId};
use std::sync::Arc;
use std::time::Duration;
use zorgmesh_protocol::membership::{
    frame, frame_length, MemberAnswer, MemberHello, SECURITY_PROTOCOL,
};

/// Longest the whole handshake (noise and certificates) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection was not admitted to the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The noise handshake failed.
    #[error("noise handshake: {0}")]
    Noise(#[from] noise::Error),
    /// Reading or writing the certificate frames failed.
    #[error("membership handshake i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not a membership frame.
    #[error("membership handshake: {0}")]
    Malformed(String),
    /// We refused the peer.
    #[error("refused peer {peer}: {reason}")]
    RefusedPeer {
        /// The noise-proven peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The peer refused us.
    #[error("refused by peer {peer}: {reason}")]
    RefusedByPeer {
        /// The noise-proven peer.
        peer: PeerId,
        /// The reason it gave.
        reason: String,
    },
    /// The handshake took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("membership handshake timed out")]
    TimedOut,
}

/// The security upgrade: noise, then the certificate exchange.
#[derive(Clone)]
pub struct MemberSecurity {
    noise: noise::Config,
    own_certificate: Arc<Vec<u8>>,
    mesh: Arc<Mesh>,
}

impl MemberSecurity {
    /// The upgrade for a node with libp2p identity `keypair` (its certificate key) and
    /// certificate `own_certificate`; `mesh` judges peers' certificates.
    pub fn new(
        keypair: &libp2p::identity::Keypair,
        own_certificate: Vec<u8>,
        mesh: Arc<Mesh>,
    ) -> Result<Self, noise::Error> {
        Ok(Self {
            noise: noise::Config::new(keypair)?,
            own_certificate: Arc::new(own_certificate),
            mesh,
        })
    }

    fn own_hello(&self) -> MemberHello {
        MemberHello {
            certificate_der: self.own_certificate.as_ref().clone(),
            revocation_sequence: self.mesh.revocation_sequence(),
        }
    }

    /// Checks a peer's hello against the noise-proven `peer`.
    fn judge(&self, hello: &MemberHello, peer: &PeerId) -> Result<(), String> {
        let key = super::author_key(peer).ok_or("peer id is not an ed25519 key")?;
        let member = self.mesh.admit_member(&hello.certificate_der, &key)?;
        self.mesh
            .peer_revocation_sequence(member.node, hello.revocation_sequence);
        Ok(())
    }
}

impl UpgradeInfo for MemberSecurity {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(SECURITY_PROTOCOL)
    }
}

async fn read_frame<T: AsyncRead + Unpin>(io: &mut T) -> Result<Vec<u8>, MembershipError> {
    let mut prefix = [0u8; 4];
    io.read_exact(&mut prefix).await?;
    let length = frame_length(prefix).map_err(|e| MembershipError::Malformed(e.to_string()))?;
    let mut body = vec![0u8; length];
    io.read_exact(&mut body).await?;
    Ok(body)
}

async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, body: &[u8]) -> std::io::Result<()> {
    io.write_all(&frame(body)).await?;
    io.flush().await
}

async fn with_timeout<F, O>(future: F) -> Result<O, MembershipError>
where
    F: std::future::Future<Output = Result<O, MembershipError>>,
{
    tokio::time::timeout(HANDSHAKE_TIMEOUT, future)
        .await
        .map_err(|_| MembershipError::TimedOut)?
}

impl<T> InboundConnectionUpgrade<T> for MemberSecurity
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, noise::Output<T>);
    type Error = MembershipError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: T, _: Self::Info) -> Self::Future {
        Box::pin(with_timeout(async move {
            let (peer, mut channel) = self.noise.clone().upgrade_inbound(socket, "/noise").await?;
            let verdict = match read_frame(&mut channel).await {
                Ok(body) => MemberHello::from_bytes(&body)
                    .map_err(|e| format!("bad hello: {e}"))
                    .and_then(|hello| self.judge(&hello, &peer)),
                Err(MembershipError::Malformed(reason)) => Err(reason),
                Err(e) => return Err(e),
            };
            match verdict {
                Ok(()) => {
                    let answer = MemberAnswer::Admitted(self.own_hello());
                    write_frame(&mut channel, &answer.to_bytes()).await?;
                    Ok((peer, channel))
                }
                Err(reason) => {
                    let answer = MemberAnswer::refused(&reason);
                    // Best effort: the stranger may already be gone.
                    let _ = write_frame(&mut channel, &answer.to_bytes()).await;
                    let _ = channel.close().await;
                    Err(MembershipError::RefusedPeer { peer, reason })
                }
            }
        }))
    }
}

impl<T> OutboundConnectionUpgrade<T> for MemberSecurity
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, noise::Output<T>);
    type Error = MembershipError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: T, _: Self::Info) -> Self::Future {
        Box::pin(with_timeout(async move {
            let (peer, mut channel) = self
                .noise
                .clone()
                .upgrade_outbound(socket, "/noise")
                .await?;
            write_frame(&mut channel, &self.own_hello().to_bytes()).await?;
            let body = read_frame(&mut channel).await?;
            let answer = MemberAnswer::from_bytes(&body)
                .map_err(|e| MembershipError::Malformed(format!("bad answer: {e}")))?;
            match answer {
                MemberAnswer::Refused { reason } => {
                    Err(MembershipError::RefusedByPeer { peer, reason })
                }
                MemberAnswer::Admitted(hello) => match self.judge(&hello, &peer) {
                    Ok(()) => Ok((peer, channel)),
                    Err(reason) => {
                        let _ = channel.close().await;
                        Err(MembershipError::RefusedPeer { peer, reason })
                    }
                },
            }
        }))
    }
}
