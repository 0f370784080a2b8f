//! The broker in OpenBao mode against a small in-process fake of OpenBao's
//! HTTP API: the wiring (Keyless's own JWT-SVID at login, KV and database
//! credentials served by the backend, events recorded, Keyless leases
//! forwarded to OpenBao's) and the error paths. The real OpenBao is
//! exercised in `tests/interop/test_secrets_openbao.py`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use common::*;
use keyless_identity::Identity;
use keyless_secrets::SecretsError;
use keyless_secrets::openbao::{ENGINE_OPENBAO, OpenBaoConfig};
use serde_json::{Value, json};

struct FakeBao {
    identity: Arc<Identity>,
    /// SPIFFE IDs that logged in.
    logins: Mutex<Vec<String>>,
    revoked: Mutex<Vec<String>>,
    renewed: Mutex<Vec<(String, u64)>>,
    /// Database credentials come without a password (a broken backend).
    creds_without_password: bool,
}

type St = State<Arc<FakeBao>>;

async fn login(State(f): St, body: Bytes) -> (StatusCode, axum::Json<Value>) {
    let b: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(b["role"], "keyless-broker");
    match f
        .identity
        .validate_jwt_svid(b["jwt"].as_str().unwrap(), "openbao")
    {
        Ok(svid) => {
            f.logins.lock().unwrap().push(svid.spiffe_id.to_string());
            (
                StatusCode::OK,
                axum::Json(
                    json!({ "auth": { "client_token": "s.fakefakefakefakefakefake", "lease_duration": 300 } }),
                ),
            )
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "errors": [format!("error validating token: {e}")] })),
        ),
    }
}

async fn kv(headers: axum::http::HeaderMap) -> axum::Json<Value> {
    assert_eq!(
        headers.get("x-vault-token").unwrap(),
        "s.fakefakefakefakefakefake"
    );
    axum::Json(json!({ "data": {
        "data": { "password": "from-bao" },
        "metadata": { "created_time": "2026-01-01T00:00:00Z", "custom_metadata": null,
                      "deletion_time": "", "destroyed": false, "version": 7 }
    }}))
}

async fn creds(State(f): St) -> axum::Json<Value> {
    let data = if f.creds_without_password {
        json!({ "username": "v-ro-1" })
    } else {
        json!({ "username": "v-ro-1", "password": "pw" })
    };
    axum::Json(json!({
        "lease_id": "database/creds/ro/BAOLEASE",
        "lease_duration": 300,
        "renewable": true,
        "data": data,
    }))
}

async fn revoke(State(f): St, body: Bytes) -> StatusCode {
    let b: Value = serde_json::from_slice(&body).unwrap();
    f.revoked
        .lock()
        .unwrap()
        .push(b["lease_id"].as_str().unwrap().to_owned());
    StatusCode::NO_CONTENT
}

async fn renew(State(f): St, body: Bytes) -> axum::Json<Value> {
    let b: Value = serde_json::from_slice(&body).unwrap();
    let inc = b["increment"].as_u64().unwrap();
    f.renewed
        .lock()
        .unwrap()
        .push((b["lease_id"].as_str().unwrap().to_owned(), inc));
    axum::Json(json!({ "lease_id": b["lease_id"], "lease_duration": inc, "renewable": true }))
}

async fn start(f: &Fixture, creds_without_password: bool) -> (Arc<FakeBao>, String) {
    let fake = Arc::new(FakeBao {
        identity: f.identity.clone(),
        logins: Mutex::default(),
        revoked: Mutex::default(),
        renewed: Mutex::default(),
        creds_without_password,
    });
    let app = Router::new()
        .route("/v1/auth/jwt/login", post(login))
        .route("/v1/secret/data/{*p}", get(kv))
        .route("/v1/database/creds/{role}", get(creds))
        .route("/v1/sys/leases/revoke", put(revoke))
        .route("/v1/sys/leases/renew", put(renew))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, format!("http://{addr}"))
}

