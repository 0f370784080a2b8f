//! The W1–W5 risk ladder: climbing, decay, learned baselines, each detector,
//! weights, W4 restriction and its review, persistence across restarts,
//! and the configuration file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use keyless_signals::risk::{
    Assessment, Detector, Observation, ObservationKind, RiskConfig, RiskEngine, RiskError,
};
use keyless_store::Store;

const ALICE: &str = "user-alice";
const ALICE_EMAIL: &str = "alice@example.com";
const SESSION: &str = "sess-1";
/// A fixed start so that tests never read the wall clock.
const T0: i64 = 1_800_000_000_000;
const MINUTE: i64 = 60_000;

struct Fixture {
    engine: Arc<RiskEngine>,
    store: Store,
    _tmp: tempfile::TempDir,
}

async fn fixture(config: RiskConfig) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&tmp.path().join("keyless.db"))
        .await
        .unwrap();
    let engine = RiskEngine::open(store.clone(), config).await.unwrap();
    Fixture {
        engine,
        store,
        _tmp: tmp,
    }
}

fn call(tool: &str) -> Observation {
    Observation {
        user_email: Some(ALICE_EMAIL.into()),
        ..Observation::call(ALICE, SESSION, tool)
    }
}

fn transfer(amount: f64, to: &str) -> Observation {
    Observation {
        amount: Some((amount, "USD".into())),
        destination: Some(to.into()),
        ..call("bank_transfer")
    }
}

fn detectors(a: &Assessment) -> Vec<Detector> {
    a.anomalies.iter().map(|a| a.detector).collect()
}

/// Five distinct anomalies, one per call.
fn five_anomalies() -> Vec<Observation> {
    vec![
        Observation {
            amount: Some((5000.0, "USD".into())),
            ..call("bank_transfer")
        },
        Observation {
            destination: Some("acct-evil".into()),
            ..call("bank_transfer")
        },
        Observation {
            admin: true,
            ..call("directory_admin")
        },
        Observation {
            target_user: Some("bob@example.com".into()),
            ..call("directory_get_user")
        },
        Observation {
            kind: ObservationKind::PolicyDenied {
                reason: "forbidden by policy `no-export`".into(),
            },
            ..call("bank_export")
        },
    ]
}

#[tokio::test]
async fn five_anomalies_in_one_session_climb_w1_to_w5() {
    let f = fixture(RiskConfig::default()).await;
    for (i, obs) in five_anomalies().iter().enumerate() {
        let expected = u8::try_from(i + 1).unwrap();
        // Seconds apart, as a real agent would call.
        let now = T0 + i64::from(expected) * 5_000;
        let a = f.engine.assess_at(obs, now).await.unwrap();
        assert_eq!(a.anomalies.len(), 1, "call {i}: {:?}", a.anomalies);
        assert_eq!(a.previous_level, expected - 1);
        assert_eq!(a.level, expected, "call {i}: score {}", a.score);
        assert!(a.escalated());
        assert_eq!(f.engine.session_level(SESSION), expected);
        assert_eq!(
            a.review.is_some(),
            expected == 4,
            "a review opens at W4 only"
        );
    }
    // Another session is untouched.
    assert_eq!(f.engine.session_level("sess-other"), 0);
}

#[tokio::test]
async fn a_clean_call_does_not_escalate() {
    let f = fixture(RiskConfig::default()).await;
    let a = f.engine.assess_at(&call("bank_balance"), T0).await.unwrap();
    assert!(a.anomalies.is_empty());
    assert_eq!((a.level, a.previous_level), (0, 0));
    assert!(!a.escalated());
    assert_eq!(a.score, 0.0);
}

#[tokio::test]
async fn anomalies_an_hour_apart_decay_and_do_not_reach_w2() {
    let config = RiskConfig {
        half_life: Duration::from_secs(15 * 60),
        hold: Duration::ZERO,
        ..RiskConfig::default()
    };
    let f = fixture(config).await;
    let loop_trip = Observation {
        kind: ObservationKind::LoopBreaker,
        ..call("bank_balance")
    };
    let a = f.engine.assess_at(&loop_trip, T0).await.unwrap();
    assert_eq!(a.level, 1);
    let a = f
        .engine
        .assess_at(&loop_trip, T0 + 60 * MINUTE)
        .await
        .unwrap();
    // 1 × 0.5^4 + 1
    assert!((a.score - 1.0625).abs() < 1e-9, "score {}", a.score);
    assert_eq!(a.level, 1);
    assert!(!a.escalated());

    // The same two anomalies a minute apart do reach W2.
    let close = Observation {
        session_id: "sess-2".into(),
        ..loop_trip
    };
    f.engine.assess_at(&close, T0).await.unwrap();
    let a = f.engine.assess_at(&close, T0 + MINUTE).await.unwrap();
    assert!(a.score > 1.9 && a.score < 2.0, "score {}", a.score);
    // Decayed just below 2: that is what `hold` is for (next test).
    assert_eq!(a.level, 1);
}

