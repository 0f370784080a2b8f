//! Dynamic PostgreSQL credentials (Vault's `database` engine, PostgreSQL
//! plugin), against a real server.
//!
//! An operator configures a connection with a managing role that has
//! `CREATEROLE`; Keyless immediately rotates that role's password and keeps
//! the new one only sealed in the store, so no human knows it. Roles hold
//! templated creation statements (`{{name}}`, `{{password}}`,
//! `{{expiration}}`), and each issue runs them as one implicit transaction
//! (one simple-query message: all or nothing, one round trip) creating a
//! login that expires on its own (`VALID UNTIL`) even if a revocation is
//! lost. Renew moves `VALID UNTIL`; revoke is idempotent and complete:
//! `NOLOGIN`, terminate the role's backends, `REASSIGN OWNED`/`DROP OWNED`,
//! `DROP ROLE IF EXISTS`.
//!
//! One small `PgPool` per connection, created lazily and replaced when the
//! managing password changes (here or, detected by an authentication
//! failure, on another replica). Passwords and password-bearing URLs are
//! never logged: sqlx statement logging is off on managed connections and
//! error texts are scrubbed. Only `sql.rs` writes SQL text with values in it.

mod sql;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyless_store::{KeyManager, Store, now_millis, redact_url};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Postgres, Row};

use crate::SecretsError;
use sql::{Kind, Values};

/// The key-encryption key sealing managing-role passwords.
const KEK_NAME: &str = "secrets-database";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections per managed server: issuing is short, a few suffice.
const POOL_SIZE: u32 = 6;
/// How long revoke waits for each terminated backend to exit (PostgreSQL 14+).
const TERMINATE_WAIT_MS: u32 = 5000;
const DEFAULT_RENEW: &str = "ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}'";

/// A configured managed-database connection, as shown to operators. It never
/// contains the managing role's password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub name: String,
    /// `postgres://user@host:port/db?…` with no password in it.
    pub connection_url: String,
    /// The managing role Keyless connects as.
    pub username: String,
    /// Database roles allowed to issue on this connection (`*` = any).
    pub allowed_roles: Vec<String>,
    pub created_at: SystemTime,
    /// When Keyless last rotated the managing role's password.
    pub password_rotated_at: SystemTime,
}

/// A database role: how to create, renew and revoke credentials. Empty
/// renew/revocation statements mean Keyless's built-in ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbRole {
    pub name: String,
    /// The connection name this role issues on.
    pub db_name: String,
    pub creation_statements: Vec<String>,
    pub revocation_statements: Vec<String>,
    pub renew_statements: Vec<String>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

/// A freshly issued login. `Debug` redacts the password.
#[derive(Clone, PartialEq, Eq)]
pub struct DbCredential {
    pub connection: String,
    pub username: String,
    pub password: String,
    pub valid_until: SystemTime,
}

impl std::fmt::Debug for DbCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCredential")
            .field("connection", &self.connection)
            .field("username", &self.username)
            .field("password", &"***")
            .field("valid_until", &self.valid_until)
            .finish()
    }
}

/// The pool of one managed server.
#[derive(Debug, Clone)]
struct Managed {
    pool: PgPool,
    /// The row's `rotated_at` the pool's password belongs to.
    rotated_at: i64,
}

/// One `secrets_db_connections` row.
struct ConnectionRow {
    name: String,
    connection_url: String,
    username: String,
    kek_name: String,
    sealed_password: Vec<u8>,
    allowed_roles: Vec<String>,
    created_at: i64,
    rotated_at: i64,
}

/// The dynamic PostgreSQL credentials engine.
#[derive(Debug)]
pub struct Database {
    store: Store,
    keys: Arc<dyn KeyManager>,
    pools: Mutex<HashMap<String, Managed>>,
}

// === impl Database ===

impl Database {
    pub async fn open(
        store: Store,
        keys: Arc<dyn KeyManager>,
    ) -> Result<Arc<Database>, SecretsError> {
        Ok(Arc::new(Self {
            store,
            keys,
            pools: Mutex::new(HashMap::new()),
        }))
    }

