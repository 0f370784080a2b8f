//! The running audit log: group-commit appends, the in-memory Merkle tree,
//! checkpoints and their key, and the live event bus.
//!
//! One writer task owns every change to the tree. `append` canonicalizes and
//! hashes the event on the caller's task (that work spreads over cores),
//! then queues it; the writer takes everything queued, writes it in ONE
//! transaction together with the batch's seal, commits, and only then
//! extends the tree, publishes on the bus and answers every caller. So an
//! acknowledged event is on disk, the tree and the bus only ever hold
//! committed entries, and a crash loses only unacknowledged events. On
//! SQLite the whole transaction is one statement string (one round trip to
//! sqlx's connection thread); a batch of queued appends that nobody waits
//! for lingers up to `LINGER` to gather more, unless someone flushes it.
//!
//! Several processes may share one PostgreSQL: the entries' primary key
//! makes a second writer's batch fail as a whole; it then catches up on the
//! entries it missed (checking their hashes and chain) and retries. A tick
//! every second also catches up, so the bus carries other processes' events
//! too, within a second.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use keyless_store::{Dialect, KeyAlgorithm, KeyManager, Signer, Store, StoreError};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::db;
use crate::error::AuditError;
use crate::event::{Event, EventSink, SinkError, kinds};
use crate::merkle::{Hash, MerkleTree, leaf_hash};
use crate::note::{Checkpoint, note_body, sign_note};
use crate::proof::{ProofError, verify_consistency, verify_inclusion};

/// How often a checkpoint is issued while the log grows.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Most events committed in one transaction.
const MAX_BATCH: usize = 2048;
/// How long a batch that nobody waits for gathers more appends.
const LINGER: Duration = Duration::from_millis(2);
/// A lingering batch is committed once it holds this many appends.
const LINGER_BATCH: usize = 256;
/// Appends waiting for the writer before `append` itself waits.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Events the bus holds for a slow subscriber before dropping it.
pub const BUS_CAPACITY: usize = 8192;
/// `keyless_meta` key recording the log's origin.
const ORIGIN_META_KEY: &str = "audit.origin";
/// Prefix of checkpoint key names in the key manager.
pub const CHECKPOINT_KEY_PREFIX: &str = "audit-checkpoint-";

/// One stored entry: its index, leaf hash, event and the exact canonical
/// JSON that was hashed.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub index: u64,
    pub leaf_hash: Hash,
    pub event: Event,
    /// Canonical JSON of `event`; `leaf_hash = SHA-256(0x00 ‖ json)`.
    pub json: String,
}

// === impl LogEntry ===

impl LogEntry {
    /// The wire form shared by `/audit/entries`, `/events` and export:
    /// `{"index":N,"leaf_hash":"<base64>","event":<canonical JSON>}`, the
    /// event embedded byte for byte so its hash can be recomputed from it.
    pub fn to_json_line(&self) -> String {
        json_line(self.index, &self.leaf_hash, &self.json)
    }
}

pub(crate) fn json_line(index: u64, leaf_hash: &Hash, json: &str) -> String {
    use base64::Engine;
    format!(
        "{{\"index\":{index},\"leaf_hash\":\"{}\",\"event\":{json}}}",
        base64::engine::general_purpose::STANDARD.encode(leaf_hash),
    )
}

/// A proof that an entry is in the tree of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    pub index: u64,
    pub size: u64,
    pub leaf_hash: Hash,
    pub root: Hash,
    pub hashes: Vec<Hash>,
}

impl InclusionProof {
    /// Checks the proof with the RFC 9162 verification algorithm.
    pub fn verify(&self) -> Result<(), ProofError> {
        verify_inclusion(
            &self.leaf_hash,
            self.index,
            self.size,
            &self.hashes,
            &self.root,
        )
    }
}

/// A proof that the tree of size `to` extends the tree of size `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    pub from_root: Hash,
    pub to_root: Hash,
    pub hashes: Vec<Hash>,
}

impl ConsistencyProof {
    pub fn verify(&self) -> Result<(), ProofError> {
        verify_consistency(
            self.from,
            self.to,
            &self.from_root,
            &self.to_root,
            &self.hashes,
        )
    }
}

