//! What the exchange must know is still true on every call — the session is
//! live, the subject token was not revoked, the user's consents for this
//! agent — kept in memory between changes instead of read from the store
//! on every tool call.
//!
//! Correctness rests on one generation counter:
//! - a reader takes the generation *before* it reads the store and tags
//!   what it caches with it;
//! - every change that can make a cached fact false (session or family
//!   revoked, token revoked, consent granted or revoked, user disabled)
//!   bumps the generation *after* its write committed (`Sts::changed`);
//! - an entry is used only while its tag equals the current generation.
//!
//! So a revocation bites on the very next exchange of this process. Across
//! replicas sharing PostgreSQL, each change is also sent with `pg_notify`
//! and every replica's listener bumps its own generation; while a replica
//! has no working listener it does not cache at all (every check reads the
//! store, as before). On SQLite one process owns the database.
//!
//! Only positive facts are cached (a dead session stays dead without help),
//! and time-based expiry (session age) is re-checked on every use. Memory
//! is bounded: a full map is cleared.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::db::Consent;
use crate::{Sts, StsError};

/// The PostgreSQL channel every replica listens on.
pub(crate) const CHANNEL: &str = "keyless_sts_changes";

const MAX_ENTRIES: usize = 16_384;

#[derive(Debug)]
pub(crate) struct LiveCache {
    generation: AtomicU64,
    /// False while facts may change behind this process's back unseen
    /// (PostgreSQL without a working listener).
    enabled: AtomicBool,
    /// sid → (generation, session created_at in ms).
    sessions: Mutex<HashMap<String, (u64, i64)>>,
    /// jti of a user access token → generation at which it was not revoked.
    tokens: Mutex<HashMap<String, u64>>,
    /// (user sub, agent) → (generation, live consents).
    consents: Mutex<ConsentMap>,
}

type ConsentMap = HashMap<(String, String), (u64, Arc<Vec<Consent>>)>;

fn get<K: Hash + Eq, V: Clone>(map: &Mutex<HashMap<K, (u64, V)>>, key: &K, g: u64) -> Option<V> {
    let m = map.lock().ok()?;
    match m.get(key) {
        Some((tag, v)) if *tag == g => Some(v.clone()),
        _ => None,
    }
}

fn put<K: Hash + Eq, V>(map: &Mutex<HashMap<K, (u64, V)>>, key: K, g: u64, v: V) {
    if let Ok(mut m) = map.lock() {
        if m.len() >= MAX_ENTRIES {
            m.clear();
        }
        m.insert(key, (g, v));
    }
}

// === impl LiveCache ===

impl LiveCache {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            generation: AtomicU64::new(0),
            enabled: AtomicBool::new(enabled),
            sessions: Mutex::default(),
            tokens: Mutex::default(),
            consents: Mutex::default(),
        }
    }

    /// The generation to tag a read with, or `None` when caching is off.
    pub(crate) fn begin(&self) -> Option<u64> {
        // Acquire pairs with the Release of `bump`: a reader that sees the
        // new generation also sees everything written before it.
        let g = self.generation.load(Ordering::Acquire);
        self.enabled.load(Ordering::Acquire).then_some(g)
    }

    /// Invalidates every cached fact.
    pub(crate) fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Turns caching on or off (the PostgreSQL listener's health).
    pub(crate) fn set_enabled(&self, on: bool) {
        // Bump first: entries cached before a gap in notifications are
        // never used again.
        self.bump();
        self.enabled.store(on, Ordering::Release);
    }

    pub(crate) fn session(&self, sid: &str, g: u64) -> Option<i64> {
        get(&self.sessions, &sid.to_owned(), g)
    }

    pub(crate) fn put_session(&self, sid: &str, g: u64, created_at: i64) {
        put(&self.sessions, sid.to_owned(), g, created_at);
    }

    pub(crate) fn token(&self, jti: &str, g: u64) -> bool {
        let Ok(m) = self.tokens.lock() else {
            return false;
        };
        m.get(jti) == Some(&g)
    }

    pub(crate) fn consents(&self, user: &str, agent: &str, g: u64) -> Option<Arc<Vec<Consent>>> {
        get(&self.consents, &(user.to_owned(), agent.to_owned()), g)
    }

    pub(crate) fn put_consents(&self, user: &str, agent: &str, g: u64, c: Arc<Vec<Consent>>) {
        put(&self.consents, (user.to_owned(), agent.to_owned()), g, c);
    }

    pub(crate) fn put_token(&self, jti: &str, g: u64) {
        if let Ok(mut m) = self.tokens.lock() {
            if m.len() >= MAX_ENTRIES {
                m.clear();
            }
            m.insert(jti.to_owned(), g);
        }
    }
}