#[tokio::test]
async fn the_score_holds_before_it_decays() {
    let f = fixture(RiskConfig::default()).await; // hold 5 min, half-life 15 min
    let obs = Observation {
        kind: ObservationKind::LoopBreaker,
        ..call("bank_balance")
    };
    f.engine.assess_at(&obs, T0).await.unwrap();
    let a = f.engine.assess_at(&obs, T0 + 4 * MINUTE).await.unwrap();
    assert_eq!(a.score, 2.0);
    assert_eq!(a.level, 2);
    // 5 min hold, then two half-lives: 2 × 0.25 + 1.
    let a = f
        .engine
        .assess_at(&obs, T0 + 4 * MINUTE + 35 * MINUTE)
        .await
        .unwrap();
    assert!((a.score - 1.5).abs() < 1e-9, "score {}", a.score);
    assert_eq!(a.level, 2, "levels ratchet");
}

#[tokio::test]
async fn amounts_are_judged_against_the_learned_baseline() {
    let f = fixture(RiskConfig::default()).await;
    // No history: the first-amount limit applies.
    let a = f
        .engine
        .assess_at(
            &Observation {
                amount: Some((1500.0, "USD".into())),
                ..call("bank_transfer")
            },
            T0,
        )
        .await
        .unwrap();
    assert_eq!(detectors(&a), [Detector::AmountAboveBaseline]);
    assert!(
        a.anomalies[0].detail.contains("1500 USD"),
        "{:?}",
        a.anomalies
    );
    let a = f
        .engine
        .assess_at(
            &Observation {
                amount: Some((900.0, "USD".into())),
                session_id: "sess-2".into(),
                ..call("bank_transfer")
            },
            T0,
        )
        .await
        .unwrap();
    assert!(a.anomalies.is_empty(), "{:?}", a.anomalies);

    for _ in 0..3 {
        f.engine
            .learn_at(&transfer(100.0, "acct-rent"), T0)
            .await
            .unwrap();
    }
    let a = f
        .engine
        .assess_at(&transfer(250.0, "acct-rent"), T0)
        .await
        .unwrap();
    assert!(a.anomalies.is_empty(), "{:?}", a.anomalies);
    let a = f
        .engine
        .assess_at(&transfer(500.0, "acct-rent"), T0)
        .await
        .unwrap();
    assert_eq!(detectors(&a), [Detector::AmountAboveBaseline]);
    assert_eq!(
        a.anomalies[0].detail,
        "amount 500 USD is 5× alice@example.com's usual 100 USD"
    );
    // The baseline is per currency: 500 EUR has no history and is fine.
    let a = f
        .engine
        .assess_at(
            &Observation {
                amount: Some((500.0, "eur".into())),
                ..transfer(0.0, "acct-rent")
            },
            T0,
        )
        .await
        .unwrap();
    assert!(a.anomalies.is_empty(), "{:?}", a.anomalies);
}

#[tokio::test]
async fn a_new_destination_fires_until_learned() {
    let f = fixture(RiskConfig::default()).await;
    let obs = transfer(10.0, "acct-new");
    let a = f.engine.assess_at(&obs, T0).await.unwrap();
    assert_eq!(detectors(&a), [Detector::NewDestination]);
    assert!(a.anomalies[0].detail.contains("acct-new"));
    f.engine.learn_at(&obs, T0).await.unwrap();
    // Destinations compare case-insensitively.
    let again = transfer(10.0, "ACCT-NEW");
    let a = f.engine.assess_at(&again, T0).await.unwrap();
    assert!(a.anomalies.is_empty(), "{:?}", a.anomalies);
    // Another user never sent there.
    let bob = Observation {
        user_sub: "user-bob".into(),
        user_email: Some("bob@example.com".into()),
        session_id: "sess-bob".into(),
        ..obs
    };
    let a = f.engine.assess_at(&bob, T0).await.unwrap();
    assert_eq!(detectors(&a), [Detector::NewDestination]);
}