struct Pending {
    event: Event,
    json: String,
    leaf: Hash,
    reply: oneshot::Sender<Result<u64, AuditError>>,
}

#[expect(
    clippy::large_enum_variant,
    reason = "appends are the hot path and catch-ups rare: no box per append"
)]
enum Command {
    Append(Pending),
    CatchUp(oneshot::Sender<Result<(), AuditError>>),
    /// Somebody waits for what is queued (`wait_jti`): commit now.
    Flush,
}

/// The tamper-evident audit log of one deployment.
pub struct AuditLog {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Command>,
    ticker: JoinHandle<()>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("origin", &self.shared.origin)
            .field("size", &self.size())
            .finish()
    }
}

struct Shared {
    store: Store,
    keys: Arc<dyn KeyManager>,
    origin: String,
    tree: RwLock<MerkleTree>,
    bus: broadcast::Sender<Arc<LogEntry>>,
    signer: RwLock<Arc<dyn Signer>>,
    /// Serializes checkpoint issuance and key rotation within this process.
    checkpoint_lock: tokio::sync::Mutex<()>,
    /// Set while the last batch failed to commit: queued appends are
    /// refused then, since nobody would learn that they were lost.
    failing: std::sync::atomic::AtomicBool,
    /// Token ids (with their event kind) of recently committed batches:
    /// `wait_jti` answers from here without a query. Bounded.
    recent_jtis: std::sync::Mutex<RecentJtis>,
    /// Bumped after every batch this process commits (or fails to), to
    /// wake `wait_jti` at once instead of at its next poll.
    commits: tokio::sync::watch::Sender<u64>,
}

/// Token ids per generation of `recent_jtis`: the last 200,000 to 400,000
/// committed are always known (16 bytes each).
const RECENT_JTIS: usize = 200_000;

/// Token ids (with their event kind) of recently committed batches, as
/// 128-bit digests in two generations: when the current one is full it
/// becomes the previous one, so the newest ids are never forgotten at once.
#[derive(Default)]
struct RecentJtis {
    current: std::collections::HashSet<[u8; 16]>,
    previous: std::collections::HashSet<[u8; 16]>,
}

