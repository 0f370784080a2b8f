//! The warning ladder's effects: the [`RiskEngine`] decides a session's
//! level; [`Ladder::observe`] carries out what each new level means.
//!
//! - W1 inline caution: the caller shows [`Verdict::caution`] with the tool
//!   result; a `risk.warning` event is recorded.
//! - W2 step-up: CAEP `credential-change` goes out (the STS refuses the
//!   session's refresh tokens through its risk gate).
//! - W3 high risk: CAEP `risk-level-change` to HIGH (the STS decides with
//!   `risk_level = high`).
//! - W4 restricted: the engine opened a review item; the STS issues no new
//!   token for the subject until an operator resolves it.
//! - W5 kill switch: every session of the user dies here, and CAEP
//!   `session-revoked` goes to every receiver.
//!
//! Every level reached is recorded before the effect, so the log says what
//! was decided even when an effect fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keyless_audit::{Event, EventSink, Outcome};
use serde_json::{Value, json};

use crate::caep;
use crate::risk::{Assessment, Observation, ObservationKind, RiskEngine, RiskError};
use crate::subject;
use crate::transmitter::Transmitter;

/// Ends a user's sessions in the local authorization server.
#[async_trait::async_trait]
pub trait SessionControl: Send + Sync + std::fmt::Debug {
    /// Revokes every session, refresh and access token of `user_sub`;
    /// returns how many sessions died.
    async fn revoke_user_sessions(&self, user_sub: &str, reason: &str) -> Result<u64, String>;
}

/// What the caller learns from one observation.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub assessment: Assessment,
    /// W1 and above: one line to show the user with the tool result.
    pub caution: Option<String>,
}

/// The ladder: engine plus effects.
#[derive(Debug)]
pub struct Ladder {
    engine: Arc<RiskEngine>,
    transmitter: Arc<Transmitter>,
    sessions: Arc<dyn SessionControl>,
    events: Arc<dyn EventSink>,
    /// Policy denials already counted: (session, reason) → when (ms).
    denials: Mutex<HashMap<(String, String), i64>>,
}

/// The same policy denial of the same session counts once in this window:
/// an agent retrying a forbidden request is one anomaly (the loop breaker
/// deals with the retrying).
const REPEATED_DENIAL_WINDOW_MS: i64 = 5 * 60 * 1000;
const MAX_REMEMBERED_DENIALS: usize = 65_536;

/// The SSF subject of a user's session: `complex` with the user (email
/// when known, else issuer + subject) and the session.
pub fn session_subject(issuer: &str, user_sub: &str, email: Option<&str>, sid: &str) -> Value {
    let user = match email {
        Some(e) => subject::email(e),
        None => subject::iss_sub(issuer, user_sub),
    };
    subject::complex_user_session(user, Some(subject::opaque(sid)))
}