#[tokio::test]
async fn denied_calls_teach_nothing() {
    let f = fixture(RiskConfig::default()).await;
    let denied = Observation {
        kind: ObservationKind::PolicyDenied {
            reason: "no".into(),
        },
        ..transfer(10.0, "acct-new")
    };
    f.engine.learn_at(&denied, T0).await.unwrap();
    let a = f
        .engine
        .assess_at(&transfer(10.0, "acct-new"), T0)
        .await
        .unwrap();
    assert_eq!(detectors(&a), [Detector::NewDestination]);
}

#[tokio::test]
async fn a_new_admin_tool_fires_until_used() {
    let f = fixture(RiskConfig::default()).await;
    let admin = Observation {
        admin: true,
        ..call("directory_admin")
    };
    let a = f.engine.assess_at(&admin, T0).await.unwrap();
    assert_eq!(detectors(&a), [Detector::NewAdminTool]);
    f.engine.learn_at(&admin, T0).await.unwrap();
    let a = f.engine.assess_at(&admin, T0).await.unwrap();
    assert!(a.anomalies.is_empty(), "{:?}", a.anomalies);
    // A tool that is not admin never fires, used before or not.
    let a = f
        .engine
        .assess_at(&call("directory_search"), T0)
        .await
        .unwrap();
    assert!(a.anomalies.is_empty());
}

#[tokio::test]
async fn other_users_data_fires_but_ones_own_does_not() {
    let f = fixture(RiskConfig::default()).await;
    let other = Observation {
        target_user: Some("bob@example.com".into()),
        ..call("directory_get_user")
    };
    let a = f.engine.assess_at(&other, T0).await.unwrap();
    assert_eq!(detectors(&a), [Detector::OtherUsersData]);
    assert!(a.anomalies[0].detail.contains("bob@example.com"));
    let own = Observation {
        target_user: Some("Alice@Example.com".into()),
        ..call("directory_get_user")
    };
    let a = f.engine.assess_at(&own, T0).await.unwrap();
    assert!(a.anomalies.is_empty(), "{:?}", a.anomalies);
}

#[tokio::test]
async fn weights_add_up_and_zero_disables_a_detector() {
    let mut config = RiskConfig {
        combine: keyless_signals::risk::Combine::Sum,
        ..RiskConfig::default()
    };
    config.weights.insert(Detector::NewDestination, 0.0);
    config.weights.insert(Detector::AmountAboveBaseline, 2.0);
    let f = fixture(config).await;
    let a = f
        .engine
        .assess_at(&transfer(10.0, "acct-new"), T0)
        .await
        .unwrap();
    assert!(a.anomalies.is_empty(), "{:?}", a.anomalies);
    assert_eq!(a.level, 0);
    assert_eq!(f.engine.session_level(SESSION), 0);

    // Amount (2.0) and other user's data (default 1.0) together: W3 at once.
    let both = Observation {
        target_user: Some("bob@example.com".into()),
        ..transfer(5000.0, "acct-new")
    };
    let a = f.engine.assess_at(&both, T0).await.unwrap();
    assert_eq!(
        detectors(&a),
        [Detector::AmountAboveBaseline, Detector::OtherUsersData]
    );
    assert_eq!(a.score, 3.0);
    assert_eq!((a.previous_level, a.level), (0, 3));
    assert!(a.escalated());
}

#[tokio::test]
async fn by_default_a_call_counts_its_heaviest_anomaly_once() {
    let f = fixture(RiskConfig::default()).await;
    let both = Observation {
        target_user: Some("bob@example.com".into()),
        ..transfer(5000.0, "acct-new")
    };
    let a = f.engine.assess_at(&both, T0).await.unwrap();
    assert_eq!(a.anomalies.len(), 3, "{:?}", a.anomalies);
    assert_eq!(a.score, 1.0);
    assert_eq!((a.previous_level, a.level), (0, 1));
}

