//! Single use of on-behalf-of tokens with the real audit log on SQLite,
//! where the spend lives in memory and is made durable by its
//! `token.consumed` event: a spent token stays spent across a restart, the
//! issuance is still required, and a delegation and a resource server
//! cannot both spend one token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use keyless_audit::AuditLog;
use keyless_identity::{Identity, IdentityConfig, NewEntry, TrustDomain};
use keyless_store::{FileKeyManager, KeyManager, Store};
use keyless_sts::{ExchangeContext, Sts, StsConfig, StsError, UserTokenRequest};
use serde_json::json;

struct Fabric {
    sts: Arc<Sts>,
    identity: Arc<Identity>,
    audit: Arc<AuditLog>,
}

async fn open(dir: &Path) -> Fabric {
    let store = Store::open_sqlite(&dir.join("keyless.db")).await.unwrap();
    let keys = Arc::new(FileKeyManager::open(&dir.join("keys")).unwrap());
    let audit = AuditLog::open(
        store.clone(),
        keys.clone() as Arc<dyn KeyManager>,
        "example.org/keyless-audit".into(),
    )
    .await
    .unwrap();
    let identity = Identity::open(
        store.clone(),
        keys.clone(),
        audit.clone(),
        IdentityConfig::new(TrustDomain::new(TD).unwrap(), ISSUER.to_owned()),
    )
    .await
    .unwrap();
    let mut config = StsConfig::new(ISSUER);
    config.password_hash_cost = keyless_sts::PasswordHashCost {
        memory_kib: 64,
        iterations: 1,
    };
    let sts = Sts::open(
        store,
        keys as Arc<dyn KeyManager>,
        identity.clone(),
        audit.clone(),
        config,
    )
    .await
    .unwrap();
    Fabric {
        sts,
        identity,
        audit,
    }
}

impl Fabric {
    async fn svid(&self, spiffe_id: &str) -> String {
        let entry = match self
            .identity
            .list_entries()
            .await
            .into_iter()
            .find(|e| e.spiffe_id.as_str() == spiffe_id)
        {
            Some(e) => e,
            None => self
                .identity
                .create_entry(NewEntry::new(
                    spiffe_id.parse().unwrap(),
                    vec![
                        format!("unix:uid:{}", 2000 + spiffe_id.len())
                            .parse()
                            .unwrap(),
                    ],
                ))
                .await
                .unwrap(),
        };
        self.identity
            .mint_jwt_svid(&entry, &[ISSUER.to_owned()])
            .unwrap()
            .token
    }

    async fn user_token(&self) -> String {
        let sid = self.sts.start_session(ALICE).await.unwrap().session.sid;
        self.sts
            .mint_access_token(&UserTokenRequest {
                subject: ALICE.into(),
                email: Some(ALICE_EMAIL.into()),
                client_id: "keyless-console".into(),
                session_id: Some(sid),
                scope: Some("openid tools".into()),
                audience: vec![],
                may_act: vec![AGENT.to_owned(), OTHER_AGENT.to_owned()],
                auth_time: None,
            })
            .await
            .unwrap()
            .token
    }

    async fn obo(&self, subject: &str, agent: &str) -> String {
        let actor = self.svid(agent).await;
        let details = json!([{"type": "transfer_funds", "actions": ["transfer_funds"],
            "amount": 10, "currency": "USD", "destination": "acct-1"}]);
        self.sts
            .exchange(
                &exchange_request(subject, &actor, "bank", &details),
                None,
                &ExchangeContext::default(),
            )
            .await
            .unwrap()
            .access_token
    }
}

#[tokio::test]
async fn a_spent_token_stays_spent_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (spent, fresh) = {
        let f = open(tmp.path()).await;
        for agent in [AGENT, OTHER_AGENT] {
            f.sts
                .grant_consent(ALICE, agent, &["transfer_funds".into()], &["tools".into()])
                .await
                .unwrap();
        }
        let user = f.user_token().await;
        let spent = f.obo(&user, AGENT).await;
        let fresh = f.obo(&user, AGENT).await;
        f.sts.consume_token(&spent, "bank", None).await.unwrap();
        assert!(matches!(
            f.sts.consume_token(&spent, "bank", None).await,
            Err(StsError::AlreadyConsumed(_))
        ));
        f.audit.shutdown().await;
        (spent, fresh)
    };
    // A new process on the same data: the spend came back from the log.
    let f = open(tmp.path()).await;
    assert!(matches!(
        f.sts.consume_token(&spent, "bank", None).await,
        Err(StsError::AlreadyConsumed(_))
    ));
    // Nor can it be handed on as a delegation's subject.
    let other = f.svid(OTHER_AGENT).await;
    let details = json!([{"type": "transfer_funds", "actions": ["transfer_funds"],
        "amount": 10, "currency": "USD", "destination": "acct-1"}]);
    let err = f
        .sts
        .exchange(
            &exchange_request(&spent, &other, "bank", &details),
            None,
            &ExchangeContext::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already used"), "{err}");
    // A token issued before the restart and never spent is still good once.
    f.sts.consume_token(&fresh, "bank", None).await.unwrap();
    assert!(f.sts.consume_token(&fresh, "bank", None).await.is_err());
}

#[tokio::test]
async fn a_token_spent_by_a_delegation_cannot_be_spent_at_its_resource_server() {
    let tmp = tempfile::tempdir().unwrap();
    let f = open(tmp.path()).await;
    for agent in [AGENT, OTHER_AGENT] {
        f.sts
            .grant_consent(ALICE, agent, &["transfer_funds".into()], &["tools".into()])
            .await
            .unwrap();
    }
    let user = f.user_token().await;
    let first = f.obo(&user, AGENT).await;
    // Handed on: the delegation spends `first`.
    let _second = f.obo(&first, OTHER_AGENT).await;
    assert!(matches!(
        f.sts.consume_token(&first, "bank", None).await,
        Err(StsError::AlreadyConsumed(_))
    ));
    f.audit.shutdown().await;
    drop(f);
    let f = open(tmp.path()).await;
    assert!(matches!(
        f.sts.consume_token(&first, "bank", None).await,
        Err(StsError::AlreadyConsumed(_))
    ));
}

#[tokio::test]
async fn a_revoked_obo_token_is_refused_before_and_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (revoked, fresh) = {
        let f = open(tmp.path()).await;
        f.sts
            .grant_consent(ALICE, AGENT, &["transfer_funds".into()], &["tools".into()])
            .await
            .unwrap();
        let user = f.user_token().await;
        let revoked = f.obo(&user, AGENT).await;
        let fresh = f.obo(&user, AGENT).await;
        f.sts.revoke_token(&revoked, None).await.unwrap();
        let err = f
            .sts
            .consume_token(&revoked, "bank", None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("revoked"), "{err}");
        assert_eq!(
            f.sts.introspect(&revoked).await.unwrap(),
            json!({"active": false})
        );
        f.audit.shutdown().await;
        (revoked, fresh)
    };
    let f = open(tmp.path()).await;
    let err = f
        .sts
        .consume_token(&revoked, "bank", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    // Revoking one token left the other alone.
    f.sts.consume_token(&fresh, "bank", None).await.unwrap();
}