#[tokio::test]
async fn kv_and_credentials_come_from_openbao_under_keyless_leases() {
    let f = open().await;
    let (fake, addr) = start(&f, false).await;
    f.secrets
        .use_openbao(OpenBaoConfig::new(addr.clone(), "keyless-broker"))
        .unwrap();
    let caller = f.login("app", &[]).await;

    let read = f
        .secrets
        .kv_read(&caller, "app/db", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.data.unwrap()["password"], "from-bao");
    assert_eq!(read.meta.version, 7);
    assert!(f.secrets.kv().get("app/db", None).await.unwrap().is_none());
    assert!(f.event_kinds().contains(&"secret.read".to_owned()));
    // Keyless logged in as its broker identity, never as a workload's.
    assert_eq!(
        *fake.logins.lock().unwrap(),
        vec!["spiffe://example.org/keyless/secrets-broker".to_owned()]
    );

    let (lease, user, password) = f.secrets.issue_db_creds(&caller, "ro").await.unwrap();
    assert_eq!((user.as_str(), password.as_str()), ("v-ro-1", "pw"));
    assert_eq!(lease.engine, ENGINE_OPENBAO);
    assert!(lease.lease_id.starts_with("database/creds/ro/"));
    assert_ne!(lease.lease_id, "database/creds/ro/BAOLEASE");
    assert_eq!(lease.ttl_secs(), 300);

    let (renewed, _) = f
        .secrets
        .renew_lease(&lease, Some(std::time::Duration::from_secs(600)))
        .await
        .unwrap();
    assert_eq!(renewed.ttl_secs(), 600);
    let forwarded = fake.renewed.lock().unwrap().clone();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].0, "database/creds/ro/BAOLEASE");
    assert!((595..=600).contains(&forwarded[0].1), "{forwarded:?}");

    f.secrets.revoke_lease(&lease.lease_id).await.unwrap();
    assert_eq!(
        *fake.revoked.lock().unwrap(),
        vec!["database/creds/ro/BAOLEASE".to_owned()]
    );
    // Still one login: the token is reused.
    assert_eq!(fake.logins.lock().unwrap().len(), 1);

    // Configured once only.
    let err = f
        .secrets
        .use_openbao(OpenBaoConfig::new(addr, "keyless-broker"))
        .unwrap_err();
    assert!(matches!(err, SecretsError::Conflict(_)), "{err:?}");
}

#[tokio::test]
async fn a_broken_credential_is_revoked_in_openbao_and_leaves_no_lease() {
    let f = open().await;
    let (fake, addr) = start(&f, true).await;
    f.secrets
        .use_openbao(OpenBaoConfig::new(addr, "keyless-broker"))
        .unwrap();
    let caller = f.login("app", &[]).await;
    let err = f.secrets.issue_db_creds(&caller, "ro").await.unwrap_err();
    assert!(matches!(err, SecretsError::Backend(_)), "{err:?}");
    assert!(err.to_string().contains("no `password`"), "{err}");
    assert_eq!(
        *fake.revoked.lock().unwrap(),
        vec!["database/creds/ro/BAOLEASE".to_owned()]
    );
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM secrets_leases")
        .fetch_one(f.store.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn the_local_only_kv_operations_are_refused_in_openbao_mode() {
    let f = open().await;
    assert!(f.secrets.local_kv_only("kv list").is_ok());
    f.secrets
        .use_openbao(OpenBaoConfig::new("http://127.0.0.1:1", "keyless-broker"))
        .unwrap();
    let err = f.secrets.local_kv_only("kv list").unwrap_err();
    assert!(
        err.to_string()
            .contains("kv list is not available with the openbao secrets backend"),
        "{err}"
    );
    // A bad configuration is refused and changes nothing.
    let g = open().await;
    let err = g
        .secrets
        .use_openbao(OpenBaoConfig::new("ftp://x", "r"))
        .unwrap_err();
    assert!(err.to_string().contains("only http://"), "{err}");
    assert!(g.secrets.openbao().is_none());
}
