//! Response wrapping: a response is replaced by a single-use token that
//! yields it once (`X-Vault-Wrap-TTL`, `/v1/sys/wrapping/{wrap,unwrap,lookup}`).
//!
//! The wrapped response is sealed (AES-256-GCM, key-manager KEK
//! `secrets-wrapping`) with the token's hash as associated data, so a row
//! moved to another token does not open; only the token's hash is stored.
//! Unwrapping deletes the row in the same statement that reads it
//! (`DELETE … RETURNING`), so two concurrent unwraps cannot both succeed,
//! on SQLite or PostgreSQL.

use std::time::Duration;

use keyless_audit::{Event, Outcome};
use keyless_store::now_millis;
use serde_json::Value;

use crate::service::{duration_ms, kinds, rfc3339};
use crate::token;
use crate::{Secrets, SecretsError};

pub const WRAP_KEY_NAME: &str = "secrets-wrapping";
const INVALID: &str = "wrapping token is not valid or does not exist";

/// Vault's `wrap_info` object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WrapInfo {
    pub token: String,
    pub accessor: String,
    /// Seconds.
    pub ttl: u64,
    pub creation_time: String,
    pub creation_path: String,
}

/// What `sys/wrapping/lookup` tells without consuming the token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WrapLookup {
    pub creation_path: String,
    pub creation_time: String,
    pub creation_ttl: u64,
}

impl Secrets {
    /// Wraps `response` (the exact body the unwrapper will get) for `ttl`.
    pub async fn wrap(
        &self,
        identity: &str,
        creation_path: &str,
        response: &Value,
        ttl: Duration,
    ) -> Result<WrapInfo, SecretsError> {
        if ttl.is_zero() {
            return Err(SecretsError::InvalidRequest(
                "wrapping ttl must be positive".into(),
            ));
        }
        if ttl > self.config.max_wrap_ttl {
            return Err(SecretsError::InvalidRequest(format!(
                "wrapping ttl {}s exceeds the maximum of {}s",
                ttl.as_secs(),
                self.config.max_wrap_ttl.as_secs()
            )));
        }
        let token = token::new_service_token()?;
        let accessor = token::new_accessor()?;
        let hash = token::hash_token(&token);
        let plaintext = serde_json::to_vec(response)
            .map_err(|e| SecretsError::InvalidRequest(format!("wrapping: {e}")))?;
        let sealer = self.keys.sealer(WRAP_KEY_NAME).await?;
        let sealed = sealer.seal(&plaintext, hash.as_bytes())?;
        let now = now_millis();
        sqlx::query(
            "INSERT INTO secrets_wrapping (token_hash, accessor, creation_path, created_at, expires_at, sealed) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&hash)
        .bind(&accessor)
        .bind(creation_path)
        .bind(now)
        .bind(now.saturating_add(duration_ms(ttl)))
        .bind(sealed)
        .execute(self.store.pool())
        .await?;
        self.record(
            Event::new(kinds::WRAP_CREATED, Outcome::Success)
                .agent(identity)
                .detail("creation_path", creation_path)
                .detail("accessor", accessor.clone())
                .detail("ttl_s", ttl.as_secs()),
        )
        .await?;
        Ok(WrapInfo {
            token,
            accessor,
            ttl: ttl.as_secs(),
            creation_time: rfc3339(now),
            creation_path: creation_path.to_owned(),
        })
    }

    /// The wrapped response, once: the token is spent by this call.
    pub async fn unwrap(&self, identity: &str, wrap_token: &str) -> Result<Value, SecretsError> {
        let invalid = || SecretsError::InvalidRequest(INVALID.into());
        let hash = token::hash_token(wrap_token);
        let row: Option<(String, String, i64, Vec<u8>)> = sqlx::query_as(
            "DELETE FROM secrets_wrapping WHERE token_hash = $1 RETURNING accessor, creation_path, expires_at, sealed",
        )
        .bind(&hash)
        .fetch_optional(self.store.pool())
        .await?;
        let Some((accessor, creation_path, expires_at, sealed)) = row else {
            self.record(
                Event::new(kinds::WRAP_UNWRAPPED, Outcome::Denied)
                    .agent(identity)
                    .reason(INVALID),
            )
            .await?;
            return Err(invalid());
        };
        if expires_at <= now_millis() {
            return Err(invalid());
        }
        let sealer = self.keys.sealer(WRAP_KEY_NAME).await?;
        let plaintext = sealer
            .open(&sealed, hash.as_bytes())
            .map_err(|e| SecretsError::Decrypt(e.to_string()))?;
        let value: Value = serde_json::from_slice(&plaintext)
            .map_err(|e| SecretsError::Decrypt(format!("wrapped response: {e}")))?;
        self.record(
            Event::new(kinds::WRAP_UNWRAPPED, Outcome::Success)
                .agent(identity)
                .detail("creation_path", creation_path)
                .detail("accessor", accessor),
        )
        .await?;
        Ok(value)
    }

    /// Looks a wrapping token up without spending it.
    pub async fn wrap_lookup(&self, wrap_token: &str) -> Result<WrapLookup, SecretsError> {
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT creation_path, created_at, expires_at FROM secrets_wrapping WHERE token_hash = $1",
        )
        .bind(token::hash_token(wrap_token))
        .fetch_optional(self.store.pool())
        .await?;
        match row {
            Some((creation_path, created_at, expires_at)) if expires_at > now_millis() => {
                Ok(WrapLookup {
                    creation_path,
                    creation_time: rfc3339(created_at),
                    creation_ttl: u64::try_from((expires_at - created_at) / 1000).unwrap_or(0),
                })
            }
            _ => Err(SecretsError::InvalidRequest(INVALID.into())),
        }
    }
}
