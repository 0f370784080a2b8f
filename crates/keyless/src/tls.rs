//! The optional mTLS listener (`--mtls-listen`): the same router as the
//! HTTP listener, served over TLS, so that a client holding an X509-SVID
//! can bind its OBO tokens to its certificate (RFC 8705 `cnf.x5t#S256`),
//! log in to the secrets broker with it, and call the gateway's `/mcp` as
//! the agent it names (no bearer needed).
//!
//! - Server certificate: an X509-SVID Keyless mints for itself
//!   (`spiffe://<td>/keyless/server`) from an in-memory entry — never a
//!   stored registration entry, so no workload selector can ever obtain the
//!   server's identity. It is renewed at half its life and whenever the
//!   trust domain's authorities change.
//! - Client certificates are optional at the TLS layer (the listener also
//!   serves plain OAuth clients); when one is presented it must chain to
//!   the identity's current X.509 authorities with the clientAuth usage
//!   (rustls' WebPKI verifier) and be an X509-SVID of our trust domain
//!   (exactly one `spiffe://` URI SAN); otherwise the handshake, or the
//!   connection, is refused.
//! - A verified client SVID reaches handlers as a
//!   [`keyless_identity::PeerSvid`] request extension, next to
//!   `ConnectInfo<SocketAddr>` (the sign-in rate limit reads it).
//!
//! rustls with the aws-lc-rs provider, TLS 1.2 and 1.3, HTTP/1.1 (ALPN).
//! The handshake and request headers are bounded in time, so a client that
//! stalls holds one task, never the accept loop.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use keyless_identity::{Identity, PeerSvid, SpiffeId};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// The path of the server's own SPIFFE ID.
pub const SERVER_ID_PATH: &str = "/keyless/server";
/// Longest TLS handshake accepted.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Renewal retries after a failure, and the floor between renewals.
const RETRY: Duration = Duration::from_secs(5);

/// The current TLS configuration (server SVID + client roots), replaced
/// on renewal; each new connection takes the latest.
#[derive(Clone)]
pub struct MtlsConfig {
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds a server configuration from a fresh server SVID and the current
/// authorities; returns it with the SVID's expiry.
fn build(identity: &Identity) -> anyhow::Result<(Arc<ServerConfig>, SystemTime)> {
    // In memory only (see the module docs): no selector matches it.
    let entry =
        crate::internal::entry(identity, SERVER_ID_PATH, "keyless-server", "keyless-server")
            .context("the server's entry")?;
    let svid = identity
        .mint_x509_svid(&entry)
        .context("minting the server x509-svid")?;
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.private_key_pkcs8.clone()));

    let mut roots = RootCertStore::empty();
    for der in identity.x509_authorities() {
        roots
            .add(CertificateDer::from(der))
            .context("adding a trust-domain authority")?;
    }
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .context("building the client certificate verifier")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("tls protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("the server certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), svid.not_after))
}

/// When to renew an SVID valid until `not_after`: at half its remaining
/// life, never sooner than [`RETRY`].
fn renew_in(not_after: SystemTime) -> Duration {
    let left = not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    (left / 2).max(RETRY)
}

// === impl MtlsConfig ===

impl MtlsConfig {
    /// Mints the first server SVID and spawns its renewal (at half life,
    /// and at every change of the trust domain's authorities) until
    /// `shutdown` turns true.
    pub fn start(
        identity: Arc<Identity>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let (config, not_after) = build(&identity)?;
        let this = Self {
            current: Arc::new(RwLock::new(config)),
        };
        let renewer = this.clone();
        tokio::spawn(async move {
            let mut changes = identity.changes();
            let mut wait = renew_in(not_after);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    r = changes.changed() => if r.is_err() { return },
                    _ = stopped(&mut shutdown) => return,
                }
                wait = match build(&identity) {
                    Ok((config, not_after)) => {
                        renewer.replace(config);
                        tracing::info!("mtls server certificate renewed");
                        renew_in(not_after)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "mtls server certificate renewal failed");
                        RETRY
                    }
                };
            }
        });
        Ok(this)
    }

    fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, config: Arc<ServerConfig>) {
        match self.current.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }
}

/// The SPIFFE ID of a verified client leaf: exactly one URI SAN, a SPIFFE
/// ID of `identity`'s trust domain with a path.
pub fn peer_svid(identity: &Identity, leaf: &[u8]) -> anyhow::Result<PeerSvid> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| anyhow::anyhow!("{e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .ok_or_else(|| anyhow::anyhow!("the client certificate has no san"))?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        anyhow::bail!("an x509-svid has exactly one uri san");
    };
    let id = SpiffeId::new(uri).map_err(|e| anyhow::anyhow!("`{uri}`: {e}"))?;
    if !id.is_member_of(identity.trust_domain()) || id.path().is_empty() {
        anyhow::bail!("`{uri}` is not a workload of this trust domain");
    }
    Ok(PeerSvid {
        spiffe_id: id,
        leaf_der: leaf.to_vec(),
    })
}

