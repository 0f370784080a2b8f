//! JWT-SVID login, roles and broker tokens: what is accepted, what is
//! refused (and that a refusal changes nothing), and how tokens live.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use common::*;
use keyless_secrets::{SecretsError, TokenType, hash_token};
use serde_json::json;

fn invalid(e: SecretsError) -> String {
    match e {
        SecretsError::InvalidRequest(m) => m,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

#[tokio::test]
async fn login_with_a_jwt_svid_issues_a_service_token_stored_only_as_a_hash() {
    let f = open().await;
    f.role("agents", "spiffe://example.org/agent/*", &["read-kv"])
        .await;
    let jwt = f.svid(AGENT, AUD).await;
    let login = f.secrets.login_jwt("agents", &jwt).await.unwrap();
    assert!(login.client_token.starts_with("hvs."));
    assert_eq!(login.info.identity, AGENT);
    assert_eq!(login.info.policies, vec!["default", "read-kv"]);
    assert_eq!(login.info.token_type, TokenType::Service);
    assert!(!login.info.accessor.is_empty());
    let ttl = login.info.expires_at - login.info.created_at;
    assert_eq!(ttl, 3600 * 1000);

    // Only the hash is stored.
    let rows: Vec<(String,)> = sqlx::query_as("SELECT token_hash FROM secrets_tokens")
        .fetch_all(f.store.pool())
        .await
        .unwrap();
    assert_eq!(rows, vec![(hash_token(&login.client_token),)]);

    let resolved = f
        .secrets
        .resolve_token(Some(&login.client_token))
        .await
        .unwrap();
    assert_eq!(resolved.accessor, login.info.accessor);
    assert!(
        f.event_kinds()
            .contains(&"secrets.login.success".to_owned())
    );
}

#[tokio::test]
async fn unknown_role_is_refused_with_vaults_message() {
    let f = open().await;
    let jwt = f.svid(AGENT, AUD).await;
    let e = invalid(f.secrets.login_jwt("nope", &jwt).await.unwrap_err());
    assert_eq!(e, "role \"nope\" could not be found");
    assert!(f.event_kinds().contains(&"secrets.login.denied".to_owned()));
}

#[tokio::test]
async fn wrong_audience_and_garbage_jwts_are_refused() {
    let f = open().await;
    f.role("agents", AGENT, &[]).await;
    let other_aud = f.svid(AGENT, "somebody-else").await;
    let e = invalid(f.secrets.login_jwt("agents", &other_aud).await.unwrap_err());
    assert!(e.starts_with("error validating token: "), "{e}");
    let e = invalid(
        f.secrets
            .login_jwt("agents", "not.a.jwt")
            .await
            .unwrap_err(),
    );
    assert!(e.starts_with("error validating token: "), "{e}");
    // Nothing was issued.
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM secrets_tokens")
        .fetch_one(f.store.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn bound_subject_exact_and_glob() {
    let f = open().await;
    f.role("exact", AGENT, &[]).await;
    f.role("glob", "spiffe://example.org/agent/*", &[]).await;
    f.role("elsewhere", "spiffe://example.org/db/*", &[]).await;
    let jwt = f.svid(OTHER, AUD).await;
    let e = invalid(f.secrets.login_jwt("exact", &jwt).await.unwrap_err());
    assert!(e.contains("sub claim does not match bound subject"), "{e}");
    assert!(f.secrets.login_jwt("glob", &jwt).await.is_ok());
    assert!(f.secrets.login_jwt("elsewhere", &jwt).await.is_err());
}

#[tokio::test]
async fn bound_claims_are_enforced() {
    let f = open().await;
    let mut r = role("claims", "", &[]);
    r.bound_claims = json!({ "iss": ["http://wrong.example"] })
        .as_object()
        .unwrap()
        .clone();
    f.secrets.write_role(r.clone()).await.unwrap();
    let jwt = f.svid(AGENT, AUD).await;
    let e = invalid(f.secrets.login_jwt("claims", &jwt).await.unwrap_err());
    assert!(e.contains("claim \"iss\""), "{e}");
    r.bound_claims = json!({ "iss": format!("{ISSUER}*") })
        .as_object()
        .unwrap()
        .clone();
    r.bound_claims_type = keyless_secrets::BoundClaimsType::Glob;
    f.secrets.write_role(r).await.unwrap();
    assert!(f.secrets.login_jwt("claims", &jwt).await.is_ok());
}

#[tokio::test]
async fn single_use_role_refuses_a_replayed_jti() {
    let f = open().await;
    let mut r = role("once", AGENT, &[]);
    r.single_use_jti = true;
    f.secrets.write_role(r).await.unwrap();
    let jwt = f.svid(AGENT, AUD).await;
    f.secrets.login_jwt("once", &jwt).await.unwrap();
    let e = invalid(f.secrets.login_jwt("once", &jwt).await.unwrap_err());
    assert!(e.contains("already used"), "{e}");
    // A role without the option accepts the same JWT again.
    f.role("many", AGENT, &[]).await;
    f.secrets.login_jwt("many", &jwt).await.unwrap();
    f.secrets.login_jwt("many", &jwt).await.unwrap();
}

#[tokio::test]
async fn batch_tokens_are_stateless_signed_and_tamper_evident() {
    let f = open().await;
    let mut r = role("batch", AGENT, &["p"]);
    r.token_type = TokenType::Batch;
    r.token_ttl = 60;
    f.secrets.write_role(r).await.unwrap();
    let jwt = f.svid(AGENT, AUD).await;
    let login = f.secrets.login_jwt("batch", &jwt).await.unwrap();
    assert!(login.client_token.starts_with("hvb."));
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM secrets_tokens")
        .fetch_one(f.store.pool())
        .await
        .unwrap();
    assert_eq!(n, 0, "batch tokens are not stored");
    let info = f
        .secrets
        .resolve_token(Some(&login.client_token))
        .await
        .unwrap();
    assert_eq!(info.policies, vec!["default", "p"]);
    assert_eq!(info.identity, AGENT);

    // Changing the claims (say, adding a policy) breaks the signature.
    let (signed, sig) = login.client_token.rsplit_once('.').unwrap();
    let body = signed.strip_prefix("hvb.").unwrap();
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: serde_json::Value =
        serde_json::from_slice(&engine.decode(body).unwrap()).unwrap();
    claims["policies"] = json!(["default", "p", "admin"]);
    let forged = format!(
        "hvb.{}.{sig}",
        engine.encode(serde_json::to_vec(&claims).unwrap())
    );
    assert!(matches!(
        f.secrets.resolve_token(Some(&forged)).await,
        Err(SecretsError::PermissionDenied)
    ));
    // Batch tokens cannot be renewed.
    assert!(f.secrets.renew_token(&info, None).await.is_err());
}

#[tokio::test]
async fn unknown_missing_and_revoked_tokens_are_permission_denied() {
    let f = open().await;
    for t in [None, Some(""), Some("hvs.nope"), Some("hvb.x.y")] {
        assert!(matches!(
            f.secrets.resolve_token(t).await,
            Err(SecretsError::PermissionDenied)
        ));
    }
    let info = f.login("r", &[]).await;
    f.secrets.revoke_token(&info).await.unwrap();
    assert!(matches!(
        f.secrets.resolve_token(Some(&info.token)).await,
        Err(SecretsError::PermissionDenied)
    ));
}

#[tokio::test]
async fn renew_is_capped_at_max_ttl_with_a_warning() {
    let f = open().await;
    let info = f.login("r", &[]).await;
    let (renewed, warning) = f
        .secrets
        .renew_token(&info, Some(Duration::from_secs(600)))
        .await
        .unwrap();
    assert!(warning.is_none());
    let left = renewed.expires_at - keyless_store::now_millis();
    assert!((590_000..=600_000).contains(&left), "{left}");
    let (capped, warning) = f
        .secrets
        .renew_token(&info, Some(Duration::from_secs(100 * 3600)))
        .await
        .unwrap();
    assert!(warning.unwrap().contains("capped"));
    assert_eq!(capped.expires_at, info.max_expires_at);
}

#[tokio::test]
async fn num_uses_limits_a_token() {
    let f = open().await;
    let mut r = role("two", AGENT, &[]);
    r.token_num_uses = 2;
    f.secrets.write_role(r).await.unwrap();
    let jwt = f.svid(AGENT, AUD).await;
    let token = f.secrets.login_jwt("two", &jwt).await.unwrap().client_token;
    assert!(f.secrets.resolve_token(Some(&token)).await.is_ok());
    assert!(f.secrets.resolve_token(Some(&token)).await.is_ok());
    assert!(f.secrets.resolve_token(Some(&token)).await.is_err());
}

#[tokio::test]
async fn token_quota_refuses_a_login_explosion_with_a_clear_error() {
    let mut config = test_config();
    config.max_tokens_per_identity = 3;
    let f = open_with(config).await;
    f.role("r", AGENT, &[]).await;
    for _ in 0..3 {
        let jwt = f.svid(AGENT, AUD).await;
        f.secrets.login_jwt("r", &jwt).await.unwrap();
    }
    let jwt = f.svid(AGENT, AUD).await;
    match f.secrets.login_jwt("r", &jwt).await {
        Err(SecretsError::QuotaExceeded(m)) => {
            assert!(
                m.contains("token quota exceeded") && m.contains(AGENT),
                "{m}"
            )
        }
        other => panic!("expected a quota error, got {other:?}"),
    }
    // Another identity is not affected.
    f.login_as("o", OTHER, &[]).await;
}

#[tokio::test]
async fn invalid_roles_are_refused_and_change_nothing() {
    let f = open().await;
    f.role("keep", AGENT, &["a"]).await;
    let mut bad = role("keep", AGENT, &["b"]);
    bad.bound_audiences.clear();
    assert!(matches!(
        f.secrets.write_role(bad).await,
        Err(SecretsError::InvalidRequest(_))
    ));
    let mut bad = role("keep", AGENT, &["b"]);
    bad.token_ttl = 10 * 3600;
    assert!(f.secrets.write_role(bad).await.is_err());
    assert!(
        f.secrets
            .write_role(role("bad name!", AGENT, &[]))
            .await
            .is_err()
    );
    assert!(
        f.secrets
            .write_role(role("keep", AGENT, &["root"]))
            .await
            .is_err()
    );
    let kept = f.secrets.role("keep").await.unwrap().unwrap();
    assert_eq!(kept.token_policies, vec!["a"]);
    // Unknown fields are refused, not ignored.
    assert!(
        serde_json::from_value::<keyless_secrets::JwtRole>(
            json!({"name": "x", "bound_audience": "a"})
        )
        .is_err()
    );
}

/// A JWT-SVID signed by the trust domain's real key but expired (or not
/// yet valid) is refused, and nothing is issued.
#[tokio::test]
async fn an_expired_or_not_yet_valid_jwt_svid_is_refused() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use keyless_store::KeyManager;

    let f = open().await;
    f.role("agents", AGENT, &[]).await;
    let good = f.svid(AGENT, AUD).await;
    let part = |i: usize| -> serde_json::Value {
        serde_json::from_slice(&B64.decode(good.split('.').nth(i).unwrap()).unwrap()).unwrap()
    };
    let (header, claims) = (part(0), part(1));
    // The identity's JWT signing key, found by its public key.
    let jwks = f.identity.jwt_authorities();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap()
        .clone();
    let mut signer = None;
    for name in f.keys.list().await.unwrap() {
        if let Ok(s) = f.keys.load(&name).await {
            let pk = s.public_key();
            if pk.len() == 65 && B64.encode(&pk[1..33]) == jwk["x"].as_str().unwrap() {
                signer = Some(s);
            }
        }
    }
    let signer = signer.unwrap();
    let forge = |claims: &serde_json::Value| {
        let input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).unwrap()),
            B64.encode(serde_json::to_vec(claims).unwrap())
        );
        format!(
            "{input}.{}",
            B64.encode(signer.sign(input.as_bytes()).unwrap())
        )
    };
    // Control: a re-signed copy of the real SVID is accepted.
    f.secrets
        .login_jwt("agents", &forge(&claims))
        .await
        .unwrap();
    let now = keyless_store::now_millis() / 1000;
    let mut expired = claims.clone();
    expired["iat"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let e = invalid(
        f.secrets
            .login_jwt("agents", &forge(&expired))
            .await
            .unwrap_err(),
    );
    assert!(
        e.starts_with("error validating token: ") && e.contains("expired"),
        "{e}"
    );
    let mut early = claims.clone();
    early["nbf"] = json!(now + 3600);
    let e = invalid(
        f.secrets
            .login_jwt("agents", &forge(&early))
            .await
            .unwrap_err(),
    );
    assert!(e.contains("not yet valid"), "{e}");
    // Only the control login issued a token.
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM secrets_tokens")
        .fetch_one(f.store.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);
}