impl RecentJtis {
    fn key(jti: &str, kind: &str) -> [u8; 16] {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(kind.as_bytes());
        ctx.update(&[0]);
        ctx.update(jti.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(ctx.finish().as_ref().get(..16).unwrap_or(&[0u8; 16]));
        out
    }

    fn contains(&self, jti: &str, kind: &str) -> bool {
        let k = Self::key(jti, kind);
        self.current.contains(&k) || self.previous.contains(&k)
    }

    fn insert(&mut self, jti: &str, kind: &str) {
        if self.current.len() >= RECENT_JTIS {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(Self::key(jti, kind));
    }
}

/// While waiting for a token id, the store is also polled this often
/// (another replica's commit wakes nothing here).
const JTI_POLL: std::time::Duration = std::time::Duration::from_millis(5);

// === impl AuditLog ===

impl AuditLog {
    /// Opens the log stored in `store`, loading its tree and checking it
    /// against the last checkpoint, and starts the writer and the
    /// once-a-second checkpointer. `origin` names the log in checkpoints,
    /// e.g. `example.org/keyless-audit`; it can never change afterwards.
    ///
    /// Fails with [`AuditError::Inconsistent`] when the stored entries do not
    /// chain or no longer match the last checkpoint: the fabric must not
    /// record new decisions on a log that was tampered with.
    pub async fn open(
        store: Store,
        keys: Arc<dyn KeyManager>,
        origin: String,
    ) -> Result<Arc<Self>, AuditError> {
        if origin.is_empty() || origin.contains('\n') {
            return Err(AuditError::InvalidRange(format!(
                "origin `{origin}` must be one non-empty line"
            )));
        }
        let stored = store.init_meta(ORIGIN_META_KEY, &origin).await?;
        if stored != origin {
            return Err(AuditError::OriginMismatch {
                stored,
                given: origin,
            });
        }
        let signer = load_or_create_key(&store, keys.as_ref()).await?;
        let tree = load_tree(&store).await?;
        check_last_checkpoint(&store, &tree).await?;
        let (bus, _) = broadcast::channel(BUS_CAPACITY);
        let shared = Arc::new(Shared {
            store,
            keys,
            origin,
            tree: RwLock::new(tree),
            bus,
            signer: RwLock::new(signer),
            checkpoint_lock: tokio::sync::Mutex::new(()),
            failing: std::sync::atomic::AtomicBool::new(false),
            recent_jtis: std::sync::Mutex::new(RecentJtis::default()),
            commits: tokio::sync::watch::channel(0).0,
        });
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run_writer(shared.clone(), rx));
        let ticker = tokio::spawn(run_ticker(shared.clone(), queue.clone()));
        tracing::info!(origin = %shared.origin, size = shared.tree().size(), "audit log open");
        Ok(Arc::new(Self {
            shared,
            queue,
            ticker,
        }))
    }

    /// Appends `event` (its `time` set now if zero) and returns its index
    /// once it is durably stored. An error means the event is not
    /// acknowledged: the action it describes must fail.
    pub async fn append(&self, event: Event) -> Result<u64, AuditError> {
        let mut event = event.normalized();
        if event.time == 0 {
            event.time = keyless_store::now_millis();
        }
        let json = event.canonical_json().map_err(AuditError::Serialize)?;
        let leaf = leaf_hash(json.as_bytes());
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Command::Append(Pending {
                event,
                json,
                leaf,
                reply,
            }))
            .await
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Queues `event` for the next group commit and returns without
    /// waiting for it (within a few milliseconds: a batch nobody waits for
    /// lingers up to 2 ms to gather more, a waiter flushes it). For
    /// decisions whose effect is checked against the log before it takes
    /// hold: a token issuance names its `jti`, and the token is honoured
    /// only once [`AuditLog::has_jti`] finds it committed. Refused while
    /// commits are failing.
    pub async fn append_queued(&self, event: Event) -> Result<(), AuditError> {
        if self
            .shared
            .failing
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(AuditError::WriteFailed(
                "the last audit batch failed to commit".into(),
            ));
        }
        let mut event = event.normalized();
        if event.time == 0 {
            event.time = keyless_store::now_millis();
        }
        let json = event.canonical_json().map_err(AuditError::Serialize)?;
        let leaf = leaf_hash(json.as_bytes());
        // Nobody waits for the answer: the receiver is dropped at once.
        let (reply, _) = oneshot::channel();
        self.queue
            .send(Command::Append(Pending {
                event,
                json,
                leaf,
                reply,
            }))
            .await
            .map_err(|_| AuditError::Closed)
    }

    /// Whether a committed event of `kind` names token `jti` (its `jti`
    /// detail), in this process's log or another replica's.
    pub async fn has_jti(&self, jti: &str, kind: &str) -> Result<bool, AuditError> {
        if self.shared.recently_committed(jti, kind) {
            return Ok(true);
        }
        db::has_jti(self.shared.store.reader(), jti, kind).await
    }

    /// Token ids named by committed events of `kind` whose time is at or
    /// after `since_ms` (Unix ms), from the store.
    pub async fn jtis_since(&self, kind: &str, since_ms: i64) -> Result<Vec<String>, AuditError> {
        db::jtis_since(self.shared.store.reader(), kind, since_ms).await
    }

    /// Waits at most `timeout` for [`AuditLog::has_jti`]: woken by this
    /// process's next group commit, and polling the store meanwhile for
    /// other replicas' commits.
    pub async fn wait_jti(
        &self,
        jti: &str,
        kind: &str,
        timeout: std::time::Duration,
    ) -> Result<bool, AuditError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribed before the first check: a commit between the check and
        // the wait still wakes us.
        let mut commits = self.shared.commits.subscribe();
        let mut flushed = false;
        loop {
            if self.has_jti(jti, kind).await? {
                return Ok(true);
            }
            if !flushed {
                // The event may sit in a lingering batch: have it committed
                // now. A full queue is being committed anyway.
                let _ = self.queue.try_send(Command::Flush);
                flushed = true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let step = (deadline - now).min(JTI_POLL);
            if let Ok(Err(_)) = tokio::time::timeout(step, commits.changed()).await {
                // The writer is gone: only the store can still answer.
                tokio::time::sleep(step).await;
            }
        }
    }