// === impl Sts ===

impl Sts {
    /// Records that a cached fact may have become false: bumps this
    /// process's generation and tells the other replicas. Called after the
    /// change committed.
    pub(crate) async fn changed(&self) {
        self.live.bump();
        if let Err(e) = self.store.notify(CHANNEL, "").await {
            // The local bump already happened; other replicas' listeners
            // reconnect (and stop caching meanwhile) when their connection
            // is in trouble, but a lost NOTIFY on a healthy one would go
            // unseen: say so loudly.
            tracing::error!(error = %e, "could not notify other replicas of an sts change");
        }
    }

    /// The user's live consents for `agent`, as of the last change: a grant
    /// or revocation bumps the generation after it commits, so the very
    /// next exchange of this process reads the store again.
    pub(crate) async fn live_consents(
        &self,
        user: &str,
        agent: &str,
    ) -> Result<Arc<Vec<Consent>>, StsError> {
        let generation = self.live.begin();
        if let Some(c) = generation.and_then(|g| self.live.consents(user, agent, g)) {
            return Ok(c);
        }
        let consents = Arc::new(crate::db::live_consents(&self.store, user, agent).await?);
        if let Some(g) = generation {
            self.live.put_consents(user, agent, g, consents.clone());
        }
        Ok(consents)
    }
}

/// Follows the other replicas' changes (PostgreSQL): every notification
/// bumps the generation; caching is on only while the listener is
/// connected. Ends when the STS is dropped.
pub(crate) async fn listen(sts: Weak<Sts>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(store) = sts.upgrade().map(|s| s.store.clone()) else {
            return;
        };
        match store.listen(CHANNEL).await {
            Ok(Some(mut listener)) => {
                backoff = Duration::from_millis(100);
                if let Some(s) = sts.upgrade() {
                    s.live.set_enabled(true);
                }
                loop {
                    // Wake up now and then to notice that the STS is gone.
                    match tokio::time::timeout(Duration::from_secs(5), listener.recv()).await {
                        Ok(Ok(_)) => match sts.upgrade() {
                            Some(s) => s.live.bump(),
                            None => return,
                        },
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "sts change listener lost its connection");
                            break;
                        }
                        Err(_) => {
                            if sts.strong_count() == 0 {
                                return;
                            }
                        }
                    }
                }
            }
            Ok(None) => return,
            Err(e) => tracing::warn!(error = %e, "sts change listener cannot connect"),
        }
        match sts.upgrade() {
            Some(s) => s.live.set_enabled(false),
            None => return,
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_invalidates_what_was_read_before_it() {
        let cache = LiveCache::new(true);
        let g = cache.begin().unwrap();
        cache.put_session("s1", g, 10);
        cache.put_token("j1", g);
        assert_eq!(cache.session("s1", cache.begin().unwrap()), Some(10));
        assert!(cache.token("j1", cache.begin().unwrap()));
        cache.bump();
        let g2 = cache.begin().unwrap();
        assert_eq!(cache.session("s1", g2), None);
        assert!(!cache.token("j1", g2));
    }

    #[test]
    fn a_read_that_raced_a_change_is_never_served() {
        let cache = LiveCache::new(true);
        // Reader takes its generation, then a change commits and bumps,
        // then the reader stores what it read before the change.
        let g = cache.begin().unwrap();
        cache.bump();
        cache.put_token("j1", g);
        assert!(!cache.token("j1", cache.begin().unwrap()));
    }

    #[test]
    fn disabled_means_no_caching_and_reenabling_forgets_the_gap() {
        let cache = LiveCache::new(true);
        let g = cache.begin().unwrap();
        cache.put_token("j1", g);
        cache.set_enabled(false);
        assert_eq!(cache.begin(), None);
        cache.set_enabled(true);
        assert!(!cache.token("j1", cache.begin().unwrap()));
    }
}
