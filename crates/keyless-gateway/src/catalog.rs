//! The tool catalog: every tool the upstreams offer, with its definition
//! pinned (DESIGN.md step 3; standards.md "Tool poisoning").
//!
//! A tool is the contract an agent relies on: its name, its description
//! (which the model reads as instructions) and its input schema. An upstream
//! that silently changes any of them could steer the model, so the gateway
//! pins the SHA-256 of the three on first sight of a server (trust on first
//! use) and blocks a tool whose definition changed, a tool that appeared
//! afterwards and a tool that vanished, until an operator approves it.
//!
//! Invariant: a tool is `Approved` only while the hash it was approved with
//! equals the hash the upstream offers now. The per-call lookup
//! ([`Catalog::status`]) reads memory only; the memory map is updated after
//! the database transaction that changed it commits, so it never shows a
//! state the store does not hold.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};

use keyless_audit::{Event, EventSink, Outcome, SinkError};
use keyless_store::sqlx::{self, Row};
use keyless_store::{Store, now_millis};
use serde_json::{Value, json};

/// Event recorded when a tool is pinned on first sight of its server.
pub const TOOL_PINNED: &str = "tool.pinned";
/// Event recorded when a tool becomes blocked (new, changed or vanished).
pub const TOOL_BLOCKED: &str = "tool.blocked_changed_definition";
/// Event recorded when an operator approves a tool (or its definition went
/// back to the pinned one).
pub const TOOL_APPROVED: &str = "tool.approved";

const STATUS_APPROVED: &str = "approved";
const STATUS_BLOCKED: &str = "blocked";

/// Errors of the tool catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No tool of that name is known.
    #[error("tool `{0}` not found")]
    NotFound(String),
    /// The tool list offered by an upstream is malformed.
    #[error("invalid tool `{name}`: {reason}")]
    InvalidTool { name: String, reason: String },
    /// Another process changed the tool between our read and our write.
    #[error("tool `{0}` changed concurrently; retry")]
    Conflict(String),
    /// A stored row cannot be read back.
    #[error("corrupt catalog row for `{name}`: {reason}")]
    Corrupt { name: String, reason: String },
    #[error("catalog database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Audit(#[from] SinkError),
}

/// A tool as an upstream offers it, namespaced `server.tool`.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    /// The namespaced name, `server.tool`.
    pub name: String,
    /// The upstream server offering it.
    pub server: String,
    pub description: String,
    pub input_schema: Value,
}

/// Why a tool is blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockReason {
    /// The tool appeared after its server was first pinned.
    New,
    /// Its definition differs from the pinned one.
    Changed,
    /// The upstream no longer offers it.
    Vanished,
}

/// Whether a tool may be called.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum ToolStatus {
    Approved,
    Blocked { reason: BlockReason },
}

/// A tool's pin, as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PinnedTool {
    pub name: String,
    pub server: String,
    pub status: ToolStatus,
    /// The approved definition hash; `None` for a tool never approved.
    pub pinned_hash: Option<String>,
    /// The hash the upstream offered last; `None` once it vanished.
    pub seen_hash: Option<String>,
    /// `{"name", "description", "inputSchema"}` as last seen.
    pub definition: Value,
    pub first_seen: i64,
    pub updated_at: i64,
    pub approved_at: Option<i64>,
}

/// SHA-256 (hex) of the canonical JSON of `[name, description,
/// input_schema]` (object keys sorted at every level, no whitespace).
pub fn definition_hash(name: &str, description: &str, input_schema: &Value) -> String {
    let value = json!([name, description, input_schema]);
    // Serializing a `Value` cannot fail; should it ever, serde_json's own
    // output (sorted keys unless `preserve_order`) still hashes the content.
    let canonical =
        keyless_audit::canonical::to_canonical_json(&value).unwrap_or_else(|_| value.to_string());
    hex::encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref(),
    )
}

/// The JSON kept as a tool's last seen definition.
fn definition_json(tool: &ToolDef) -> Value {
    json!({
        "name": tool.name,
        "description": tool.description,
        "inputSchema": tool.input_schema,
    })
}

