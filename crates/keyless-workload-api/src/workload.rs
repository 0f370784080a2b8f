//! What the Workload API decides, without the wire: who the caller is
//! (attestation → selectors → registration entries), which SVIDs it gets,
//! the trust bundles, and the audit events that go with each decision.
//!
//! Invariant: no SVID leaves this module before its `svid.issued` event is
//! durably recorded; if the audit log is down, the caller gets no SVID.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use keyless_audit::{Event, EventSink, Outcome};
use keyless_identity::{
    Identity, JwtSvid, RegistrationEntry, Selector, SpiffeId, ValidatedJwtSvid, X509Svid,
};

use crate::WorkloadApiError;
use crate::attest::{Attestation, Attestor, PeerCredentials};

/// An attested caller and the registration entries it is entitled to
/// (never empty; the first is its default identity).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub attestation: Attestation,
    pub entries: Vec<RegistrationEntry>,
}

/// The X509-SVIDs of one caller, minted together.
#[derive(Debug)]
pub(crate) struct X509Set {
    pub svids: Vec<X509Svid>,
    /// When the set must be re-minted: half of the lifetime the workload
    /// actually received, for the SVID that expires first.
    pub refresh_at: SystemTime,
}

/// The domain side of the Workload API; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Workloads {
    identity: Arc<Identity>,
    events: Arc<dyn EventSink>,
    attestor: Arc<Attestor>,
}

// === impl Caller ===

impl Caller {
    fn selector_texts(&self) -> Vec<String> {
        selector_texts(&self.attestation.selectors)
    }
}

// === impl Workloads ===

