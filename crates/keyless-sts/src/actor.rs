//! The actor of a token exchange: whom the OBO token will name in `act`.
//!
//! Two kinds of actor token are accepted:
//!
//! - `urn:ietf:params:oauth:token-type:jwt`: the agent's JWT-SVID, whose
//!   audience is the issuer or the authenticated client's URI. The agent
//!   proved itself: only it, or a client it sent the bearer token to,
//!   holds a JWT-SVID for that audience.
//! - [`TOKEN_TYPE_ATTESTED_X509_SVID`]: an agent that authenticated to a
//!   client by its X509-SVID over mTLS (the gateway behind `--mtls-listen`);
//!   the token is the leaf certificate, base64url DER. The agent proved
//!   possession of its key in a TLS handshake the STS did not see, so the
//!   STS relies on the client for that part and checks everything else:
//!   1. the client authenticated with its own JWT-SVID (a registered
//!      [`crate::ClientRegistration`]), and
//!   2. the operator listed its client id in
//!      [`crate::StsConfig::actor_attesters`] — any other client, and a
//!      caller with no client authentication, is refused, so an ordinary
//!      client cannot name an agent it is not;
//!   3. the certificate validates, now, as an X509-SVID of our trust
//!      domain ([`keyless_identity::Identity::validate_x509_svid`]: chain to
//!      a current root, validity, clientAuth, the SVID profile).
//!
//!   The token says who vouched: `act.attested_by` is the client's SPIFFE
//!   ID and `act.x5t#S256` the certificate's thumbprint, and the exchange
//!   event carries both (`actor_attested_by`, `actor_x5t#S256`).
//!
//! Why this design and not another:
//! - Not the certificate alone, from anyone: a certificate is public (every
//!   TLS peer of the agent has seen it) and proves nothing about who holds
//!   its key. Forwarded client certificates are only as good as the proxy
//!   that terminated TLS (RFC 9440 §3 and §6 say the same of the
//!   `Client-Cert` header), hence 1 and 2.
//! - Not a bare SPIFFE ID asserted by the client: check 3 bounds a
//!   compromised attester to agents that showed it a currently valid SVID —
//!   the same bound as the JWT-SVID path, where the gateway relays the
//!   JWT-SVIDs agents sent it — instead of every workload of the domain.
//! - Not a token minted by the gateway for the agent: the gateway would
//!   become an issuer of agent identity. Here it only relays what a
//!   handshake established; `may_act`, consent and policy still decide.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::exchange::TOKEN_TYPE_JWT;
use crate::service::AuthenticatedClient;
use crate::token::Actor;
use crate::{Sts, StsError};

/// Actor token type of an agent's X509-SVID leaf (base64url DER) that an
/// actor attester authenticated over mTLS.
pub const TOKEN_TYPE_ATTESTED_X509_SVID: &str =
    "urn:keyless:params:oauth:token-type:attested-x509-svid";

/// Largest attested certificate accepted, base64url (an SVID is ~700 B).
const MAX_ATTESTED_LEN: usize = 16 * 1024;

/// Whether `token_type` is an actor token type the exchange accepts.
pub(crate) fn supported(token_type: &str) -> bool {
    token_type == TOKEN_TYPE_JWT || token_type == TOKEN_TYPE_ATTESTED_X509_SVID
}

/// Who vouched for an attested actor, and for which certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attestation {
    /// The attesting client's SPIFFE ID.
    pub attested_by: String,
    pub x5t_s256: String,
}

/// An actor that passed [`Sts::validate_actor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ValidatedActor {
    pub spiffe_id: String,
    pub attestation: Option<Attestation>,
}

// === impl ValidatedActor ===

impl ValidatedActor {
    /// The token's `act`: this actor, with the chain before it.
    pub(crate) fn into_actor(self, before: Option<Actor>) -> Actor {
        let (attested_by, x5t_s256) = match self.attestation {
            Some(a) => (Some(a.attested_by), Some(a.x5t_s256)),
            None => (None, None),
        };
        Actor {
            sub: self.spiffe_id,
            attested_by,
            x5t_s256,
            act: before.map(Box::new),
        }
    }
}

fn invalid_request(m: impl Into<String>) -> StsError {
    StsError::InvalidRequest(m.into())
}

// === impl Sts ===

impl Sts {
    /// Validates the actor token of an exchange (see the module docs).
    /// `client`: the confidential client that authenticated, if any.
    pub(crate) fn validate_actor(
        &self,
        token_type: Option<&str>,
        token: &str,
        client: Option<&AuthenticatedClient>,
    ) -> Result<ValidatedActor, StsError> {
        match token_type {
            Some(TOKEN_TYPE_ATTESTED_X509_SVID) => self.attested_actor(token, client),
            Some(TOKEN_TYPE_JWT) => {
                let actor = self
                    .identity
                    .validate_jwt_svid(token, &self.config.issuer)
                    .or_else(|e| match client {
                        Some(c) => self.identity.validate_jwt_svid(token, &c.uri),
                        None => Err(e),
                    })
                    .map_err(|e| invalid_request(format!("actor_token is not valid: {e}")))?;
                Ok(ValidatedActor {
                    spiffe_id: actor.spiffe_id.as_str().to_owned(),
                    attestation: None,
                })
            }
            other => Err(invalid_request(format!(
                "unsupported actor_token_type `{}`",
                other.unwrap_or_default()
            ))),
        }
    }

    fn attested_actor(
        &self,
        token: &str,
        client: Option<&AuthenticatedClient>,
    ) -> Result<ValidatedActor, StsError> {
        let refused = || {
            invalid_request(format!(
                "an actor_token of type `{TOKEN_TYPE_ATTESTED_X509_SVID}` is accepted only from a \
                 client registered as an actor attester"
            ))
        };
        let client = client.ok_or_else(refused)?;
        // The registration, not the caller-built struct, decides: the
        // client must have authenticated with the SVID it is registered
        // under, and be listed as an attester.
        let attester = client
            .spiffe_id
            .as_deref()
            .and_then(|sid| {
                self.config
                    .clients
                    .iter()
                    .find(|c| c.client_id == client.client_id && c.spiffe_id == sid)
            })
            .filter(|c| self.config.actor_attesters.contains(&c.client_id))
            .ok_or_else(refused)?;
        if token.len() > MAX_ATTESTED_LEN {
            return Err(invalid_request("actor_token is too long"));
        }
        let der = URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|_| invalid_request("actor_token is not base64url (a DER certificate)"))?;
        let svid = self
            .identity
            .validate_x509_svid(&der)
            .map_err(|e| invalid_request(format!("actor_token is not valid: {e}")))?;
        Ok(ValidatedActor {
            spiffe_id: svid.spiffe_id.as_str().to_owned(),
            attestation: Some(Attestation {
                attested_by: attester.spiffe_id.clone(),
                x5t_s256: svid.x5t_s256,
            }),
        })
    }
}