#[tokio::test]
async fn w4_restricts_the_subject_until_its_review_is_resolved() {
    let f = fixture(RiskConfig::default()).await;
    assert!(!f.engine.subject_restricted(ALICE));
    let mut review = None;
    for obs in five_anomalies().iter().take(4) {
        let a = f.engine.assess_at(obs, T0).await.unwrap();
        review = review.or(a.review);
    }
    let review = review.expect("a review at W4");
    assert!(f.engine.subject_restricted(ALICE));
    assert!(!f.engine.subject_restricted("user-bob"));
    assert_eq!(review.user_sub, ALICE);
    assert_eq!(review.session_id, SESSION);
    assert_eq!(review.level, 4);
    assert!(
        review.reason.contains("bob@example.com"),
        "{}",
        review.reason
    );
    assert_eq!(
        f.engine.reviews(true).await.unwrap(),
        std::slice::from_ref(&review)
    );

    // W5 updates the open review's level and opens no second one.
    let last = five_anomalies().pop().unwrap();
    let a = f.engine.assess_at(&last, T0).await.unwrap();
    assert_eq!(a.level, 5);
    assert!(a.review.is_none());
    let open = f.engine.reviews(true).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].level, 5);

    let resolved = f.engine.resolve_review(&review.id).await.unwrap();
    assert!(resolved.resolved_at.is_some());
    assert!(!f.engine.subject_restricted(ALICE));
    assert_eq!(f.engine.session_level(SESSION), 5, "the level stays");
    assert!(f.engine.reviews(true).await.unwrap().is_empty());
    assert_eq!(f.engine.reviews(false).await.unwrap(), [resolved]);

    assert!(matches!(
        f.engine.resolve_review(&review.id).await,
        Err(RiskError::AlreadyResolved(_))
    ));
    assert!(matches!(
        f.engine.resolve_review("no-such-review").await,
        Err(RiskError::NotFound(_))
    ));
}

#[tokio::test]
async fn levels_and_reviews_survive_a_restart() {
    let f = fixture(RiskConfig::default()).await;
    for obs in five_anomalies().iter().take(4) {
        f.engine.assess_at(obs, T0).await.unwrap();
    }
    let second = Observation {
        session_id: "sess-2".into(),
        kind: ObservationKind::LoopBreaker,
        ..call("bank_balance")
    };
    f.engine.assess_at(&second, T0).await.unwrap();

    let reopened = RiskEngine::open(f.store.clone(), RiskConfig::default())
        .await
        .unwrap();
    assert_eq!(reopened.session_level(SESSION), 4);
    assert_eq!(reopened.session_level("sess-2"), 1);
    assert!(reopened.subject_restricted(ALICE));
    // The score continues from where it was: one more anomaly reaches W5.
    let last = five_anomalies().pop().unwrap();
    let a = reopened.assess_at(&last, T0 + MINUTE).await.unwrap();
    assert_eq!((a.previous_level, a.level), (4, 5));
    assert!(a.review.is_none(), "the session's review is already open");

    // A resolution is durable too.
    let id = reopened.reviews(true).await.unwrap()[0].id.clone();
    reopened.resolve_review(&id).await.unwrap();
    let again = RiskEngine::open(f.store.clone(), RiskConfig::default())
        .await
        .unwrap();
    assert!(!again.subject_restricted(ALICE));
    assert_eq!(again.session_level(SESSION), 5);
}

#[tokio::test]
async fn levels_ratchet_and_a_resolved_session_does_not_reopen_a_review() {
    let config = RiskConfig {
        hold: Duration::ZERO,
        ..RiskConfig::default()
    };
    let f = fixture(config).await;
    let mut anomalies = five_anomalies();
    anomalies.truncate(4);
    for obs in &anomalies {
        f.engine.assess_at(obs, T0).await.unwrap();
    }
    let id = f.engine.reviews(true).await.unwrap()[0].id.clone();
    f.engine.resolve_review(&id).await.unwrap();

    // A day later the score has decayed to nothing, but the level stays.
    let later = T0 + 24 * 60 * MINUTE;
    let a = f
        .engine
        .assess_at(&call("bank_balance"), later)
        .await
        .unwrap();
    assert!(a.score < 0.01, "score {}", a.score);
    assert_eq!((a.previous_level, a.level), (4, 4));
    let a = f.engine.assess_at(&anomalies[0], later).await.unwrap();
    assert_eq!(a.level, 4);
    assert!(!a.escalated());
    assert!(a.review.is_none());
    assert!(!f.engine.subject_restricted(ALICE));
}