impl Workloads {
    pub fn new(identity: Arc<Identity>, events: Arc<dyn EventSink>) -> Self {
        Self {
            identity,
            events,
            attestor: Arc::new(Attestor::new()),
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Attests the socket peer and looks up its entries. A caller that cannot
    /// be attested, or has no entry, is denied (and the denial recorded).
    pub async fn caller(&self, peer: Option<PeerCredentials>) -> Result<Caller, WorkloadApiError> {
        let attestation = match peer {
            Some(peer) => {
                let attestor = Arc::clone(&self.attestor);
                tokio::task::spawn_blocking(move || attestor.attest(peer))
                    .await
                    .map_err(|_| WorkloadApiError::Internal("attestation task failed"))?
                    .map_err(WorkloadApiError::from)
            }
            None => Err(WorkloadApiError::Attestation(
                crate::attest::AttestError::NoPid,
            )),
        };
        let attestation = match attestation {
            Ok(a) => a,
            Err(err) => {
                tracing::warn!(?peer, error = %err, "workload attestation failed");
                let known = peer
                    .map(|p| vec![Selector::unix_uid(p.uid), Selector::unix_gid(p.gid)])
                    .unwrap_or_default();
                self.denied(&known, peer.and_then(|p| p.pid), &err.to_string())
                    .await;
                return Err(err);
            }
        };
        let entries = dedup_by_spiffe_id(self.identity.matching_entries(&attestation.selectors));
        if entries.is_empty() {
            let err = WorkloadApiError::NoIdentity;
            tracing::info!(
                pid = attestation.pid,
                selectors = %selector_texts(&attestation.selectors).join(","),
                "no registration entry matches the caller"
            );
            self.denied(
                &attestation.selectors,
                Some(attestation.pid),
                &err.to_string(),
            )
            .await;
            return Err(err);
        }
        Ok(Caller {
            attestation,
            entries,
        })
    }

    /// Mints one X509-SVID per entry of `caller` (recording each issuance).
    pub async fn x509_svids(&self, caller: &Caller) -> Result<X509Set, WorkloadApiError> {
        let minted_at = SystemTime::now();
        let mut svids = Vec::with_capacity(caller.entries.len());
        let mut refresh_at: Option<SystemTime> = None;
        for entry in &caller.entries {
            let svid = self.identity.mint_x509_svid(entry)?;
            let at = half_life(minted_at, svid.not_before, svid.not_after);
            refresh_at = Some(refresh_at.map_or(at, |r| r.min(at)));
            let event = issued_event(caller, &svid.spiffe_id, "x509", svid.not_after)
                .detail("serial", svid.serial_hex.clone());
            self.events.record(event).await?;
            tracing::info!(
                spiffe_id = %svid.spiffe_id,
                serial = %svid.serial_hex,
                pid = caller.attestation.pid,
                selectors = %caller.selector_texts().join(","),
                "x509-svid issued"
            );
            svids.push(svid);
        }
        Ok(X509Set {
            svids,
            refresh_at: refresh_at.unwrap_or(minted_at),
        })
    }

    /// Mints JWT-SVIDs for `audience`: for every identity of the caller, or
    /// only for `spiffe_id` when given (which must be one of them).
    pub async fn jwt_svids(
        &self,
        caller: &Caller,
        audience: &[String],
        spiffe_id: Option<&str>,
    ) -> Result<Vec<JwtSvid>, WorkloadApiError> {
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(WorkloadApiError::AudienceMissing);
        }
        let entries: Vec<&RegistrationEntry> = match spiffe_id {
            None => caller.entries.iter().collect(),
            Some(wanted) => {
                let wanted = SpiffeId::new(wanted)
                    .map_err(|_| WorkloadApiError::InvalidSpiffeId(wanted.to_owned()))?;
                let chosen: Vec<_> = caller
                    .entries
                    .iter()
                    .filter(|e| e.spiffe_id == wanted)
                    .collect();
                if chosen.is_empty() {
                    // Same answer as "no identity at all": the caller learns
                    // nothing about identities that are not its own.
                    self.denied(
                        &caller.attestation.selectors,
                        Some(caller.attestation.pid),
                        &format!("caller is not entitled to `{wanted}`"),
                    )
                    .await;
                    return Err(WorkloadApiError::NoIdentity);
                }
                chosen
            }
        };
        let mut svids = Vec::with_capacity(entries.len());
        for entry in entries {
            let svid = self.identity.mint_jwt_svid(entry, audience)?;
            let mut event = issued_event(caller, &svid.spiffe_id, "jwt", svid.expires_at)
                .detail("audience", audience.to_vec());
            if let Some(jti) = jwt_id(&svid.token) {
                event = event.detail("jti", jti);
            }
            self.events.record(event).await?;
            tracing::info!(
                spiffe_id = %svid.spiffe_id,
                audience = %audience.join(","),
                pid = caller.attestation.pid,
                selectors = %caller.selector_texts().join(","),
                "jwt-svid issued"
            );
            svids.push(svid);
        }
        Ok(svids)
    }

    /// Validates a JWT-SVID for `audience` on behalf of a caller.
    pub fn validate(
        &self,
        svid: &str,
        audience: &str,
    ) -> Result<ValidatedJwtSvid, WorkloadApiError> {
        if audience.is_empty() {
            return Err(WorkloadApiError::AudienceMissing);
        }
        if svid.is_empty() {
            return Err(WorkloadApiError::SvidMissing);
        }
        self.identity
            .validate_jwt_svid(svid, audience)
            .map_err(WorkloadApiError::InvalidJwtSvid)
    }

    /// The trust domain's X.509 roots, concatenated DER (the wire format).
    pub fn x509_bundle(&self) -> Vec<u8> {
        self.identity.x509_authorities().concat()
    }

    /// The trust domain's JWT keys, JWKS JSON (the wire format).
    pub fn jwt_bundle(&self) -> Result<Vec<u8>, WorkloadApiError> {
        serde_json::to_vec(&self.identity.jwt_authorities())
            .map_err(|_| WorkloadApiError::Internal("jwt bundle does not serialize"))
    }

    /// The name bundles are keyed by (`example.org`).
    pub fn trust_domain_name(&self) -> String {
        self.identity.trust_domain().to_string()
    }

    /// Records an `attestation.denied` event. A denial stands even when the
    /// audit log is down, so a sink failure is only logged here.
    async fn denied(&self, selectors: &[Selector], pid: Option<i32>, reason: &str) {
        let mut event = Event::new("attestation.denied", Outcome::Denied)
            .reason(reason)
            .detail("selectors", selector_texts(selectors));
        if let Some(pid) = pid {
            event = event.detail("pid", pid);
        }
        if let Err(err) = self.events.record(event).await {
            tracing::error!(error = %err, "cannot record attestation denial");
        }
    }
}

fn issued_event(
    caller: &Caller,
    spiffe_id: &SpiffeId,
    kind: &str,
    expires_at: SystemTime,
) -> Event {
    let mut event = Event::new("svid.issued", Outcome::Success)
        .agent(spiffe_id.to_string())
        .detail("kind", kind)
        .detail("expires_at", unix_millis(expires_at))
        .detail("selectors", caller.selector_texts())
        .detail("pid", caller.attestation.pid);
    let expires_in = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    event.token_expires_in = i64::try_from(expires_in.as_secs()).ok();
    event
}

/// The `jti` claim of a compact JWS, for the audit trail (the token itself
/// is a bearer credential and never logged).
fn jwt_id(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("jti")?.as_str().map(str::to_owned)
}

/// Keeps the first entry for each SPIFFE ID: two entries granting the same
/// ID (say, by uid and by path) are one identity to the workload.
fn dedup_by_spiffe_id(entries: Vec<RegistrationEntry>) -> Vec<RegistrationEntry> {
    let mut seen = std::collections::HashSet::new();
    entries
        .into_iter()
        .filter(|e| seen.insert(e.spiffe_id.to_string()))
        .collect()
}

/// Half of the validity the workload actually received. `notBefore` may be
/// backdated for clock skew, so the half is taken from the later of
/// `notBefore` and the moment of minting.
fn half_life(minted_at: SystemTime, not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let start = minted_at.max(not_before);
    let remaining = not_after.duration_since(start).unwrap_or(Duration::ZERO);
    start + remaining / 2
}

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

fn selector_texts(selectors: &[Selector]) -> Vec<String> {
    selectors.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn half_life_ignores_backdating() {
        let now = SystemTime::now();
        let secs = Duration::from_secs;
        // Not backdated: exactly half.
        assert_eq!(half_life(now, now, now + secs(4)), now + secs(2));
        // Backdated by 10 s: half of what is left, not a time in the past.
        assert_eq!(half_life(now, now - secs(10), now + secs(4)), now + secs(2));
        // Already expired: now, never earlier.
        assert_eq!(half_life(now, now - secs(10), now - secs(1)), now);
    }

    #[test]
    fn jwt_id_reads_the_payload() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"ES256"}"#),
            b64(r#"{"jti":"abc"}"#)
        );
        assert_eq!(jwt_id(&token).as_deref(), Some("abc"));
        assert_eq!(jwt_id("garbage"), None);
    }
}