    /// The origin line of this log's checkpoints.
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// The store the log lives in.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Number of committed entries.
    pub fn size(&self) -> u64 {
        self.shared.tree().size()
    }

    /// The root of the committed tree.
    pub fn root(&self) -> Hash {
        self.shared.tree().root()
    }

    /// Receives every entry committed from now on, in index order. A
    /// receiver that falls [`BUS_CAPACITY`] entries behind gets
    /// `RecvError::Lagged`: appends never wait for subscribers.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogEntry>> {
        self.shared.bus.subscribe()
    }

    /// Entries with `start <= index < end`, read from the store.
    pub async fn entries(&self, start: u64, end: u64) -> Result<Vec<LogEntry>, AuditError> {
        read_log_entries(&self.shared.store, start, end).await
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<InclusionProof, AuditError> {
        let tree = self.shared.tree();
        let hashes = tree.inclusion_proof(index, size)?;
        Ok(InclusionProof {
            index,
            size,
            leaf_hash: tree
                .leaf(index)
                .copied()
                .ok_or(AuditError::NoSuchEntry(index))?,
            root: tree.root_at(size)?,
            hashes,
        })
    }

    /// The consistency proof between the trees of `from` and `to` entries.
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<ConsistencyProof, AuditError> {
        let tree = self.shared.tree();
        Ok(ConsistencyProof {
            from,
            to,
            hashes: tree.consistency_proof(from, to)?,
            from_root: tree.root_at(from)?,
            to_root: tree.root_at(to)?,
        })
    }

    /// The last checkpoint issued, if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        latest_checkpoint(&self.shared.store).await
    }

    /// Issues a checkpoint for the current tree now, unless the latest one
    /// already covers it with the current key (then returns that one). It
    /// is signed only after a consistency proof from the previous checkpoint
    /// has verified; otherwise nothing is signed and the error says why.
    pub async fn checkpoint_now(&self) -> Result<Checkpoint, AuditError> {
        self.shared.checkpoint(&self.queue).await
    }

    /// Replaces the checkpoint key with a new one (`audit-checkpoint-<n>`),
    /// records the rotation as an event and issues a checkpoint with the
    /// new key. Old public keys stay in `audit_keys`, so every checkpoint
    /// ever issued still verifies. Returns the new key's name.
    pub async fn rotate_checkpoint_key(&self) -> Result<String, AuditError> {
        let (old, new) = {
            let _guard = self.shared.checkpoint_lock.lock().await;
            let old = self.shared.signer().name().to_owned();
            let rows = db::keys(self.shared.store.pool()).await?;
            let next = rows.last().map_or(1, |k| k.seq + 1);
            let signer = create_key(&self.shared.store, self.shared.keys.as_ref(), next).await?;
            *self
                .shared
                .signer
                .write()
                .unwrap_or_else(PoisonError::into_inner) = signer.clone();
            (old, signer)
        };
        use base64::Engine;
        let event = Event::new(kinds::AUDIT_KEY_ROTATED, crate::Outcome::Success)
            .detail("previous_key", old)
            .detail("key", new.name())
            .detail(
                "public_key",
                base64::engine::general_purpose::STANDARD.encode(new.public_key()),
            );
        self.append(event).await?;
        self.checkpoint_now().await?;
        tracing::info!(key = new.name(), "rotated audit checkpoint key");
        Ok(new.name().to_owned())
    }
}

impl AuditLog {
    /// Stops the checkpointer and signs a last checkpoint covering every
    /// acknowledged entry, so the state at shutdown is attested. Appends
    /// still work afterwards (nothing is lost if a caller is late).
    pub async fn shutdown(&self) {
        self.ticker.abort();
        if let Err(e) = self.checkpoint_now().await {
            tracing::error!(error = %e, "final audit checkpoint not issued");
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // The writer ends by itself once the queue's last sender is gone.
        self.ticker.abort();
    }
}

#[async_trait::async_trait]
impl EventSink for AuditLog {
    async fn record(&self, event: Event) -> Result<u64, SinkError> {
        self.append(event)
            .await
            .map_err(|e| SinkError(e.to_string()))
    }