/// Resolves once `shutdown` turns true (the watch guard is dropped
/// inside, so the future stays `Send`).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Accepts TLS connections on `listener` and serves `router` on each until
/// `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    identity: Arc<Identity>,
    tls: MtlsConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "mtls accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let router = router.clone();
        let identity = identity.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(acceptor, tcp, addr, router, &identity).await {
                tracing::debug!(peer = %addr, error = %e, "mtls connection ended");
            }
        });
    }
}

async fn connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    router: Router,
    identity: &Identity,
) -> anyhow::Result<()> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .context("tls handshake timed out")?
        .context("tls handshake")?;
    // The chain was verified by rustls; this checks it is an SVID of ours.
    let peer = match stream.get_ref().1.peer_certificates() {
        Some([leaf, ..]) => Some(peer_svid(identity, leaf.as_ref())?),
        _ => None,
    };
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
        if let Some(p) = &peer {
            req.extensions_mut().insert(p.clone());
        }
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await
        .context("serving the connection")
}

#[cfg(test)]
#[path = "../tests/mtls_client/mod.rs"]
mod test_client;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use axum::Extension;
    use axum::routing::get;
    use keyless_identity::{IdentityConfig, NewEntry, TrustDomain};
    use keyless_store::{FileKeyManager, Store};

    /// A route that shows what the listener put into the request.
    async fn whoami(peer: Option<Extension<PeerSvid>>) -> String {
        match peer {
            Some(Extension(p)) => format!("{} {}", p.spiffe_id.as_str(), p.x5t_s256()),
            None => "anonymous".into(),
        }
    }

    #[tokio::test]
    async fn the_listener_passes_on_the_verified_client_svid() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&tmp.path().join("k.db")).await.unwrap();
        let keys = Arc::new(FileKeyManager::open(&tmp.path().join("keys")).unwrap());
        let identity = Identity::open(
            store,
            keys,
            Arc::new(keyless_audit::MemorySink::default()),
            IdentityConfig::new(
                TrustDomain::new("example.org").unwrap(),
                "http://127.0.0.1:1".into(),
            ),
        )
        .await
        .unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let tls = MtlsConfig::start(identity.clone(), stop.clone()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/whoami", get(whoami));
        let server = tokio::spawn(serve(listener, router, identity.clone(), tls, stop));

        let entry = identity
            .create_entry(NewEntry::new(
                "spiffe://example.org/agent/a".parse().unwrap(),
                vec!["unix:uid:4242".parse().unwrap()],
            ))
            .await
            .unwrap();
        let svid = identity.mint_x509_svid(&entry).unwrap();
        let roots = identity.x509_authorities();

        // With the SVID: the handler sees its SPIFFE ID and thumbprint.
        let with_cert = test_client::config(
            &roots,
            Some((svid.cert_chain.clone(), svid.private_key_pkcs8.clone())),
        );
        let a = test_client::get(addr, with_cert, "/whoami").await.unwrap();
        assert_eq!(a.status, 200, "{a:?}");
        let expected = PeerSvid {
            spiffe_id: entry.spiffe_id.clone(),
            leaf_der: svid.cert_chain[0].clone(),
        };
        assert_eq!(
            a.body,
            format!("spiffe://example.org/agent/a {}", expected.x5t_s256())
        );
        // The server presents its own SVID, chaining to the same bundle.
        assert_eq!(
            test_client::uri_sans(&a.server_leaf),
            vec!["spiffe://example.org/keyless/server".to_owned()]
        );

        // Without a certificate: served, anonymous.
        let a = test_client::get(addr, test_client::config(&roots, None), "/whoami")
            .await
            .unwrap();
        assert_eq!((a.status, a.body.as_str()), (200, "anonymous"));

        // A certificate from another CA is refused.
        let foreign_ca = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://example.org/agent/a".try_into().unwrap(),
        )];
        let cert = params.self_signed(&foreign_ca).unwrap();
        let forged = test_client::config(
            &roots,
            Some((vec![cert.der().to_vec()], foreign_ca.serialize_der())),
        );
        let r = test_client::get(addr, forged, "/whoami").await;
        assert!(
            r.as_ref().map_or(true, |a| a.status != 200),
            "a foreign certificate was accepted: {r:?}"
        );

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn renewal_is_at_half_life_with_a_floor() {
        let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
        let d = renew_in(in_an_hour);
        assert!(d <= Duration::from_secs(1800) && d >= Duration::from_secs(1790));
        assert_eq!(renew_in(SystemTime::UNIX_EPOCH), RETRY);
    }
}