/// The pinned tool definitions of every upstream. Create with
/// [`Catalog::open`].
#[derive(Debug)]
pub struct Catalog {
    store: Store,
    events: Arc<dyn EventSink>,
    /// Every pin by name, as committed.
    pins: RwLock<BTreeMap<String, PinnedTool>>,
    /// Serializes the writers (sync, approve, reload) of this catalog.
    write: tokio::sync::Mutex<()>,
}

/// One change a sync or an approval writes.
#[derive(Debug)]
enum Write {
    Insert(PinnedTool),
    Update(PinnedTool),
    Delete(String),
}

// === impl Catalog ===

impl Catalog {
    /// Opens the catalog and loads all pins into memory.
    pub async fn open(store: Store, events: Arc<dyn EventSink>) -> Result<Catalog, CatalogError> {
        let pins = load_all(&store).await?;
        Ok(Catalog {
            store,
            events,
            pins: RwLock::new(pins),
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// Reconciles what `server` offers now with the pins. First sight of a
    /// server (no pin row for that server at all) pins every tool as
    /// approved (trust on first use; event `tool.pinned` per tool).
    /// Afterwards: a tool with no pin is blocked `new`; a seen hash that
    /// differs from the pinned hash blocks it `changed`; a pinned tool of
    /// this server absent from `tools` is blocked `vanished`; a blocked tool
    /// whose definition went back to the pinned hash is approved again.
    /// Every tool that becomes blocked records `tool.blocked_changed_definition`.
    /// Returns the changes (name and new status). Idempotent.
    ///
    /// A tool list with a tool of another server, an empty name or a name
    /// twice is refused as a whole and changes nothing.
    ///
    /// Events are recorded after the commit (the audit log may share the
    /// database, and SQLite has one writer); if the sink fails, the error is
    /// returned and the blocks stay in force, the safe side.
    pub async fn sync(
        &self,
        server: &str,
        tools: &[ToolDef],
    ) -> Result<Vec<(String, ToolStatus)>, CatalogError> {
        validate(server, tools)?;
        let _guard = self.write.lock().await;
        let now = now_millis();
        // The database, not memory, is the base: another replica may have
        // synced or approved since we last loaded.
        let current = load_server(&self.store, server).await?;
        for tool in tools {
            if let Some(other) = self.server_of(&tool.name)
                && other != server
            {
                return Err(CatalogError::InvalidTool {
                    name: tool.name.clone(),
                    reason: format!("already offered by server `{other}`"),
                });
            }
        }
        let first_sight = current.is_empty();
        let mut writes = Vec::new();
        let mut events = Vec::new();
        let mut changes = Vec::new();
        let offered: HashSet<&str> = tools.iter().map(|t| t.name.as_str()).collect();

        for tool in tools {
            let hash = definition_hash(&tool.name, &tool.description, &tool.input_schema);
            let definition = definition_json(tool);
            let Some(pin) = current.get(&tool.name) else {
                let (status, pinned_hash, approved_at) = if first_sight {
                    (ToolStatus::Approved, Some(hash.clone()), Some(now))
                } else {
                    let reason = BlockReason::New;
                    (ToolStatus::Blocked { reason }, None, None)
                };
                let new = PinnedTool {
                    name: tool.name.clone(),
                    server: server.to_owned(),
                    status: status.clone(),
                    pinned_hash,
                    seen_hash: Some(hash.clone()),
                    definition,
                    first_seen: now,
                    updated_at: now,
                    approved_at,
                };
                events.push(if first_sight {
                    Event::new(TOOL_PINNED, Outcome::Success)
                        .tool(&tool.name)
                        .detail("server", server)
                        .detail("hash", hash.as_str())
                } else {
                    blocked_event(&new, BlockReason::New)
                });
                changes.push((tool.name.clone(), status));
                writes.push(Write::Insert(new));
                continue;
            };
            let status = match &pin.pinned_hash {
                Some(pinned) if *pinned == hash => ToolStatus::Approved,
                Some(_) => ToolStatus::Blocked {
                    reason: BlockReason::Changed,
                },
                None => ToolStatus::Blocked {
                    reason: BlockReason::New,
                },
            };
            if status == pin.status && pin.seen_hash.as_deref() == Some(hash.as_str()) {
                continue;
            }
            let mut new = pin.clone();
            new.seen_hash = Some(hash);
            new.definition = definition;
            new.updated_at = now;
            new.status = status.clone();
            if status != pin.status {
                match &status {
                    ToolStatus::Blocked { reason } => events.push(blocked_event(&new, *reason)),
                    ToolStatus::Approved => events.push(
                        Event::new(TOOL_APPROVED, Outcome::Success)
                            .tool(&new.name)
                            .detail("server", server)
                            .detail("hash", new.seen_hash.clone().unwrap_or_default())
                            .detail("by", "definition reverted to the pinned one"),
                    ),
                }
                changes.push((new.name.clone(), status));
            }
            writes.push(Write::Update(new));
        }

        for pin in current.values() {
            let vanished = ToolStatus::Blocked {
                reason: BlockReason::Vanished,
            };
            if offered.contains(pin.name.as_str()) || pin.status == vanished {
                continue;
            }
            let mut new = pin.clone();
            new.status = vanished.clone();
            new.seen_hash = None;
            new.updated_at = now;
            events.push(blocked_event(&new, BlockReason::Vanished));
            changes.push((new.name.clone(), vanished));
            writes.push(Write::Update(new));
        }

        self.commit(writes).await?;
        for event in events {
            self.events.record(event).await?;
        }
        Ok(changes)
    }

    /// In-memory lookup for the per-call hot path (no database access).
    pub fn status(&self, name: &str) -> Option<ToolStatus> {
        self.pins
            .read()
            .ok()
            .and_then(|pins| pins.get(name).map(|p| p.status.clone()))
    }

    /// Operator approval: pins the seen hash and unblocks. Approving a
    /// vanished tool removes its pin (the removal is acknowledged) and
    /// returns the removed record. Unknown name → [`CatalogError::NotFound`];
    /// an already approved tool is returned unchanged. Event `tool.approved`.
    pub async fn approve(&self, name: &str) -> Result<PinnedTool, CatalogError> {
        let _guard = self.write.lock().await;
        let Some(pin) = load_one(&self.store, name).await? else {
            self.apply(&[Write::Delete(name.to_owned())]);
            return Err(CatalogError::NotFound(name.to_owned()));
        };
        if pin.status == ToolStatus::Approved {
            self.apply(&[Write::Update(pin.clone())]);
            return Ok(pin);
        }
        let now = now_millis();
        let vanished = pin.status
            == ToolStatus::Blocked {
                reason: BlockReason::Vanished,
            };
        let (write, result) = if vanished {
            (Write::Delete(pin.name.clone()), pin.clone())
        } else {
            let mut new = pin.clone();
            new.pinned_hash = pin.seen_hash.clone();
            new.status = ToolStatus::Approved;
            new.updated_at = now;
            new.approved_at = Some(now);
            (Write::Update(new.clone()), new)
        };
        // Conditional on the row we read: a sync by another replica in
        // between must not get approved blind.
        let mut tx = self.store.pool().begin().await?;
        let affected = match &write {
            Write::Delete(_) => sqlx::query(
                "DELETE FROM gateway_tools WHERE name = $1 AND status = $2 AND updated_at = $3",
            )
            .bind(&pin.name)
            .bind(STATUS_BLOCKED)
            .bind(pin.updated_at)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            _ => sqlx::query(
                "UPDATE gateway_tools SET pinned_hash = $1, status = $2, reason = NULL, \
                 updated_at = $3, approved_at = $4 \
                 WHERE name = $5 AND status = $6 AND updated_at = $7",
            )
            .bind(&result.pinned_hash)
            .bind(STATUS_APPROVED)
            .bind(now)
            .bind(now)
            .bind(&pin.name)
            .bind(STATUS_BLOCKED)
            .bind(pin.updated_at)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };
        if affected != 1 {
            return Err(CatalogError::Conflict(pin.name));
        }
        tx.commit().await?;
        self.apply(&[write]);
        let mut event = Event::new(TOOL_APPROVED, Outcome::Success)
            .tool(&pin.name)
            .detail("server", pin.server.as_str())
            .detail("old_hash", pin.pinned_hash.clone().unwrap_or_default())
            .detail("new_hash", pin.seen_hash.clone().unwrap_or_default());
        if let ToolStatus::Blocked { reason } = pin.status {
            event = event.detail("was", reason.as_str());
        }
        if vanished {
            event = event.detail("removed", true);
        }
        self.events.record(event).await?;
        Ok(result)
    }

    /// Every pin, sorted by name, as stored.
    pub async fn list(&self) -> Result<Vec<PinnedTool>, CatalogError> {
        Ok(load_all(&self.store).await?.into_values().collect())
    }

    /// Re-reads pins from the store (another process approved).
    pub async fn reload(&self) -> Result<(), CatalogError> {
        let _guard = self.write.lock().await;
        let pins = load_all(&self.store).await?;
        if let Ok(mut map) = self.pins.write() {
            *map = pins;
        }
        Ok(())
    }

    fn server_of(&self, name: &str) -> Option<String> {
        self.pins
            .read()
            .ok()
            .and_then(|pins| pins.get(name).map(|p| p.server.clone()))
    }

    /// Writes `writes` in one transaction, then shows them in memory.
    async fn commit(&self, writes: Vec<Write>) -> Result<(), CatalogError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.pool().begin().await?;
        for write in &writes {
            let affected = match write {
                Write::Insert(p) => {
                    let (status, reason) = status_columns(&p.status);
                    sqlx::query(
                        "INSERT INTO gateway_tools (name, server, pinned_hash, seen_hash, \
                         definition, status, reason, first_seen, updated_at, approved_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                         ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(&p.name)
                    .bind(&p.server)
                    .bind(&p.pinned_hash)
                    .bind(&p.seen_hash)
                    .bind(p.definition.to_string())
                    .bind(status)
                    .bind(reason)
                    .bind(p.first_seen)
                    .bind(p.updated_at)
                    .bind(p.approved_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                }
                Write::Update(p) => {
                    let (status, reason) = status_columns(&p.status);
                    sqlx::query(
                        "UPDATE gateway_tools SET pinned_hash = $1, seen_hash = $2, \
                         definition = $3, status = $4, reason = $5, updated_at = $6, \
                         approved_at = $7 WHERE name = $8 AND server = $9",
                    )
                    .bind(&p.pinned_hash)
                    .bind(&p.seen_hash)
                    .bind(p.definition.to_string())
                    .bind(status)
                    .bind(reason)
                    .bind(p.updated_at)
                    .bind(p.approved_at)
                    .bind(&p.name)
                    .bind(&p.server)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                }
                Write::Delete(name) => sqlx::query("DELETE FROM gateway_tools WHERE name = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
            };
            if affected != 1 {
                let name = match write {
                    Write::Insert(p) | Write::Update(p) => p.name.clone(),
                    Write::Delete(n) => n.clone(),
                };
                // Dropping `tx` rolls back every write of this call.
                return Err(CatalogError::Conflict(name));
            }
        }
        tx.commit().await?;
        self.apply(&writes);
        Ok(())
    }

    /// Shows committed writes in the in-memory map.
    fn apply(&self, writes: &[Write]) {
        if let Ok(mut pins) = self.pins.write() {
            for write in writes {
                match write {
                    Write::Insert(p) | Write::Update(p) => {
                        pins.insert(p.name.clone(), p.clone());
                    }
                    Write::Delete(name) => {
                        pins.remove(name);
                    }
                }
            }
        }
    }
}

// === impl BlockReason ===

impl BlockReason {
    /// The stored and displayed form.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::New => "new",
            BlockReason::Changed => "changed",
            BlockReason::Vanished => "vanished",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "new" => Some(BlockReason::New),
            "changed" => Some(BlockReason::Changed),
            "vanished" => Some(BlockReason::Vanished),
            _ => None,
        }
    }

    fn explain(self) -> &'static str {
        match self {
            BlockReason::New => "tool appeared after its server was pinned; approval required",
            BlockReason::Changed => "tool definition changed since it was pinned",
            BlockReason::Vanished => "pinned tool is no longer offered by its server",
        }
    }
}

fn blocked_event(tool: &PinnedTool, reason: BlockReason) -> Event {
    Event::new(TOOL_BLOCKED, Outcome::Denied)
        .tool(&tool.name)
        .reason(reason.explain())
        .detail("reason", reason.as_str())
        .detail("server", tool.server.as_str())
        .detail("old_hash", tool.pinned_hash.clone().unwrap_or_default())
        .detail("new_hash", tool.seen_hash.clone().unwrap_or_default())
}

fn validate(server: &str, tools: &[ToolDef]) -> Result<(), CatalogError> {
    let invalid = |name: &str, reason: String| CatalogError::InvalidTool {
        name: name.to_owned(),
        reason,
    };
    if server.is_empty() {
        return Err(invalid("", "empty server name".into()));
    }
    let mut names = HashSet::new();
    for tool in tools {
        if tool.name.is_empty() {
            return Err(invalid(&tool.name, "empty tool name".into()));
        }
        if tool.server != server {
            return Err(invalid(
                &tool.name,
                format!("offered by `{}`, not `{server}`", tool.server),
            ));
        }
        if !names.insert(tool.name.as_str()) {
            return Err(invalid(&tool.name, "offered twice".into()));
        }
    }
    Ok(())
}

fn status_columns(status: &ToolStatus) -> (&'static str, Option<&'static str>) {
    match status {
        ToolStatus::Approved => (STATUS_APPROVED, None),
        ToolStatus::Blocked { reason } => (STATUS_BLOCKED, Some(reason.as_str())),
    }
}

const COLUMNS: &str = "name, server, pinned_hash, seen_hash, definition, status, reason, \
                       first_seen, updated_at, approved_at";

async fn load_all(store: &Store) -> Result<BTreeMap<String, PinnedTool>, CatalogError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM gateway_tools ORDER BY name"
    )))
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| from_row(r).map(|p| (p.name.clone(), p)))
        .collect()
}

