//! Scheduled upkeep: signing-key rotation by age, retired keys kept in the
//! JWKS until every token they signed has expired and then removed, the
//! purges, the background task with short intervals; and the events of
//! consents and policy reloads naming what a reader needs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use keyless_audit::{EventSink, Outcome};
use keyless_store::{KeyManager, Store, now_millis};
use keyless_sts::StsConfig;
use keyless_sts::policy::{DEFAULT_POLICIES, LoadedPolicies, PolicyStore};

/// Writes `content` to `path` atomically (a rename), as editors and
/// config-management tools do, so the watcher never sees half a file.
fn put(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn kids(f: &Fixture) -> Vec<String> {
    f.sts.jwks()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn open_config(config: StsConfig) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&tmp.path().join("keyless.db"))
        .await
        .unwrap();
    let mut f = open_with(store, &tmp.path().join("keys"), config).await;
    f._tmp = Some(tmp);
    f
}

#[tokio::test]
async fn the_signing_key_rotates_when_it_reaches_its_lifetime() {
    let mut config = StsConfig::new(ISSUER);
    config.signing_key_lifetime = Duration::from_secs(3600);
    let f = open_config(config).await;
    let t0 = now_millis();
    let before = f.user_token(&[AGENT]).await;

    let report = f.sts.run_maintenance_at(t0).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(!report.rotated, "a fresh key does not rotate");
    assert_eq!(kids(&f).len(), 1);

    let report = f.sts.run_maintenance_at(t0 + 3_600_000 + 1_000).await;
    assert!(report.rotated, "an hour-old key rotates");
    assert!(
        report.removed_keys.is_empty(),
        "the old key is still needed"
    );
    let k = kids(&f);
    assert_eq!(k.len(), 2, "the old key stays in the JWKS");
    // New tokens use the new key; the old token still verifies.
    let after = f.user_token(&[AGENT]).await;
    assert_eq!(jws_part(&after, 0)["kid"], k[1].as_str());
    assert_eq!(jws_part(&before, 0)["kid"], k[0].as_str());
    f.sts.verify_access_token(&before, None).await.unwrap();
    f.sts.verify_access_token(&after, None).await.unwrap();
    assert!(f.event_kinds().contains(&"sts_key.rotated".to_owned()));
}

#[tokio::test]
async fn a_retired_key_leaves_the_jwks_only_after_every_token_it_signed_expired() {
    let mut config = StsConfig::new(ISSUER);
    config.signing_key_lifetime = Duration::from_secs(90 * 24 * 3600);
    let f = open_config(config.clone()).await;
    let old = f.user_token(&[AGENT]).await;
    let old_kid = jws_part(&old, 0)["kid"].as_str().unwrap().to_owned();
    f.sts.rotate_signing_key().await.unwrap();
    let t0 = now_millis();
    let keep = i64::try_from(config.max_signed_token_lifetime().as_millis()).unwrap();
    // 10 min access tokens + 5 s leeway.
    assert_eq!(keep, 605_000);

    // Within the lifetime of what it signed (and the margin): kept.
    let report = f.sts.run_maintenance_at(t0 + keep).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(!report.rotated);
    assert!(report.removed_keys.is_empty());
    assert!(kids(&f).contains(&old_kid));
    f.sts.verify_access_token(&old, None).await.unwrap();

    // Past it: removed from the JWKS, the store and the key manager.
    let report = f.sts.run_maintenance_at(t0 + keep + 61_000).await;
    assert_eq!(report.removed_keys, vec![1]);
    assert!(!report.rotated, "the active key is younger than 90 days");
    assert_eq!(kids(&f).len(), 1);
    assert!(!kids(&f).contains(&old_kid));
    let err = f.sts.verify_access_token(&old, None).await.unwrap_err();
    assert!(err.to_string().contains("unknown key id"), "{err}");
    let names = f.keys.list().await.unwrap();
    assert!(!names.contains(&"sts-signing-1".to_owned()), "{names:?}");
    assert!(names.contains(&"sts-signing-2".to_owned()), "{names:?}");
    // The active key signs and verifies as before.
    let new = f.user_token(&[AGENT]).await;
    f.sts.verify_access_token(&new, None).await.unwrap();
    let removed = f
        .events
        .events()
        .into_iter()
        .find(|e| e.kind == keyless_sts::STS_KEY_REMOVED)
        .unwrap();
    assert_eq!(removed.detail["generation"], 1);
    // Idempotent: a second pass (another replica) removes nothing more.
    let again = f.sts.run_maintenance_at(t0 + keep + 61_000).await;
    assert!(again.removed_keys.is_empty() && again.errors.is_empty());
}

#[tokio::test]
async fn purges_drop_only_what_has_expired() {
    let f = open().await;
    f.sts.consume("long-expired", 1).await.unwrap();
    f.sts.consume("still-live", 4_000_000_000).await.unwrap();
    let report = f.sts.run_maintenance().await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.purged_consumed, 1);
    // The live id is still single use; the purged one is forgotten.
    assert!(f.sts.consume("still-live", 4_000_000_000).await.is_err());
    f.sts.consume("long-expired", 1).await.unwrap();
}