    async fn record_queued(&self, event: Event) -> Result<(), SinkError> {
        self.append_queued(event)
            .await
            .map_err(|e| SinkError(e.to_string()))
    }

    async fn has_jti(&self, jti: &str, kind: &str) -> Result<bool, SinkError> {
        AuditLog::has_jti(self, jti, kind)
            .await
            .map_err(|e| SinkError(e.to_string()))
    }

    async fn wait_jti(
        &self,
        jti: &str,
        kind: &str,
        timeout: std::time::Duration,
    ) -> Result<bool, SinkError> {
        AuditLog::wait_jti(self, jti, kind, timeout)
            .await
            .map_err(|e| SinkError(e.to_string()))
    }

    async fn jtis_since(&self, kind: &str, since_ms: i64) -> Result<Vec<String>, SinkError> {
        AuditLog::jtis_since(self, kind, since_ms)
            .await
            .map_err(|e| SinkError(e.to_string()))
    }
}

// === impl Shared ===

impl Shared {
    fn recently_committed(&self, jti: &str, kind: &str) -> bool {
        self.recent_jtis
            .lock()
            .map(|s| s.contains(jti, kind))
            .unwrap_or(false)
    }

    /// Remembers the token ids of a committed batch and wakes waiters.
    fn committed(&self, batch: &[Pending]) {
        if let Ok(mut recent) = self.recent_jtis.lock() {
            for p in batch {
                if let Some(jti) = p.event.detail.get("jti").and_then(|v| v.as_str()) {
                    recent.insert(jti, &p.event.kind);
                }
            }
        }
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn tree(&self) -> RwLockReadGuard<'_, MerkleTree> {
        // A panic elsewhere cannot leave the tree half-updated (pushes are
        // infallible), so a poisoned lock still guards a sound tree.
        self.tree.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn tree_mut(&self) -> RwLockWriteGuard<'_, MerkleTree> {
        self.tree.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn signer(&self) -> Arc<dyn Signer> {
        self.signer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Writes one batch; on a conflict with another writer, catches up and
    /// retries a few times. Answers every caller.
    async fn commit_batch(&self, batch: Vec<Pending>) {
        let mut result = self.try_commit(&batch).await;
        for _ in 0..3 {
            match &result {
                Err(e) if db::is_unique_violation(e) => {
                    tracing::info!("another writer appended to the audit log; catching up");
                    if let Err(e) = self.catch_up().await {
                        result = Err(e);
                        break;
                    }
                    result = self.try_commit(&batch).await;
                }
                _ => break,
            }
        }
        self.failing
            .store(result.is_err(), std::sync::atomic::Ordering::Release);
        match result {
            Ok(first) => {
                self.committed(&batch);
                for (k, p) in batch.into_iter().enumerate() {
                    let index = first + k as u64;
                    let entry = LogEntry {
                        index,
                        leaf_hash: p.leaf,
                        event: p.event,
                        json: p.json,
                    };
                    // No subscriber is not an error.
                    let _ = self.bus.send(Arc::new(entry));
                    let _ = p.reply.send(Ok(index));
                }
            }
            Err(e) => {
                self.commits.send_modify(|n| *n = n.wrapping_add(1));
                tracing::error!(error = %e, events = batch.len(), "audit batch not stored");
                let msg = e.to_string();
                for p in batch {
                    let _ = p.reply.send(Err(AuditError::WriteFailed(msg.clone())));
                }
            }
        }
    }

    /// Stages the batch on a copy of the frontier, writes entries and seal
    /// in one transaction, and extends the tree after the commit.
    async fn try_commit(&self, batch: &[Pending]) -> Result<u64, AuditError> {
        let (base, mut frontier) = {
            let tree = self.tree();
            (tree.size(), tree.frontier().clone())
        };
        let mut rows = Vec::with_capacity(batch.len());
        for p in batch {
            frontier.push(p.leaf);
            rows.push((p.leaf, frontier.root(), p.json.as_str()));
        }
        let size = frontier.size();
        let root = frontier.root();
        let signer = self.signer();
        let signature = signer.sign(note_body(&self.origin, size, &root).as_bytes())?;

        let jtis: Vec<db::JtiRow<'_>> = batch
            .iter()
            .enumerate()
            .filter_map(|(k, p)| {
                let jti = p.event.detail.get("jti")?.as_str()?;
                Some((jti, p.event.kind.as_str(), base + k as u64, p.event.time))
            })
            .collect();
        match self.store.dialect() {
            Dialect::Sqlite => {
                db::commit_batch_sqlite(
                    self.store.pool(),
                    base,
                    &rows,
                    &jtis,
                    (size, &root, signer.name(), &signature),
                )
                .await?;
            }
            Dialect::Postgres => {
                let mut tx = self.store.pool().begin().await?;
                db::insert_entries(&mut tx, base, &rows).await?;
                db::insert_jtis(&mut tx, &jtis).await?;
                db::insert_seal(&mut tx, size, &root, signer.name(), &signature).await?;
                tx.commit().await?;
            }
        }

        let mut tree = self.tree_mut();
        for p in batch {
            tree.push(p.leaf);
        }
        Ok(base)
    }

    /// Loads entries other writers committed, checking each one's hash and
    /// chain before trusting it, and publishes them in order.
    async fn catch_up(&self) -> Result<(), AuditError> {
        loop {
            let (base, mut frontier) = {
                let tree = self.tree();
                (tree.size(), tree.frontier().clone())
            };
            let rows = db::read_entries(self.store.pool(), base, base.saturating_add(1024)).await?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut entries = Vec::with_capacity(rows.len());
            for (k, row) in rows.into_iter().enumerate() {
                let index = base + k as u64;
                let leaf = leaf_hash(row.event.as_bytes());
                frontier.push(leaf);
                if row.index != index || row.leaf_hash != leaf || row.root != frontier.root() {
                    return Err(AuditError::Inconsistent(format!(
                        "entry {index} written by another process does not chain"
                    )));
                }
                let event = Event::from_json(&row.event).map_err(|e| {
                    AuditError::Inconsistent(format!("entry {index} is not a valid event: {e}"))
                })?;
                entries.push(LogEntry {
                    index,
                    leaf_hash: leaf,
                    event,
                    json: row.event,
                });
            }
            {
                let mut tree = self.tree_mut();
                if tree.size() != base {
                    return Err(AuditError::Inconsistent(
                        "tree changed during catch-up".into(),
                    ));
                }
                for e in &entries {
                    tree.push(e.leaf_hash);
                }
            }
            for e in entries {
                let _ = self.bus.send(Arc::new(e));
            }
        }
    }

    async fn checkpoint(&self, queue: &mpsc::Sender<Command>) -> Result<Checkpoint, AuditError> {
        let _guard = self.checkpoint_lock.lock().await;
        for _ in 0..3 {
            let prev = match db::latest_checkpoint_row(self.store.pool()).await? {
                Some(row) => Some(self.trusted_checkpoint(row).await?),
                None => None,
            };
            if let Some(p) = &prev
                && p.size > self.tree().size()
            {
                // Another process checkpointed entries we have not seen.
                request_catch_up(queue).await?;
                if p.size > self.tree().size() {
                    return Err(AuditError::Inconsistent(format!(
                        "checkpoint {} covers {} entries but the log holds {}",
                        p.seq,
                        p.size,
                        self.tree().size()
                    )));
                }
            }
            let signer = self.signer();
            let (size, root, proof) = {
                let tree = self.tree();
                let proof = match &prev {
                    Some(p) => tree.consistency_proof(p.size, tree.size())?,
                    None => Vec::new(),
                };
                (tree.size(), tree.root(), proof)
            };
            if let Some(p) = &prev {
                verify_consistency(p.size, size, &p.root, &root, &proof).map_err(|e| {
                    AuditError::Inconsistent(format!(
                        "the log of size {size} is not consistent with checkpoint {} of size {}: {e}",
                        p.seq, p.size
                    ))
                })?;
                if p.size == size && p.key_name == signer.name() {
                    return Ok(p.clone());
                }
            }
            let note = sign_note(signer.as_ref(), &note_body(&self.origin, size, &root))?;
            let cp = Checkpoint {
                seq: prev.as_ref().map_or(1, |p| p.seq + 1),
                origin: self.origin.clone(),
                size,
                root,
                key_name: signer.name().to_owned(),
                note,
                issued_at: keyless_store::now_millis(),
            };
            match db::insert_checkpoint(self.store.pool(), &cp).await {
                Ok(()) => {
                    tracing::debug!(seq = cp.seq, size, "issued audit checkpoint");
                    return Ok(cp);
                }
                // Another process issued this seq first: start over from it.
                Err(e) if db::is_unique_violation(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(AuditError::Inconsistent(
            "checkpoint issuance kept racing another writer".into(),
        ))
    }

    /// A stored checkpoint whose note parses and whose signature verifies
    /// with its recorded key: only such a one is extended.
    async fn trusted_checkpoint(&self, row: db::CheckpointRow) -> Result<Checkpoint, AuditError> {
        let seq = row.seq;
        let (cp, parsed) = db::checkpoint_from_row(row)?;
        let keys = db::keys(self.store.pool()).await?;
        let key = keys.iter().find(|k| k.name == cp.key_name).ok_or_else(|| {
            AuditError::Inconsistent(format!(
                "checkpoint {seq} names unknown key `{}`",
                cp.key_name
            ))
        })?;
        parsed
            .verify(&key.name, &key.public_key)
            .map_err(|e| AuditError::Inconsistent(format!("checkpoint {seq}: {e}")))?;
        if parsed.origin != self.origin {
            return Err(AuditError::Inconsistent(format!(
                "checkpoint {seq} is for another log"
            )));
        }
        Ok(cp)
    }
}

async fn request_catch_up(queue: &mpsc::Sender<Command>) -> Result<(), AuditError> {
    let (tx, rx) = oneshot::channel();
    queue
        .send(Command::CatchUp(tx))
        .await
        .map_err(|_| AuditError::Closed)?;
    rx.await.map_err(|_| AuditError::Closed)?
}

async fn run_writer(shared: Arc<Shared>, mut rx: mpsc::Receiver<Command>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut catch_ups = Vec::new();
        let mut next = Some(first);
        // Whether anybody waits for this batch: an awaited append, a
        // catch-up, a flush. A batch of queued appends only (nobody holds
        // their answer) lingers a little to gather more: fewer, larger
        // commits, and nothing is acknowledged before it is on disk.
        let mut urgent = false;
        let linger_until = tokio::time::Instant::now() + LINGER;
        loop {
            // Group commit: everything that queued up while the previous
            // transaction was committing goes into this one.
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Append(p) => {
                        urgent |= !p.reply.is_closed();
                        batch.push(p);
                    }
                    Command::CatchUp(reply) => {
                        urgent = true;
                        catch_ups.push(reply);
                    }
                    Command::Flush => urgent = true,
                }
                if batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if urgent || batch.is_empty() || batch.len() >= LINGER_BATCH {
                break;
            }
            match tokio::time::timeout_at(linger_until, rx.recv()).await {
                Ok(Some(cmd)) => next = Some(cmd),
                // Closed, or lingered long enough.
                Ok(None) | Err(_) => break,
            }
        }
        for reply in catch_ups {
            let _ = reply.send(shared.catch_up().await);
        }
        if !batch.is_empty() {
            shared.commit_batch(std::mem::take(&mut batch)).await;
        }
    }
}

async fn run_ticker(shared: Arc<Shared>, queue: mpsc::Sender<Command>) {
    let mut interval = tokio::time::interval(CHECKPOINT_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checkpointed = None;
    loop {
        interval.tick().await;
        if let Err(e) = request_catch_up(&queue).await {
            tracing::error!(error = %e, "audit catch-up failed");
        }
        let size = shared.tree().size();
        if checkpointed == Some(size) {
            continue;
        }
        match shared.checkpoint(&queue).await {
            Ok(cp) => checkpointed = Some(cp.size),
            Err(e) => tracing::error!(error = %e, "audit checkpoint not issued"),
        }
    }
}

/// Loads the tree from the stored leaf hashes and checks the stored chain
/// at its end.
async fn load_tree(store: &Store) -> Result<MerkleTree, AuditError> {
    let tree = MerkleTree::from_leaves(db::load_leaf_hashes(store.pool()).await?);
    if let Some((idx, root)) = db::last_root(store.pool()).await?
        && (idx + 1 != tree.size() || root != tree.root())
    {
        return Err(AuditError::Inconsistent(format!(
            "entry {idx} does not chain to the entries before it"
        )));
    }
    Ok(tree)
}

async fn check_last_checkpoint(store: &Store, tree: &MerkleTree) -> Result<(), AuditError> {
    let Some(row) = db::latest_checkpoint_row(store.pool()).await? else {
        return Ok(());
    };
    let (cp, _) = db::checkpoint_from_row(row)?;
    if cp.size > tree.size() {
        return Err(AuditError::Inconsistent(format!(
            "checkpoint {} covers {} entries but only {} are stored",
            cp.seq,
            cp.size,
            tree.size()
        )));
    }
    if tree.root_at(cp.size)? != cp.root {
        return Err(AuditError::Inconsistent(format!(
            "the stored entries no longer match checkpoint {}",
            cp.seq
        )));
    }
    Ok(())
}

/// The key in force (the last in `audit_keys`), created on first use.
async fn load_or_create_key(
    store: &Store,
    keys: &dyn KeyManager,
) -> Result<Arc<dyn Signer>, AuditError> {
    let rows = db::keys(store.pool()).await?;
    let Some(last) = rows.last() else {
        return create_key(store, keys, 1).await;
    };
    match keys.load(&last.name).await {
        Ok(signer)
            if signer.algorithm() == KeyAlgorithm::Ed25519
                && signer.public_key() == last.public_key =>
        {
            Ok(signer)
        }
        Ok(_) => Err(AuditError::KeyMismatch(last.name.clone())),
        Err(StoreError::KeyNotFound(_)) => {
            // The key manager lost the key (a new key directory on a shared
            // database): continue with a new key. Old checkpoints still
            // verify with the public keys kept in the table.
            tracing::warn!(key = %last.name, "audit checkpoint key missing from the key manager; rotating");
            create_key(store, keys, last.seq + 1).await
        }
        Err(e) => Err(e.into()),
    }
}

async fn create_key(
    store: &Store,
    keys: &dyn KeyManager,
    seq: u64,
) -> Result<Arc<dyn Signer>, AuditError> {
    let name = format!("{CHECKPOINT_KEY_PREFIX}{seq}");
    let signer = match keys.generate(&name, KeyAlgorithm::Ed25519).await {
        Ok(s) => s,
        // Left over from a crash between generating and recording it, or
        // made by another process sharing the key manager.
        Err(StoreError::KeyExists(_)) => keys.load(&name).await?,
        Err(e) => return Err(e.into()),
    };
    if signer.algorithm() != KeyAlgorithm::Ed25519 {
        return Err(AuditError::KeyMismatch(name));
    }
    match db::insert_key(store.pool(), seq, &name, signer.public_key()).await {
        Ok(()) => Ok(signer),
        Err(e) if db::is_unique_violation(&e) => {
            let rows = db::keys(store.pool()).await?;
            match rows.iter().find(|k| k.name == name) {
                Some(k) if k.public_key == signer.public_key() => Ok(signer),
                _ => Err(AuditError::KeyMismatch(name)),
            }
        }
        Err(e) => Err(e),
    }
}

/// Entries with `start <= index < end` from the store.
pub(crate) async fn read_log_entries(
    store: &Store,
    start: u64,
    end: u64,
) -> Result<Vec<LogEntry>, AuditError> {
    db::read_entries(store.reader(), start, end)
        .await?
        .into_iter()
        .map(|row| {
            let event = Event::from_json(&row.event).map_err(|e| {
                AuditError::Inconsistent(format!("entry {} is not a valid event: {e}", row.index))
            })?;
            Ok(LogEntry {
                index: row.index,
                leaf_hash: db::to_hash(row.leaf_hash, "leaf hash")?,
                event,
                json: row.event,
            })
        })
        .collect()
}

/// The last checkpoint stored (size and root as signed in its note).
pub async fn latest_checkpoint(store: &Store) -> Result<Option<Checkpoint>, AuditError> {
    match db::latest_checkpoint_row(store.pool()).await? {
        Some(row) => Ok(Some(db::checkpoint_from_row(row)?.0)),
        None => Ok(None),
    }
}