#[tokio::test]
async fn evicted_sessions_come_back_from_the_store() {
    let config = RiskConfig {
        max_sessions: 2,
        ..RiskConfig::default()
    };
    let f = fixture(config).await;
    for (i, session) in ["s-a", "s-b", "s-c"].into_iter().enumerate() {
        let obs = Observation {
            session_id: session.into(),
            kind: ObservationKind::LoopBreaker,
            ..call("bank_balance")
        };
        f.engine
            .assess_at(&obs, T0 + i64::try_from(i).unwrap())
            .await
            .unwrap();
    }
    assert_eq!(f.engine.session_level("s-a"), 0, "the oldest was evicted");
    assert_eq!(f.engine.session_level("s-c"), 1);
    let a = f
        .engine
        .assess_at(&Observation::call(ALICE, "s-a", "bank_balance"), T0 + 10)
        .await
        .unwrap();
    assert_eq!(a.level, 1, "reloaded from the store");
    assert_eq!(f.engine.session_level("s-a"), 1);
}

#[test]
fn the_configuration_reads_from_toml() {
    let config: RiskConfig = toml::from_str(
        r#"
        thresholds = [0.5, 1, 2, 3, 4]
        half_life = "30m"
        amount_factor = 4.0
        [weights]
        loop_breaker = 0
        new_destination = 0.5
        "#,
    )
    .unwrap();
    assert_eq!(config.thresholds, [0.5, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(config.half_life, Duration::from_secs(1800));
    assert_eq!(config.amount_factor, 4.0);
    assert_eq!(config.weight(Detector::LoopBreaker), 0.0);
    assert_eq!(config.weight(Detector::NewDestination), 0.5);
    assert_eq!(config.weight(Detector::PolicyDenied), 1.0, "unset weighs 1");
    assert_eq!(config.min_history, 3, "unset fields keep their default");
    config.validate().unwrap();

    let empty: RiskConfig = toml::from_str("").unwrap();
    assert_eq!(empty, RiskConfig::default());
}

#[test]
fn a_configuration_with_mistakes_is_refused() {
    let unknown = toml::from_str::<RiskConfig>("half_lfe = \"15m\"").unwrap_err();
    assert!(unknown.to_string().contains("half_lfe"), "{unknown}");
    let detector = toml::from_str::<RiskConfig>("[weights]\nnew_dest = 1").unwrap_err();
    assert!(detector.to_string().contains("new_dest"), "{detector}");
    let duration = toml::from_str::<RiskConfig>("half_life = \"soon\"").unwrap_err();
    assert!(duration.to_string().contains("soon"), "{duration}");

    let decreasing = RiskConfig {
        thresholds: [1.0, 3.0, 2.0, 4.0, 5.0],
        ..RiskConfig::default()
    };
    assert!(matches!(
        decreasing.validate(),
        Err(RiskError::InvalidConfig(_))
    ));
    let mut negative = RiskConfig::default();
    negative.weights.insert(Detector::PolicyDenied, -1.0);
    assert!(negative.validate().is_err());
    let no_decay = RiskConfig {
        half_life: Duration::ZERO,
        ..RiskConfig::default()
    };
    assert!(no_decay.validate().is_err());
}

#[tokio::test]
async fn open_refuses_an_invalid_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&tmp.path().join("keyless.db"))
        .await
        .unwrap();
    let config = RiskConfig {
        amount_factor: 0.0,
        ..RiskConfig::default()
    };
    let err = RiskEngine::open(store, config).await.unwrap_err();
    assert!(err.to_string().contains("amount_factor"), "{err}");
}

/// The same SQL must work on PostgreSQL (upserts, REAL/DOUBLE, INTEGER
/// levels); skipped with a message when no server answers.
#[tokio::test]
async fn the_ladder_works_on_postgres() {
    let Some(url) = keyless_store::testing::fresh_postgres_database("risk_ladder").await else {
        return;
    };
    let store = Store::open(&url).await.unwrap();
    let engine = RiskEngine::open(store.clone(), RiskConfig::default())
        .await
        .unwrap();
    for _ in 0..3 {
        engine
            .learn_at(&transfer(100.0, "acct-rent"), T0)
            .await
            .unwrap();
    }
    let a = engine
        .assess_at(&transfer(250.0, "acct-rent"), T0)
        .await
        .unwrap();
    assert!(a.anomalies.is_empty(), "{:?}", a.anomalies);
    for (i, obs) in five_anomalies().iter().enumerate() {
        let a = engine.assess_at(obs, T0 + MINUTE).await.unwrap();
        assert_eq!(usize::from(a.level), i + 1);
    }
    let reopened = RiskEngine::open(store.clone(), RiskConfig::default())
        .await
        .unwrap();
    assert_eq!(reopened.session_level(SESSION), 5);
    assert!(reopened.subject_restricted(ALICE));
    let open = reopened.reviews(true).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].level, 5);
    reopened.resolve_review(&open[0].id).await.unwrap();
    assert!(!reopened.subject_restricted(ALICE));
    store.close().await;
}