    /// Connects, checks the managing role may CREATEROLE, rotates that role's
    /// password (nobody knows it afterwards), stores the config with the
    /// password sealed.
    ///
    /// The rotation is committed on the server only after the sealed
    /// password is stored, so a store failure leaves the old password valid.
    pub async fn configure(
        &self,
        name: &str,
        connection_url: &str,
        allowed_roles: Vec<String>,
    ) -> Result<ConnectionInfo, SecretsError> {
        sql::validate_name("connection", name)?;
        for role in &allowed_roles {
            if role != "*" {
                sql::validate_name("role", role)?;
            }
        }
        let clean_url = strip_password(connection_url)?;
        let options = pg_options(connection_url, None)?;
        let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(SecretsError::Database(format!(
                    "cannot connect to `{clean_url}`: {}",
                    scrub(
                        &scrub(&e.to_string(), connection_url),
                        url_password(connection_url)
                    )
                )));
            }
            Err(_) => {
                return Err(SecretsError::Database(format!(
                    "cannot connect to `{clean_url}`: no answer in {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        };
        let facts = sqlx::query(
            "SELECT current_user::text AS me, (r.rolcreaterole OR r.rolsuper) AS can_create, \
             current_setting('standard_conforming_strings') AS scs, \
             current_setting('server_version_num')::int AS version \
             FROM pg_roles r WHERE r.rolname = current_user",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(|e| managed_err("checking the managing role", &e, &[]))?;
        let me: String = pg_get(&facts, "me")?;
        if !pg_get::<bool>(&facts, "can_create")? {
            return Err(SecretsError::InvalidRequest(format!(
                "managing role `{me}` lacks CREATEROLE"
            )));
        }
        if pg_get::<String>(&facts, "scs")? != "on" {
            return Err(SecretsError::InvalidRequest(
                "the server must run with standard_conforming_strings = on".to_owned(),
            ));
        }
        if pg_get::<i32>(&facts, "version")? < 140_000 {
            return Err(SecretsError::InvalidRequest(
                "PostgreSQL 14 or newer is required".to_owned(),
            ));
        }

        let password = sql::generate_password()?;
        let verifier = sql::scram_verifier(&password)?;
        let sealer = self.keys.sealer(KEK_NAME).await?;
        let sealed = sealer.seal(password.as_bytes(), name.as_bytes())?;
        let previous = self.load_connection(name).await?;
        let now = now_millis();
        let row = ConnectionRow {
            name: name.to_owned(),
            connection_url: clean_url.clone(),
            username: me.clone(),
            kek_name: sealer.name().to_owned(),
            sealed_password: sealed,
            allowed_roles,
            created_at: previous.as_ref().map_or(now, |p| p.created_at),
            rotated_at: now,
        };

        let mut tx = conn
            .begin()
            .await
            .map_err(|e| managed_err("rotating the managing password", &e, &[]))?;
        let alter = format!(
            "ALTER ROLE CURRENT_USER WITH PASSWORD {}",
            sql::quote_literal(&verifier)
        );
        sqlx::raw_sql(AssertSqlSafe(alter))
            .execute(&mut *tx)
            .await
            .map_err(|e| managed_err("rotating the managing password", &e, &[&verifier]))?;
        self.save_connection(&row).await?;
        if let Err(e) = tx.commit().await {
            // The server kept the old password: put the old row back so
            // the store does not hold a password the server never took.
            let restored = match &previous {
                Some(p) => self.save_connection(p).await,
                None => self.delete_connection_row(name).await,
            };
            if let Err(re) = restored {
                tracing::error!(connection = name, error = %re, "could not restore the connection row after a failed rotation");
            }
            return Err(managed_err(
                "rotating the managing password",
                &e,
                &[&verifier],
            ));
        }
        let _ = conn.close().await;

        let managed = managed_from(&row, &password)?;
        let old = self.cache_put(name, managed.clone());
        if let Some(old) = old {
            tokio::spawn(async move { old.pool.close().await });
        }
        // Prove the rotated password works before saying so.
        sqlx::query("SELECT 1")
            .execute(&managed.pool)
            .await
            .map_err(|e| managed_err("reconnecting with the rotated password", &e, &[&password]))?;
        tracing::info!(connection = name, url = %clean_url, role = %me, "managed database configured, managing password rotated");
        Ok(info_of(&row))
    }

    /// The connection's configuration, without any password.
    pub async fn connection(&self, name: &str) -> Result<Option<ConnectionInfo>, SecretsError> {
        sql::validate_name("connection", name)?;
        Ok(self.load_connection(name).await?.as_ref().map(info_of))
    }

    /// Creates or replaces a role after validating its name, connection,
    /// statement templates and TTLs.
    pub async fn write_role(&self, role: DbRole) -> Result<(), SecretsError> {
        sql::validate_name("role", &role.name)?;
        sql::validate_name("connection", &role.db_name)?;
        sql::validate_statements(Kind::Creation, &role.creation_statements)?;
        sql::validate_statements(Kind::Renew, &role.renew_statements)?;
        sql::validate_statements(Kind::Revocation, &role.revocation_statements)?;
        if !role.max_ttl.is_zero() && role.default_ttl > role.max_ttl {
            return Err(SecretsError::InvalidRequest(
                "default_ttl must not exceed max_ttl".to_owned(),
            ));
        }
        let default_ttl = duration_millis(role.default_ttl, "default_ttl")?;
        let max_ttl = duration_millis(role.max_ttl, "max_ttl")?;
        if self.load_connection(&role.db_name).await?.is_none() {
            return Err(SecretsError::InvalidRequest(format!(
                "connection `{}` is not configured",
                role.db_name
            )));
        }
        sqlx::query(
            "INSERT INTO secrets_db_roles (name, db_name, creation_statements, \
             revocation_statements, renew_statements, default_ttl_ms, max_ttl_ms, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (name) DO UPDATE SET db_name = excluded.db_name, \
             creation_statements = excluded.creation_statements, \
             revocation_statements = excluded.revocation_statements, \
             renew_statements = excluded.renew_statements, \
             default_ttl_ms = excluded.default_ttl_ms, max_ttl_ms = excluded.max_ttl_ms, \
             updated_at = excluded.updated_at",
        )
        .bind(&role.name)
        .bind(&role.db_name)
        .bind(to_json(&role.creation_statements)?)
        .bind(to_json(&role.revocation_statements)?)
        .bind(to_json(&role.renew_statements)?)
        .bind(default_ttl)
        .bind(max_ttl)
        .bind(now_millis())
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    pub async fn role(&self, name: &str) -> Result<Option<DbRole>, SecretsError> {
        sql::validate_name("role", name)?;
        let row = sqlx::query(
            "SELECT name, db_name, creation_statements, revocation_statements, \
             renew_statements, default_ttl_ms, max_ttl_ms FROM secrets_db_roles WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.store.pool())
        .await?;
        row.as_ref().map(role_of_row).transpose()
    }

    pub async fn list_roles(&self) -> Result<Vec<String>, SecretsError> {
        let rows = sqlx::query("SELECT name FROM secrets_db_roles ORDER BY name")
            .fetch_all(self.store.pool())
            .await?;
        rows.iter().map(|r| get(r, "name")).collect()
    }

    /// Deletes a role; deleting a missing role is not an error. Credentials
    /// already issued live on until their leases end.
    pub async fn delete_role(&self, name: &str) -> Result<(), SecretsError> {
        sql::validate_name("role", name)?;
        sqlx::query("DELETE FROM secrets_db_roles WHERE name = $1")
            .bind(name)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    /// Creates a login role valid until now+ttl (ttl already capped by the
    /// caller with default/max ttl) in one transaction.
    pub async fn issue(&self, role: &str, ttl: Duration) -> Result<DbCredential, SecretsError> {
        sql::validate_name("role", role)?;
        // One store round trip: the role, plus the connection's allowed
        // roles and rotation time, so a configure on another replica is
        // seen at once (new allowed roles, new password).
        let row = sqlx::query(
            "SELECT r.name, r.db_name, r.creation_statements, r.revocation_statements, \
             r.renew_statements, r.default_ttl_ms, r.max_ttl_ms, \
             c.allowed_roles, c.rotated_at FROM secrets_db_roles r \
             JOIN secrets_db_connections c ON c.name = r.db_name WHERE r.name = $1",
        )
        .bind(role)
        .fetch_optional(self.store.pool())
        .await?
        .ok_or_else(|| SecretsError::NotFound(format!("unknown role `{role}`")))?;
        let def = role_of_row(&row)?;
        let allowed: Vec<String> = from_json(&get::<String>(&row, "allowed_roles")?)?;
        let rotated_at: i64 = get(&row, "rotated_at")?;
        if ttl.is_zero() {
            return Err(SecretsError::InvalidRequest(
                "ttl must be positive".to_owned(),
            ));
        }
        let valid_until = SystemTime::now()
            .checked_add(ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| {
                UNIX_EPOCH + Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            })
            .ok_or_else(|| SecretsError::InvalidRequest("ttl is too large".to_owned()))?;
        if !allowed.iter().any(|r| r == "*" || r == role) {
            return Err(SecretsError::PermissionDenied);
        }
        let mut conn = self.acquire(&def.db_name, Some(rotated_at)).await?;
        let username = sql::generate_username(role)?;
        let password = sql::generate_password()?;
        let verifier = sql::scram_verifier(&password)?;
        let text = sql::render(
            Kind::Creation,
            &def.creation_statements,
            &Values {
                name: &username,
                password: &verifier,
                expiration: &sql::format_timestamp(valid_until),
            },
        )?;
        // Several statements in one simple-query message run as one
        // implicit transaction: a failing grant leaves no role behind.
        sqlx::raw_sql(AssertSqlSafe(text))
            .execute(&mut *conn)
            .await
            .map_err(|e| managed_err("creating the credential", &e, &[&verifier, &password]))?;
        Ok(DbCredential {
            connection: def.db_name,
            username,
            password,
            valid_until,
        })
    }

    /// Moves the credential's `VALID UNTIL` (the role's renew statements, or
    /// `ALTER ROLE … VALID UNTIL`). NotFound if the role no longer exists.
    pub async fn renew(
        &self,
        connection: &str,
        username: &str,
        valid_until: SystemTime,
    ) -> Result<(), SecretsError> {
        sql::validate_name("connection", connection)?;
        sql::validate_username(username)?;
        let custom = self
            .role_for_username(connection, username)
            .await?
            .map(|r| r.renew_statements)
            .filter(|s| !s.is_empty());
        let statements = custom.unwrap_or_else(|| vec![DEFAULT_RENEW.to_owned()]);
        let text = sql::render(
            Kind::Renew,
            &statements,
            &Values {
                name: username,
                password: "",
                expiration: &sql::format_timestamp(valid_until),
            },
        )?;
        let mut conn = self.acquire(connection, None).await?;
        if !role_exists(&mut conn, username).await? {
            return Err(SecretsError::NotFound(format!(
                "credential `{username}` does not exist on connection `{connection}`"
            )));
        }
        sqlx::raw_sql(AssertSqlSafe(text))
            .execute(&mut *conn)
            .await
            .map_err(|e| managed_err("renewing the credential", &e, &[]))?;
        Ok(())
    }

    /// Idempotent and complete: NOLOGIN, terminate backends, REASSIGN
    /// OWNED/DROP OWNED, DROP ROLE IF EXISTS. Ok(()) if the role is already gone.
    ///
    /// The role's own revocation statements, if any, run after `NOLOGIN`;
    /// their failure is logged and the built-in sequence still runs, so a
    /// broken template cannot keep a credential alive.
    pub async fn revoke(&self, connection: &str, username: &str) -> Result<(), SecretsError> {
        sql::validate_name("connection", connection)?;
        sql::validate_username(username)?;
        let mut conn = self.acquire(connection, None).await?;
        if !role_exists(&mut conn, username).await? {
            return Ok(());
        }
        let ident = sql::quote_ident(username);
        // Membership gives the managing role the rights to terminate the
        // role's backends and to reassign or drop what it owns (PostgreSQL
        // 16+ grants the creator ADMIN on the role, 15- allows CREATEROLE).
        let lock_out = format!("GRANT {ident} TO CURRENT_USER; ALTER ROLE {ident} NOLOGIN");
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(lock_out))
            .execute(&mut *conn)
            .await
        {
            // Someone else revoked it meanwhile: done.
            if !role_exists(&mut conn, username).await? {
                return Ok(());
            }
            return Err(managed_err("revoking the credential", &e, &[]));
        }
        let custom = self
            .role_for_username(connection, username)
            .await?
            .map(|r| r.revocation_statements)
            .filter(|s| !s.is_empty());
        if let Some(statements) = custom {
            let text = sql::render(
                Kind::Revocation,
                &statements,
                &Values {
                    name: username,
                    password: "",
                    expiration: "",
                },
            )?;
            if let Err(e) = sqlx::raw_sql(AssertSqlSafe(text)).execute(&mut *conn).await {
                tracing::warn!(connection, username, error = %managed_err("custom revocation", &e, &[]), "role revocation statements failed; running the built-in revocation");
            }
        }
        let finish = format!(
            "SELECT pg_terminate_backend(pid, {TERMINATE_WAIT_MS}) FROM pg_stat_activity \
             WHERE usename = {lit}; REASSIGN OWNED BY {ident} TO CURRENT_USER; \
             DROP OWNED BY {ident}; DROP ROLE IF EXISTS {ident}",
            lit = sql::quote_literal(username)
        );
        sqlx::raw_sql(AssertSqlSafe(finish))
            .execute(&mut *conn)
            .await
            .map_err(|e| managed_err("revoking the credential", &e, &[]))?;
        Ok(())
    }

    // --- internals ---

    /// The role a username was issued for, if it still exists on `connection`.
    async fn role_for_username(
        &self,
        connection: &str,
        username: &str,
    ) -> Result<Option<DbRole>, SecretsError> {
        let Some(name) = sql::role_of_username(username) else {
            return Ok(None);
        };
        if sql::validate_name("role", name).is_err() {
            return Ok(None);
        }
        Ok(self.role(name).await?.filter(|r| r.db_name == connection))
    }

    /// A pooled connection to the managed server, from a pool no older
    /// than the rotation `fresh_as_of` (when the caller knows it). An
    /// authentication failure means another replica rotated the password:
    /// reload once and retry.
    async fn acquire(
        &self,
        name: &str,
        fresh_as_of: Option<i64>,
    ) -> Result<PoolConnection<Postgres>, SecretsError> {
        let managed = self.managed(name, fresh_as_of).await?;
        match managed.pool.acquire().await {
            Ok(conn) => Ok(conn),
            Err(e) if is_auth_failure(&e) => {
                let managed = self.managed(name, Some(managed.rotated_at + 1)).await?;
                managed
                    .pool
                    .acquire()
                    .await
                    .map_err(|e| managed_err("connecting", &e, &[]))
            }
            Err(e) => Err(managed_err("connecting", &e, &[])),
        }
    }

    async fn managed(&self, name: &str, fresh_as_of: Option<i64>) -> Result<Managed, SecretsError> {
        if let Some(m) = self.cache_get(name)
            && fresh_as_of.is_none_or(|t| m.rotated_at >= t)
        {
            return Ok(m);
        }
        let row = self.load_connection(name).await?.ok_or_else(|| {
            SecretsError::NotFound(format!("connection `{name}` is not configured"))
        })?;
        let sealer = self.keys.sealer(&row.kek_name).await?;
        let password = sealer
            .open(&row.sealed_password, row.name.as_bytes())
            .map_err(|e| SecretsError::Decrypt(format!("managing password of `{name}`: {e}")))?;
        let password = String::from_utf8(password).map_err(|_| {
            SecretsError::Decrypt(format!("managing password of `{name}` is not text"))
        })?;
        let fresh = managed_from(&row, &password)?;
        // Keep whichever pool belongs to the newest rotation; tasks racing
        // here all end up with a working pool.
        let (kept, replaced) = match self.pools.lock() {
            Ok(mut pools) => match pools.get(name) {
                Some(cached) if cached.rotated_at >= fresh.rotated_at => (cached.clone(), None),
                _ => (fresh.clone(), pools.insert(name.to_owned(), fresh)),
            },
            Err(_) => (fresh, None),
        };
        if let Some(old) = replaced {
            tokio::spawn(async move { old.pool.close().await });
        }
        Ok(kept)
    }

    fn cache_get(&self, name: &str) -> Option<Managed> {
        self.pools.lock().ok()?.get(name).cloned()
    }

    fn cache_put(&self, name: &str, managed: Managed) -> Option<Managed> {
        self.pools.lock().ok()?.insert(name.to_owned(), managed)
    }

    async fn load_connection(&self, name: &str) -> Result<Option<ConnectionRow>, SecretsError> {
        let row = sqlx::query(
            "SELECT name, connection_url, username, kek_name, sealed_password, allowed_roles, \
             created_at, rotated_at FROM secrets_db_connections WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.store.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(ConnectionRow {
            name: get(&row, "name")?,
            connection_url: get(&row, "connection_url")?,
            username: get(&row, "username")?,
            kek_name: get(&row, "kek_name")?,
            sealed_password: get(&row, "sealed_password")?,
            allowed_roles: from_json(&get::<String>(&row, "allowed_roles")?)?,
            created_at: get(&row, "created_at")?,
            rotated_at: get(&row, "rotated_at")?,
        }))
    }

    async fn save_connection(&self, row: &ConnectionRow) -> Result<(), SecretsError> {
        sqlx::query(
            "INSERT INTO secrets_db_connections (name, connection_url, username, kek_name, \
             sealed_password, allowed_roles, created_at, rotated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (name) DO UPDATE SET connection_url = excluded.connection_url, \
             username = excluded.username, kek_name = excluded.kek_name, \
             sealed_password = excluded.sealed_password, allowed_roles = excluded.allowed_roles, \
             created_at = excluded.created_at, rotated_at = excluded.rotated_at",
        )
        .bind(&row.name)
        .bind(&row.connection_url)
        .bind(&row.username)
        .bind(&row.kek_name)
        .bind(&row.sealed_password)
        .bind(to_json(&row.allowed_roles)?)
        .bind(row.created_at)
        .bind(row.rotated_at)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    async fn delete_connection_row(&self, name: &str) -> Result<(), SecretsError> {
        sqlx::query("DELETE FROM secrets_db_connections WHERE name = $1")
            .bind(name)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }
}

// --- helpers ---

fn role_of_row(row: &sqlx::any::AnyRow) -> Result<DbRole, SecretsError> {
    Ok(DbRole {
        name: get(row, "name")?,
        db_name: get(row, "db_name")?,
        creation_statements: from_json(&get::<String>(row, "creation_statements")?)?,
        revocation_statements: from_json(&get::<String>(row, "revocation_statements")?)?,
        renew_statements: from_json(&get::<String>(row, "renew_statements")?)?,
        default_ttl: millis_duration(get(row, "default_ttl_ms")?),
        max_ttl: millis_duration(get(row, "max_ttl_ms")?),
    })
}

fn info_of(row: &ConnectionRow) -> ConnectionInfo {
    ConnectionInfo {
        name: row.name.clone(),
        connection_url: row.connection_url.clone(),
        username: row.username.clone(),
        allowed_roles: row.allowed_roles.clone(),
        created_at: millis_time(row.created_at),
        password_rotated_at: millis_time(row.rotated_at),
    }
}

fn managed_from(row: &ConnectionRow, password: &str) -> Result<Managed, SecretsError> {
    let options = pg_options(&row.connection_url, Some(password))?;
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .min_connections(0)
        .acquire_timeout(CONNECT_TIMEOUT)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(options);
    Ok(Managed {
        pool,
        rotated_at: row.rotated_at,
    })
}

/// Parses a `postgres://` URL with statement logging off (statements carry
/// password verifiers). Parse errors are scrubbed of the URL's password.
fn pg_options(url: &str, password: Option<&str>) -> Result<PgConnectOptions, SecretsError> {
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        SecretsError::InvalidRequest(format!(
            "invalid connection url `{}`: {}",
            describe_url(url),
            scrub(&e.to_string(), url)
        ))
    })?;
    let options = match password {
        Some(p) => options.password(p),
        None => options,
    };
    Ok(options.disable_statement_logging())
}

/// The URL without its password; requires `postgres://user[:password]@…`
/// and refuses a password hidden in the query string.
fn strip_password(url: &str) -> Result<String, SecretsError> {
    let invalid = |why: &str| {
        SecretsError::InvalidRequest(format!(
            "invalid connection url `{}`: {why}",
            describe_url(url)
        ))
    };
    let scheme_len = ["postgres://", "postgresql://"]
        .iter()
        .find(|s| url.starts_with(**s))
        .map(|s| s.len())
        .ok_or_else(|| invalid("use postgres://USER:PASSWORD@HOST:PORT/DB"))?;
    let (scheme, rest) = url.split_at(scheme_len);
    let at = rest
        .rfind('@')
        .ok_or_else(|| invalid("it must name the managing user"))?;
    let (userinfo, host_part) = rest.split_at(at);
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    if user.is_empty() || user.contains(['/', '?', '#']) {
        return Err(invalid("it must name the managing user"));
    }
    if host_part.to_ascii_lowercase().contains("password=") {
        return Err(invalid("put the password in the user part, not the query"));
    }
    Ok(format!("{scheme}{user}{host_part}"))
}

/// The raw (possibly percent-encoded) password part of a URL, or "".
fn url_password(url: &str) -> &str {
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let userinfo = rest.rfind('@').and_then(|at| rest.get(..at)).unwrap_or("");
    userinfo.split_once(':').map_or("", |(_, p)| p)
}

/// A URL safe to show: password masked, query string (which may carry
/// one) dropped.
fn describe_url(url: &str) -> String {
    let base = url.split_once('?').map_or(url, |(b, _)| b);
    redact_url(base)
}

/// Whether the credential role exists. The managing role itself and
/// superusers are refused outright, whatever their name.
async fn role_exists(
    conn: &mut PoolConnection<Postgres>,
    username: &str,
) -> Result<bool, SecretsError> {
    let row = sqlx::query(
        "SELECT (rolname = current_user OR rolsuper) AS protected FROM pg_roles WHERE rolname = $1",
    )
    .bind(username)
    .fetch_optional(&mut **conn)
    .await
    .map_err(|e| managed_err("looking up the credential", &e, &[]))?;
    match row {
        None => Ok(false),
        Some(row) if pg_get::<bool>(&row, "protected")? => Err(SecretsError::InvalidRequest(
            format!("`{username}` is not a credential issued by keyless"),
        )),
        Some(_) => Ok(true),
    }
}

fn is_auth_failure(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "28P01" || c == "28000")
}

/// A managed-server failure, with every secret in `secrets` blanked out.
fn managed_err(context: &str, e: &sqlx::Error, secrets: &[&str]) -> SecretsError {
    let mut msg = match e.as_database_error() {
        Some(d) => d.message().to_owned(),
        None => e.to_string(),
    };
    for s in secrets {
        msg = scrub(&msg, s);
    }
    SecretsError::Database(format!("{context} failed: {msg}"))
}

fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_owned()
    } else {
        text.replace(secret, "***")
    }
}

