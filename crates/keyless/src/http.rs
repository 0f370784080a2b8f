//! The one HTTP listener: composes each crate's router under the fixed paths
//! of DESIGN.md and adds the operations endpoints.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use keyless_audit::AuditLog;
use keyless_identity::Identity;
use keyless_secrets::Secrets;
use keyless_sts::Sts;

#[derive(Clone)]
pub struct HttpState {
    pub identity: Arc<Identity>,
    pub audit: Arc<AuditLog>,
    pub sts: Arc<Sts>,
    pub secrets: Arc<Secrets>,
    pub started: Instant,
}

/// Largest request body any endpoint accepts (bigger ones get 413).
pub const MAX_BODY_BYTES: usize = 1 << 20;

pub fn router(state: HttpState) -> Router {
    let ops = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state.clone());
    Router::new()
        .merge(keyless_identity::http::router(state.identity.clone()))
        .merge(keyless_audit::http::router(state.audit.clone()))
        .merge(keyless_sts::http::router(state.sts.clone()))
        .merge(keyless_secrets::http::router(state.secrets.clone()))
        .merge(ops)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.identity.x509_authorities().is_empty() {
        (StatusCode::SERVICE_UNAVAILABLE, "no active CA")
    } else {
        (StatusCode::OK, "ready")
    }
}

/// Prometheus text format.
async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let entries = s.identity.list_entries().await.len();
    let body = format!(
        "# HELP keyless_uptime_seconds Seconds since the process started.\n\
         # TYPE keyless_uptime_seconds gauge\n\
         keyless_uptime_seconds {}\n\
         # HELP keyless_registration_entries Registration entries known.\n\
         # TYPE keyless_registration_entries gauge\n\
         keyless_registration_entries {entries}\n\
         # HELP keyless_trust_bundle_roots X.509 roots in the trust bundle.\n\
         # TYPE keyless_trust_bundle_roots gauge\n\
         keyless_trust_bundle_roots {}\n",
        s.started.elapsed().as_secs_f64(),
        s.identity.x509_authorities().len(),
    );
    let mut body = body;
    body.push_str(&secrets_metrics(&s.secrets).await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Lease gauges: live leases per engine, and the revocation backlog (a
/// growing backlog means an engine keeps refusing revocations).
async fn secrets_metrics(secrets: &Secrets) -> String {
    let mut out = String::new();
    if let Ok(counts) = secrets.lease_counts().await {
        out.push_str(
            "# HELP keyless_secrets_leases Live leases per secrets engine.\n\
             # TYPE keyless_secrets_leases gauge\n",
        );
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort();
        for (engine, n) in counts {
            out.push_str(&format!(
                "keyless_secrets_leases{{engine=\"{engine}\"}} {n}\n"
            ));
        }
    }
    if let Ok(n) = secrets.revocation_backlog().await {
        out.push_str(&format!(
            "# HELP keyless_secrets_revocation_backlog Leases whose revocation is pending or being retried.\n\
             # TYPE keyless_secrets_revocation_backlog gauge\n\
             keyless_secrets_revocation_backlog {n}\n"
        ));
    }
    out
}