#[tokio::test]
async fn replicas_on_postgres_see_each_others_levels_and_restrictions() {
    let Some(url) = keyless_store::testing::fresh_postgres_database("risk_replicas").await else {
        return;
    };
    let a = RiskEngine::open(Store::open(&url).await.unwrap(), RiskConfig::default())
        .await
        .unwrap();
    let b = RiskEngine::open(Store::open(&url).await.unwrap(), RiskConfig::default())
        .await
        .unwrap();
    let _listener = b.spawn_listener().expect("a listener on PostgreSQL");
    // The listener is connected once a change made now reaches it.
    let wait = |what: &'static str, f: &dyn Fn() -> bool| {
        let ok = (0..500).any(|_| {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
            false
        });
        assert!(ok, "replica b never saw {what}");
    };
    // Whether the listener connects before or after these changes, b
    // catches up (a (re)connect reloads everything).
    let mut review = None;
    for (i, obs) in five_anomalies().iter().take(4).enumerate() {
        let a4 = a
            .assess_at(obs, T0 + 5_000 * i64::try_from(i).unwrap())
            .await
            .unwrap();
        review = review.or(a4.review);
    }
    let b2 = b.clone();
    tokio::task::spawn_blocking(move || {
        wait("W4", &|| b2.session_level(SESSION) == 4);
        wait("the restriction", &|| b2.subject_restricted(ALICE));
    })
    .await
    .unwrap();
    a.resolve_review(&review.unwrap().id).await.unwrap();
    let b3 = b.clone();
    tokio::task::spawn_blocking(move || {
        wait("the lifted restriction", &|| !b3.subject_restricted(ALICE))
    })
    .await
    .unwrap();
    assert_eq!(b.session_level(SESSION), 4, "the level stays");
}

/// Baselines are learned in memory and written behind: counted at once by
/// the engine that learned them, in the store after a flush (so a
/// restarted engine knows them), and counted once, not twice, after it.
#[tokio::test]
async fn learned_baselines_count_at_once_and_survive_a_restart_once_written() {
    let f = fixture(RiskConfig::default()).await;
    // Two amounts on record: fewer than `min_history` (3), so 500 is judged
    // against the first-amount limit (1000) and passes. Counted twice (4
    // amounts, mean 100), it would be judged against 3 × 100 and fire.
    for _ in 0..2 {
        f.engine
            .learn_at(&transfer(100.0, "acct-rent"), T0)
            .await
            .unwrap();
    }
    let judge = |engine: Arc<RiskEngine>, session: &'static str| async move {
        engine
            .assess_at(
                &Observation {
                    session_id: session.into(),
                    ..transfer(500.0, "acct-rent")
                },
                T0,
            )
            .await
            .unwrap()
    };
    // Known to this engine before anything is written.
    let a = judge(f.engine.clone(), "s1").await;
    assert!(a.anomalies.is_empty(), "{:?}", a.anomalies);
    let rows = keyless_store::sqlx::query("SELECT count FROM risk_baselines")
        .fetch_all(f.store.pool())
        .await
        .unwrap();
    assert!(rows.is_empty(), "nothing written before the flush");

    f.engine.flush_baselines().await.unwrap();
    let rows = keyless_store::sqlx::query("SELECT count FROM risk_baselines")
        .fetch_all(f.store.pool())
        .await
        .unwrap();
    assert_eq!(rows.len(), 3, "amount, destination and tool rows");
    let a = judge(f.engine.clone(), "s2").await;
    assert!(a.anomalies.is_empty(), "counted twice: {:?}", a.anomalies);

    let reopened = RiskEngine::open(f.store.clone(), RiskConfig::default())
        .await
        .unwrap();
    let a = judge(reopened.clone(), "s3").await;
    assert!(a.anomalies.is_empty(), "{:?}", a.anomalies);
    // The destination was learned too: a new one still fires.
    let a = reopened
        .assess_at(&transfer(10.0, "acct-other"), T0)
        .await
        .unwrap();
    assert_eq!(detectors(&a), [Detector::NewDestination]);
}