fn get<'r, T>(row: &'r sqlx::any::AnyRow, col: &str) -> Result<T, SecretsError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    Ok(row.try_get(col)?)
}

fn pg_get<'r, T>(row: &'r sqlx::postgres::PgRow, col: &str) -> Result<T, SecretsError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(col)
        .map_err(|e| managed_err("checking the managing role", &e, &[]))
}

fn to_json(list: &[String]) -> Result<String, SecretsError> {
    serde_json::to_string(list)
        .map_err(|e| SecretsError::InvalidRequest(format!("cannot encode a list: {e}")))
}

fn from_json(text: &str) -> Result<Vec<String>, SecretsError> {
    serde_json::from_str(text).map_err(|e| {
        SecretsError::Store(keyless_store::StoreError::Database(sqlx::Error::Decode(
            Box::new(e),
        )))
    })
}

fn duration_millis(d: Duration, what: &str) -> Result<i64, SecretsError> {
    i64::try_from(d.as_millis())
        .map_err(|_| SecretsError::InvalidRequest(format!("{what} is too large")))
}

fn millis_duration(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn millis_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + millis_duration(ms)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            strip_password("postgres://mgr:s3cr%40t@db:5432/app?sslmode=disable").unwrap(),
            "postgres://mgr@db:5432/app?sslmode=disable"
        );
        assert_eq!(
            strip_password("postgresql://mgr@db/app").unwrap(),
            "postgresql://mgr@db/app"
        );
        assert_eq!(url_password("postgres://mgr:p:w@db/app"), "p:w");
        assert_eq!(url_password("postgres://mgr@db/app"), "");
        for bad in [
            "mysql://u:p@db/app",
            "postgres://db/app",
            "postgres://:p@db/app",
            "postgres://u@db/app?password=x",
        ] {
            let err = strip_password(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid connection url"), "{bad}: {err}");
            assert!(!err.contains(":p@") && !err.contains("password=x"), "{err}");
        }
        assert_eq!(
            describe_url("postgres://u:pw@db/app?password=x"),
            "postgres://u:***@db/app"
        );
    }

    #[test]
    fn credential_debug_hides_the_password() {
        let c = DbCredential {
            connection: "main".to_owned(),
            username: "kl_r_x".to_owned(),
            password: "hunter2hunter2".to_owned(),
            valid_until: UNIX_EPOCH,
        };
        let shown = format!("{c:?}");
        assert!(
            shown.contains("kl_r_x") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn managed_errors_are_scrubbed() {
        let e = sqlx::Error::Protocol("bad 'SCRAM-SHA-256$x' near 'pw123'".to_owned());
        let msg = managed_err("creating", &e, &["SCRAM-SHA-256$x", "pw123"]).to_string();
        assert!(
            !msg.contains("pw123") && !msg.contains("SCRAM-SHA-256$x"),
            "{msg}"
        );
        assert!(msg.starts_with("database: creating failed"), "{msg}");
    }
}