#[tokio::test]
async fn the_maintenance_task_runs_on_its_interval_and_stops_at_shutdown() {
    let mut config = StsConfig::new(ISSUER);
    config.maintenance_interval = Duration::from_millis(20);
    config.signing_key_lifetime = Duration::from_secs(1);
    let f = open_config(config).await;
    f.sts.consume("expired-jti", 1).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = f.sts.spawn_maintenance(async {
        let _ = stop_rx.await;
    });

    // Within a bounded wait: the purge ran and the 1 s key rotated.
    let mut purged = false;
    let mut rotated = false;
    for _ in 0..150 {
        if !purged && f.sts.consume("expired-jti", 1).await.is_ok() {
            purged = true;
        }
        rotated = kids(&f).len() >= 2;
        if purged && rotated {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(purged, "the consumed id was not purged");
    assert!(rotated, "the signing key did not rotate");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task stops at shutdown")
        .unwrap();
}

#[tokio::test]
async fn invalid_maintenance_settings_are_refused() {
    for (lifetime, interval) in [
        (Duration::from_millis(10), Duration::from_secs(60)),
        (Duration::from_secs(91 * 24 * 3600), Duration::from_secs(60)),
        (Duration::from_secs(3600), Duration::ZERO),
        (Duration::from_secs(3600), Duration::from_secs(7200)),
    ] {
        let mut config = StsConfig::new(ISSUER);
        config.signing_key_lifetime = lifetime;
        config.maintenance_interval = interval;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&tmp.path().join("k.db")).await.unwrap();
        let keys = Arc::new(keyless_store::FileKeyManager::open(&tmp.path().join("keys")).unwrap());
        let events = Arc::new(keyless_audit::MemorySink::default());
        let identity = keyless_identity::Identity::open(
            store.clone(),
            keys.clone(),
            events.clone(),
            keyless_identity::IdentityConfig::new(TD.parse().unwrap(), ISSUER.to_owned()),
        )
        .await
        .unwrap();
        let err = keyless_sts::Sts::open(
            store,
            keys as Arc<dyn KeyManager>,
            identity,
            events.clone(),
            config,
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("signing_key_lifetime")
                || err.to_string().contains("maintenance_interval"),
            "{err}"
        );
        // Nothing was created: no signing key, no event from the STS.
        assert!(
            !events
                .events()
                .iter()
                .any(|e| e.kind.starts_with("sts_key"))
        );
    }
}

#[tokio::test]
async fn consent_events_name_the_user_by_email_and_keep_the_subject() {
    let f = open().await;
    let user = f
        .sts
        .add_user("carol@example.com", "a long enough password 1")
        .await
        .unwrap();
    let consent = f
        .sts
        .grant_consent(&user.id, AGENT, &["directory_read".into()], &[])
        .await
        .unwrap();
    let granted = f.events.events().pop().unwrap();
    assert_eq!(granted.kind, "consent.granted");
    assert_eq!(granted.user.as_deref(), Some("carol@example.com"));
    assert_eq!(granted.detail["user_sub"], user.id.as_str());
    f.sts.revoke_consent(&consent.id).await.unwrap();
    let revoked = f.events.events().pop().unwrap();
    assert_eq!(revoked.kind, "consent.revoked");
    assert_eq!(revoked.user.as_deref(), Some("carol@example.com"));
    assert_eq!(revoked.detail["user_sub"], user.id.as_str());
    // A subject that is not a local user (e.g. federated) keeps its id.
    f.consent(AGENT, &["directory_read"]).await;
    assert_eq!(
        f.events.events().pop().unwrap().user.as_deref(),
        Some(ALICE)
    );
}

#[tokio::test]
async fn the_policy_watcher_records_reloads_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    assert!(LoadedPolicies::seed_dir(&dir).unwrap());
    assert!(!LoadedPolicies::seed_dir(&dir).unwrap(), "seeds only once");
    assert_eq!(
        std::fs::read_to_string(dir.join("default.cedar")).unwrap(),
        DEFAULT_POLICIES
    );
    let store = Arc::new(PolicyStore::new(LoadedPolicies::from_dir(&dir).unwrap()));
    let sink = Arc::new(keyless_audit::MemorySink::default());
    let watch = store.spawn_watch_recording(
        dir.clone(),
        Duration::from_millis(20),
        Some(sink.clone() as Arc<dyn EventSink>),
    );
    let wait_for = |kind: &'static str, n: usize| {
        let sink = sink.clone();
        async move {
            for _ in 0..200 {
                if sink.events().iter().filter(|e| e.kind == kind).count() >= n {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        }
    };

    put(
        &dir.join("freeze.cedar"),
        "@id(\"freeze\") @reason(\"maintenance\") forbid(principal, action, resource);",
    );
    assert!(wait_for("policy.reloaded", 1).await);
    assert!(store.current().ids.contains(&"freeze".to_owned()));

    put(
        &dir.join("broken.cedar"),
        "permit(principal, action, resource) when {",
    );
    assert!(wait_for("policy.reload_refused", 1).await);
    let refused = sink
        .events()
        .into_iter()
        .find(|e| e.kind == "policy.reload_refused")
        .unwrap();
    assert_eq!(refused.outcome, Outcome::Error);
    assert!(refused.reason.unwrap().contains("policies"));
    assert!(
        store.current().ids.contains(&"freeze".to_owned()),
        "the previous set stays in force"
    );
    // Same size and (coarse) mtime, other content: still noticed.
    put(
        &dir.join("broken.cedar"),
        "permit(principal, action, resource) when }",
    );
    assert!(wait_for("policy.reload_refused", 2).await);
    watch.abort();
}
