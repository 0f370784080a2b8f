//! Response wrapping: single use, sealed at rest, bound to its token.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use common::*;
use keyless_secrets::SecretsError;
use serde_json::json;

fn invalid_wrap(r: Result<impl std::fmt::Debug, SecretsError>) {
    match r {
        Err(SecretsError::InvalidRequest(m)) => {
            assert_eq!(m, "wrapping token is not valid or does not exist")
        }
        other => panic!("expected an invalid wrapping token, got {other:?}"),
    }
}

#[tokio::test]
async fn unwrap_returns_the_response_once() {
    let f = open().await;
    let body = json!({"data": {"password": "hunter2"}});
    let info = f
        .secrets
        .wrap(AGENT, "secret/data/x", &body, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(info.token.starts_with("hvs."));
    assert_eq!(info.ttl, 60);
    let lookup = f.secrets.wrap_lookup(&info.token).await.unwrap();
    assert_eq!(lookup.creation_path, "secret/data/x");
    assert_eq!(lookup.creation_ttl, 60);
    assert_eq!(f.secrets.unwrap(AGENT, &info.token).await.unwrap(), body);
    invalid_wrap(f.secrets.unwrap(AGENT, &info.token).await);
    invalid_wrap(f.secrets.wrap_lookup(&info.token).await);
    let kinds = f.event_kinds();
    assert!(kinds.contains(&"secrets.wrap.created".to_owned()));
    assert!(kinds.contains(&"secrets.wrap.unwrapped".to_owned()));
}

#[tokio::test]
async fn the_wrapped_response_is_sealed_at_rest_and_bound_to_its_token() {
    let f = open().await;
    let a = f
        .secrets
        .wrap(
            AGENT,
            "p",
            &json!({"secret": "needle-123"}),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let b = f
        .secrets
        .wrap(
            AGENT,
            "p",
            &json!({"secret": "other"}),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let rows: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT sealed FROM secrets_wrapping")
        .fetch_all(f.store.pool())
        .await
        .unwrap();
    for (sealed,) in &rows {
        assert!(!String::from_utf8_lossy(sealed).contains("needle-123"));
    }
    // Moving a's ciphertext under b's token does not open.
    sqlx::query("UPDATE secrets_wrapping SET sealed = (SELECT sealed FROM secrets_wrapping WHERE token_hash = $1) WHERE token_hash = $2")
        .bind(keyless_secrets::hash_token(&a.token))
        .bind(keyless_secrets::hash_token(&b.token))
        .execute(f.store.pool())
        .await
        .unwrap();
    assert!(matches!(
        f.secrets.unwrap(AGENT, &b.token).await,
        Err(SecretsError::Decrypt(_))
    ));
}

#[tokio::test]
async fn expired_unknown_and_bad_ttls_are_refused() {
    let f = open().await;
    let info = f
        .secrets
        .wrap(AGENT, "p", &json!({}), Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    invalid_wrap(f.secrets.unwrap(AGENT, &info.token).await);
    invalid_wrap(f.secrets.unwrap(AGENT, "hvs.nope").await);
    assert!(
        f.secrets
            .wrap(AGENT, "p", &json!({}), Duration::ZERO)
            .await
            .is_err()
    );
    assert!(
        f.secrets
            .wrap(AGENT, "p", &json!({}), Duration::from_secs(365 * 24 * 3600))
            .await
            .is_err()
    );
}