impl Ladder {
    pub fn new(
        engine: Arc<RiskEngine>,
        transmitter: Arc<Transmitter>,
        sessions: Arc<dyn SessionControl>,
        events: Arc<dyn EventSink>,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine,
            transmitter,
            sessions,
            events,
            denials: Mutex::default(),
        })
    }

    pub fn engine(&self) -> &Arc<RiskEngine> {
        &self.engine
    }

    pub fn transmitter(&self) -> &Arc<Transmitter> {
        &self.transmitter
    }

    /// Assesses one observation and carries out every level it newly
    /// reached, lowest first.
    pub async fn observe(&self, obs: &Observation) -> Result<Verdict, RiskError> {
        if let ObservationKind::PolicyDenied { reason } = &obs.kind
            && self.repeated_denial(&obs.session_id, reason)
        {
            let level = self.engine.session_level(&obs.session_id);
            return Ok(Verdict {
                assessment: Assessment {
                    anomalies: Vec::new(),
                    score: 0.0,
                    level,
                    previous_level: level,
                    review: None,
                },
                caution: None,
            });
        }
        let a = self.engine.assess(obs).await?;
        for level in (a.previous_level + 1)..=a.level {
            self.escalate(obs, &a, level).await;
        }
        let caution = (a.level >= 1 && !a.anomalies.is_empty()).then(|| {
            let what: Vec<&str> = a.anomalies.iter().map(|x| x.detail.as_str()).collect();
            format!(
                "Keyless caution (W{}): {}. This session is being watched; further anomalies restrict it.",
                a.level,
                what.join("; ")
            )
        });
        Ok(Verdict {
            assessment: a,
            caution,
        })
    }

    /// Whether this denial of this session was counted within the window
    /// (and remembers it now if not).
    fn repeated_denial(&self, session: &str, reason: &str) -> bool {
        let now = keyless_store::now_millis();
        let Ok(mut seen) = self.denials.lock() else {
            return false;
        };
        if seen.len() >= MAX_REMEMBERED_DENIALS {
            seen.retain(|_, at| now - *at < REPEATED_DENIAL_WINDOW_MS);
            if seen.len() >= MAX_REMEMBERED_DENIALS {
                seen.clear();
            }
        }
        let key = (session.to_owned(), reason.to_owned());
        match seen.get(&key) {
            Some(at) if now - *at < REPEATED_DENIAL_WINDOW_MS => true,
            _ => {
                seen.insert(key, now);
                false
            }
        }
    }

    /// Records that a call went through: it becomes part of the user's
    /// baseline.
    pub async fn learn(&self, obs: &Observation) -> Result<(), RiskError> {
        self.engine.learn(obs).await
    }

    async fn escalate(&self, obs: &Observation, a: &Assessment, level: u8) {
        let issuer = self.transmitter.issuer().to_owned();
        let subject = session_subject(
            &issuer,
            &obs.user_sub,
            obs.user_email.as_deref(),
            &obs.session_id,
        );
        let anomalies: Vec<Value> = a
            .anomalies
            .iter()
            .map(|x| json!({"detector": x.detector.as_str(), "detail": x.detail}))
            .collect();
        let effect = match level {
            1 => "inline caution",
            2 => "step-up: re-authentication required, credential-change sent",
            3 => "high risk: risk-level-change HIGH sent",
            4 => "restricted: no new tokens, human review opened",
            _ => "kill switch: sessions revoked everywhere",
        };
        let mut e = Event::new("risk.warning", Outcome::Success)
            .user(
                obs.user_email
                    .clone()
                    .unwrap_or_else(|| obs.user_sub.clone()),
            )
            .session(obs.session_id.clone())
            .tool(obs.tool.clone())
            .reason(format!("W{level}: {effect}"))
            .detail("level", format!("W{level}"))
            .detail("score", a.score)
            .detail("anomalies", anomalies);
        e.rar_summary = Some(effect.to_owned());
        if let Err(err) = self.events.record(e).await {
            tracing::warn!(error = %err, "recording risk.warning failed");
        }
        let now = keyless_store::now_millis() / 1000;
        let reason = json!({"en": format!("risk ladder W{level}")});
        let sent = match level {
            2 => {
                self.transmitter
                    .publish(
                        &subject,
                        caep::CREDENTIAL_CHANGE,
                        json!({"credential_type": "password", "change_type": "update",
                               "event_timestamp": now, "initiating_entity": "policy",
                               "reason_admin": reason}),
                        Some(&obs.session_id),
                    )
                    .await
            }
            3 => self
                .transmitter
                .publish(
                    &subject,
                    caep::RISK_LEVEL_CHANGE,
                    json!({"principal": "USER", "current_level": "HIGH", "previous_level": "MEDIUM",
                               "event_timestamp": now, "initiating_entity": "policy",
                               "reason_admin": reason}),
                    Some(&obs.session_id),
                )
                .await,
            5 => {
                // Here and everywhere at once: the local revocation and the
                // SETs to every receiver do not wait for each other.
                let local = self
                    .sessions
                    .revoke_user_sessions(&obs.user_sub, "risk ladder W5: kill switch");
                let remote = self.transmitter.publish(
                    &subject,
                    caep::SESSION_REVOKED,
                    json!({"event_timestamp": now, "initiating_entity": "policy",
                           "reason_admin": reason}),
                    Some(&obs.session_id),
                );
                let (local, remote) = tokio::join!(local, remote);
                if let Err(err) = local {
                    tracing::error!(error = %err, "W5: revoking the user's sessions failed");
                }
                remote
            }
            _ => Ok(0),
        };
        if let Err(err) = sent {
            tracing::error!(error = %err, level, "sending the ladder's CAEP event failed");
        }
    }
}
