//! Identities of Keyless's own in-process components (the mTLS server, the
//! MCP gateway, the demo tool servers, the agent host). Their registration entries live in
//! memory only: no workload selector can ever obtain these SPIFFE IDs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use keyless_identity::{Identity, RegistrationEntry, SpiffeId};

/// SPIFFE ID paths of the in-process components.
pub const GATEWAY_ID_PATH: &str = "/keyless/gateway";
pub const DIRECTORY_ID_PATH: &str = "/demo/directory";
pub const BANK_ID_PATH: &str = "/demo/bank";
/// The agent host's agent (the console's chat assistant).
pub const AGENT_ID_PATH: &str = "/agent/assistant";
/// The agent host itself: reads the model provider's key from the secrets
/// broker (the agent's own identity cannot).
pub const AGENT_HOST_ID_PATH: &str = "/keyless/agent-host";

/// Mints JWT-SVIDs for one in-process component.
#[derive(Debug, Clone)]
pub struct InternalSvid {
    identity: Arc<Identity>,
    entry: RegistrationEntry,
    /// SVIDs handed to the demo servers' consumption calls, per audience,
    /// reused until half their life (as a workload would hold its SVID):
    /// one ES256 signature per few minutes instead of one per tool call.
    cached: Arc<Mutex<HashMap<String, (String, SystemTime)>>>,
}

/// The in-memory registration entry `id` of component `path`
/// (`spiffe://<td><path>`), with the identity service's default TTLs.
pub fn entry(
    identity: &Identity,
    path: &str,
    id: &str,
    hint: &str,
) -> anyhow::Result<RegistrationEntry> {
    let spiffe_id = SpiffeId::from_parts(identity.trust_domain(), path)
        .map_err(|e| anyhow::anyhow!("spiffe id for `{path}`: {e}"))?;
    Ok(RegistrationEntry {
        id: id.to_owned(),
        spiffe_id,
        parent_id: None,
        selectors: Vec::new(),
        x509_ttl: identity.config().default_x509_ttl,
        jwt_ttl: identity.config().default_jwt_ttl,
        hint: hint.to_owned(),
        admin: false,
        created_at: 0,
    })
}

impl InternalSvid {
    pub fn new(identity: Arc<Identity>, path: &str) -> anyhow::Result<Self> {
        let id = format!("keyless-internal{}", path.replace('/', "-"));
        let entry = entry(&identity, path, &id, path.trim_start_matches('/'))?;
        Ok(Self {
            identity,
            entry,
            cached: Arc::default(),
        })
    }

    pub fn spiffe_id(&self) -> String {
        self.entry.spiffe_id.to_string()
    }

    /// A JWT-SVID for `audience`, with its lifetime.
    pub fn mint_jwt(&self, audience: &str) -> Result<keyless_identity::JwtSvid, String> {
        self.identity
            .mint_jwt_svid(&self.entry, &[audience.to_owned()])
            .map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl keyless_demo::SvidSource for InternalSvid {
    async fn jwt_svid(&self, audience: &str) -> Result<String, String> {
        let now = SystemTime::now();
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((token, renew_at)) = cached.get(audience)
            && now < *renew_at
        {
            return Ok(token.clone());
        }
        let svid = self.mint_jwt(audience)?;
        let half = svid
            .expires_at
            .duration_since(svid.issued_at)
            .unwrap_or_default()
            / 2;
        cached.insert(
            audience.to_owned(),
            (svid.token.clone(), svid.issued_at + half),
        );
        Ok(svid.token)
    }
}