async fn load_server(
    store: &Store,
    server: &str,
) -> Result<BTreeMap<String, PinnedTool>, CatalogError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM gateway_tools WHERE server = $1"
    )))
    .bind(server)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| from_row(r).map(|p| (p.name.clone(), p)))
        .collect()
}

async fn load_one(store: &Store, name: &str) -> Result<Option<PinnedTool>, CatalogError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM gateway_tools WHERE name = $1"
    )))
    .bind(name)
    .fetch_optional(store.pool())
    .await?;
    row.as_ref().map(from_row).transpose()
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<PinnedTool, CatalogError> {
    let name: String = r.try_get("name")?;
    let corrupt = |reason: String| CatalogError::Corrupt {
        name: name.clone(),
        reason,
    };
    let status: String = r.try_get("status")?;
    let reason: Option<String> = r.try_get("reason")?;
    let status = match (status.as_str(), reason.as_deref()) {
        (STATUS_APPROVED, _) => ToolStatus::Approved,
        (STATUS_BLOCKED, Some(reason)) => ToolStatus::Blocked {
            reason: BlockReason::parse(reason)
                .ok_or_else(|| corrupt(format!("unknown block reason `{reason}`")))?,
        },
        (other, _) => return Err(corrupt(format!("unknown status `{other}`"))),
    };
    let definition: String = r.try_get("definition")?;
    let definition =
        serde_json::from_str(&definition).map_err(|e| corrupt(format!("definition: {e}")))?;
    Ok(PinnedTool {
        server: r.try_get("server")?,
        status,
        pinned_hash: r.try_get("pinned_hash")?,
        seen_hash: r.try_get("seen_hash")?,
        definition,
        first_seen: r.try_get("first_seen")?,
        updated_at: r.try_get("updated_at")?,
        approved_at: r.try_get("approved_at")?,
        name,
    })
}
