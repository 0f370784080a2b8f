//! Command-line surface (DESIGN.md "Interface contract": names are stable).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config;

#[derive(Debug, Parser)]
#[command(
    name = "keyless",
    version,
    about = "Keyless: a zero-trust, secretless identity fabric for AI agents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where a command finds the running fabric.
#[derive(Debug, Clone, Args)]
pub struct DataDirArg {
    /// Data directory of the fabric (holds admin.sock, workload.sock, keyless.db, keys/).
    #[arg(long, env = config::ENV_DATA_DIR, default_value = config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole fabric in one process with embedded defaults.
    Up(UpArgs),
    /// Manage registration entries (who gets which SPIFFE ID).
    #[command(subcommand)]
    Entry(EntryCommand),
    /// Workload API client.
    #[command(subcommand)]
    Svid(SvidCommand),
    /// Trust-domain CA operations.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Local users of the sign-in service.
    #[command(subcommand)]
    User(UserCommand),
    /// Users' consents for agents to act on their behalf.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// Cedar policy of the token service.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The Vault-compatible secrets broker: ACL policies, JWT roles, KV, database credentials.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// The MCP gateway's pinned tool definitions.
    #[command(subcommand)]
    Tools(ToolsCommand),
    /// Shared Signals (SSF/CAEP): streams, subscriptions, and the risk
    /// ladder's review items.
    #[command(subcommand)]
    Signals(SignalsCommand),
    /// Find leaked credentials in files, git history or a log stream
    /// (exit 0: none found, 1: findings, 2: bad input).
    Scan(ScanArgs),
    /// Check a deployment: data-dir permissions, keys and secrets at rest,
    /// no secret in configuration, TLS, TTLs, audit log (exit 1 on any FAIL).
    Doctor(DoctorArgs),
}

/// Output format of `keyless scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScanFormat {
    /// One block per finding, for humans.
    Text,
    /// The report as one JSON document.
    Json,
    /// SARIF 2.1.0, for code-scanning tools.
    Sarif,
}

/// `keyless scan`: exit 0 when nothing was found, 1 when findings remain
/// (after the allowlist and the baseline; 0 after `--write-baseline`),
/// 2 on bad input (a missing path, an invalid regex or baseline).
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Files or directories to scan (with --git: repositories).
    #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
    pub paths: Vec<PathBuf>,
    /// Scan every blob in the repositories' history once, reporting the
    /// commit where each secret first appeared.
    #[arg(long, conflicts_with = "stdin")]
    pub git: bool,
    /// Read a log stream from standard input and print it redacted on
    /// standard output; the summary goes to standard error.
    #[arg(long)]
    pub stdin: bool,
    /// Report format on standard output.
    #[arg(long, value_enum, default_value_t = ScanFormat::Text)]
    pub format: ScanFormat,
    /// Ignore findings recorded in this baseline file.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Record the findings in FILE as the new baseline (then exit 0).
    #[arg(long, value_name = "FILE", conflicts_with = "stdin")]
    pub write_baseline: Option<PathBuf>,
    /// Ignore matches whose secret or path matches REGEX (repeatable).
    #[arg(long = "allow", value_name = "REGEX")]
    pub allow: Vec<String>,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Ask the running fabric to revoke every finding it issued (broker,
    /// wrap and access tokens, leases); one line per credential on stderr.
    #[arg(long)]
    pub revoke: bool,
    #[command(flatten)]
    pub data_dir: DataDirArg,
}

/// `keyless doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// The configuration file `keyless up` runs with (TOML); checked for
    /// secrets, TLS settings and TTLs.
    #[arg(long, env = config::ENV_CONFIG)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SignalsCommand {
    /// Receive SETs from the SSF transmitter at URL (its issuer): its keys
    /// are fetched and trusted from now on. With --token (an `ssf.manage`
    /// bearer of the transmitter's STS) a stream is created there;
    /// otherwise the transmitter's operator creates one pushing to this
    /// fabric's `/ssf/push` with this fabric's URL as audience.
    Subscribe {
        #[command(flatten)]
        data_dir: DataDirArg,
        /// The transmitter's issuer URL.
        url: String,
        /// `push` (to our `/ssf/push`) or `poll` (needs --token).
        #[arg(long, default_value = "push")]
        delivery: String,
        /// The stream at the transmitter, when it exists already.
        #[arg(long)]
        stream_id: Option<String>,
        /// Bearer token for the transmitter's management and poll endpoints.
        #[arg(long, env = "KEYLESS_SSF_TOKEN")]
        token: Option<String>,
    },
    /// List this fabric's transmitter streams (with pending SETs) and the
    /// transmitters it subscribes to.
    List {
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// Create a push stream from this fabric's transmitter to a receiver.
    Push {
        #[command(flatten)]
        data_dir: DataDirArg,
        /// The receiver's push endpoint.
        endpoint_url: String,
        /// The audience of the SETs (the receiver's identifier).
        #[arg(long)]
        aud: String,
        /// Event types to deliver (default: every CAEP event).
        #[arg(long = "event")]
        events: Vec<String>,
    },
    /// Review items the risk ladder opened (W4: the subject gets no new
    /// tokens until resolved).
    Reviews {
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// Resolve a review item: lifts the W4 restriction of its subject.
    Resolve {
        #[command(flatten)]
        data_dir: DataDirArg,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ToolsCommand {
    /// List the tools upstreams offer, with their pin status (approved, or
    /// blocked as new, changed or vanished).
    List {
        #[command(flatten)]
        data_dir: DataDirArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve a tool's current definition (pins its hash and unblocks it).
    Approve {
        #[command(flatten)]
        data_dir: DataDirArg,
        /// Namespaced tool name, e.g. `directory.list_users`.
        name: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Address of the HTTP listener.
    #[arg(long, env = config::ENV_LISTEN, default_value = config::DEFAULT_LISTEN)]
    pub listen: String,
    /// SPIFFE trust domain (fixed at first start; later starts must agree).
    #[arg(long, env = config::ENV_TRUST_DOMAIN)]
    pub trust_domain: Option<String>,
    /// PostgreSQL URL; without it the embedded SQLite in the data dir is used.
    #[arg(long, env = config::ENV_DATABASE_URL)]
    pub database_url: Option<String>,
    /// Base URL under which clients reach the HTTP listener (default: http://LISTEN).
    #[arg(long, env = config::ENV_PUBLIC_URL)]
    pub public_url: Option<String>,
    /// Configuration file (TOML); flags and KEYLESS_* variables override it.
    #[arg(long, env = config::ENV_CONFIG)]
    pub config: Option<PathBuf>,
    /// Directory of Cedar policies (`*.cedar`, optional `schema.cedarschema`),
    /// reloaded on change (default: DATA_DIR/policies, seeded with the built-in set).
    #[arg(long, env = config::ENV_POLICIES_DIR)]
    pub policies_dir: Option<PathBuf>,
    /// Address of an optional second listener serving the same API over
    /// mTLS (client X509-SVIDs; RFC 8705 certificate-bound tokens).
    #[arg(long, env = config::ENV_MTLS_LISTEN)]
    pub mtls_listen: Option<String>,
    /// Where the secrets broker keeps KV v2 secrets and gets database
    /// credentials: `local` (default, in the store) or `openbao`.
    #[arg(long, env = config::ENV_SECRETS_BACKEND)]
    pub secrets_backend: Option<String>,
    /// OpenBao/Vault address (http://HOST:PORT), with `--secrets-backend openbao`.
    #[arg(long, env = config::ENV_OPENBAO_ADDR)]
    pub openbao_addr: Option<String>,
    /// OpenBao JWT auth role Keyless logs in with (its own JWT-SVID).
    #[arg(long, env = config::ENV_OPENBAO_ROLE)]
    pub openbao_role: Option<String>,
    /// Audience of Keyless's JWT-SVID for OpenBao (default `openbao`).
    #[arg(long, env = config::ENV_OPENBAO_AUDIENCE)]
    pub openbao_audience: Option<String>,
    /// The MCP gateway's upstreams, tiers and RAR templates (TOML; default:
    /// the demo tool servers `directory` and `bank`).
    #[arg(long, env = config::ENV_GATEWAY_CONFIG)]
    pub gateway_config: Option<PathBuf>,
    /// The risk ladder's thresholds, decay and detector weights (TOML;
    /// default: thresholds 1..5, half-life 15m, every detector weight 1).
    #[arg(long, env = config::ENV_RISK_CONFIG)]
    pub risk_config: Option<PathBuf>,
    /// The agent host's model: `scripted` (default, offline), `anthropic`
    /// or `openai` (any OpenAI-compatible server, e.g. llama.cpp or vLLM).
    /// The provider's API key is read from the secrets broker
    /// (`keyless secrets kv put keyless/agent/PROVIDER api_key=…`), never
    /// from the environment or a file.
    #[arg(long, env = config::ENV_MODEL)]
    pub model: Option<String>,
    /// The provider's model name (e.g. `claude-sonnet-4-5`, `gpt-4o-mini`).
    #[arg(long, env = config::ENV_MODEL_NAME)]
    pub model_name: Option<String>,
    /// The provider's base URL (default: the provider's public API).
    #[arg(long, env = config::ENV_MODEL_URL)]
    pub model_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Register a workload: callers matching all selectors get the SPIFFE ID.
    Create(EntryCreateArgs),
    /// List registration entries.
    List {
        #[command(flatten)]
        data_dir: DataDirArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a registration entry by id.
    Delete {
        #[command(flatten)]
        data_dir: DataDirArg,
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct EntryCreateArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// spiffe://TRUST-DOMAIN/PATH
    #[arg(long)]
    pub spiffe_id: String,
    /// TYPE:KEY:VALUE, e.g. unix:uid:1000, unix:path:/usr/bin/agent, unix:sha256:HEX (repeatable; all must match).
    #[arg(long = "selector", required = true, num_args = 1..)]
    pub selectors: Vec<String>,
    /// Parent SPIFFE ID (defaults to the trust domain's node).
    #[arg(long)]
    pub parent_id: Option<String>,
    /// X509-SVID lifetime, e.g. 1h, 10s.
    #[arg(long)]
    pub x509_ttl: Option<String>,
    /// JWT-SVID lifetime, e.g. 5m.
    #[arg(long)]
    pub jwt_ttl: Option<String>,
    /// Hint passed to workloads with several identities.
    #[arg(long, default_value = "")]
    pub hint: String,
    /// Mark the identity as an administrator.
    #[arg(long)]
    pub admin: bool,
}

#[derive(Debug, Subcommand)]
pub enum SvidCommand {
    /// Fetch an X509-SVID (written to --out) or, with --audience, a JWT-SVID (printed).
    Fetch(SvidFetchArgs),
}

#[derive(Debug, Args)]
pub struct SvidFetchArgs {
    /// Workload API address (unix:///path); default $SPIFFE_ENDPOINT_SOCKET, then DATA_DIR/workload.sock.
    #[arg(long)]
    pub socket: Option<String>,
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Fetch a JWT-SVID for this audience (repeatable) and print it.
    #[arg(long)]
    pub audience: Vec<String>,
    /// With --audience: the SPIFFE ID to fetch, when several entries
    /// match this process (default: the first).
    #[arg(long, requires = "audience")]
    pub spiffe_id: Option<String>,
    /// Directory for svid.pem, svid.key and bundle.pem.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Prepare and activate a new CA generation now (old roots stay trusted until what they signed expires).
    Rotate {
        #[command(flatten)]
        data_dir: DataDirArg,
        /// Rotate the JWT signing key instead of the X.509 CA.
        #[arg(long)]
        jwt: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the Merkle tree from the stored entries and check every checkpoint.
    Verify(AuditStoreArgs),
    /// Print and check the inclusion proof of entry N against the latest checkpoint.
    Proof {
        #[command(flatten)]
        store: AuditStoreArgs,
        index: u64,
    },
    /// Print the latest signed checkpoint (issuing one if the log grew).
    Checkpoint(AuditStoreArgs),
    /// Write entries as JSON Lines (for a SIEM).
    Export {
        #[command(flatten)]
        store: AuditStoreArgs,
        /// First index to export.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
}

/// The audit commands read the store directly, so they work with the fabric down.
#[derive(Debug, Clone, Args)]
pub struct AuditStoreArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// PostgreSQL URL when the fabric runs on PostgreSQL.
    #[arg(long, env = config::ENV_DATABASE_URL)]
    pub database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from standard input (one line).
    Add {
        #[command(flatten)]
        data_dir: DataDirArg,
        email: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// List live consents (all users, or one user's subject id).
    List {
        #[command(flatten)]
        data_dir: DataDirArg,
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a consent by id: the very next token exchange relying on it fails.
    Revoke {
        #[command(flatten)]
        data_dir: DataDirArg,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Evaluate one token-exchange decision offline: prints `allow` (exit 0)
    /// or `deny: <policy id>: <reason>` (exit 1).
    Test(PolicyTestArgs),
}

#[derive(Debug, Args)]
pub struct PolicyTestArgs {
    /// Directory of `*.cedar` files (and optionally `schema.cedarschema`);
    /// default: the fabric's (`$KEYLESS_POLICIES_DIR`, else DATA_DIR/policies
    /// when it exists), else the embedded policies.
    #[arg(long, env = config::ENV_POLICIES_DIR)]
    pub policies: Option<PathBuf>,
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// The agent's SPIFFE ID (principal).
    #[arg(long)]
    pub agent: String,
    /// The action, e.g. `list_users`, `delete_user`, `transfer_funds`.
    #[arg(long)]
    pub action: String,
    /// The target resource server's audience, e.g. `directory`, `bank`.
    #[arg(long)]
    pub resource: String,
    /// The RAR type of the request.
    #[arg(long, default_value = "tool_call")]
    pub rar_type: String,
    #[arg(long, default_value = "alice@example.com")]
    pub user: String,
    /// 1 read, 2 write, 3 sensitive, 4 blocked.
    #[arg(long, default_value_t = 1)]
    pub tier: u8,
    #[arg(long)]
    pub amount: Option<f64>,
    #[arg(long)]
    pub currency: Option<String>,
    #[arg(long)]
    pub destination: Option<String>,
    #[arg(long, default_value = "low")]
    pub risk_level: String,
    #[arg(long, default_value_t = 0)]
    pub approvals: u32,
    #[arg(long)]
    pub step_up: bool,
    #[arg(long, default_value_t = 60)]
    pub session_age_secs: i64,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// ACL policies (Vault style: `path "secret/data/app/*" { capabilities = ["read"] }`).
    #[command(subcommand)]
    Policy(SecretsPolicyCommand),
    /// JWT auth roles: which JWT-SVIDs may log in, and with which policies.
    #[command(subcommand)]
    Role(SecretsRoleCommand),
    /// KV v2 secrets.
    #[command(subcommand)]
    Kv(SecretsKvCommand),
    /// Dynamic PostgreSQL credentials.
    #[command(subcommand)]
    Db(SecretsDbCommand),
    /// Leases.
    #[command(subcommand)]
    Lease(SecretsLeaseCommand),
    /// Cert auth roles: which X509-SVIDs may log in over the mTLS listener.
    #[command(subcommand)]
    Cert(SecretsCertCommand),
    /// Rotating credentials: each read runs a hook with a new secret.
    #[command(subcommand)]
    Rotating(SecretsRotatingCommand),
}

#[derive(Debug, Subcommand)]
pub enum SecretsCertCommand {
    /// Create or replace cert role NAME (Vault's `auth/cert/certs/NAME`).
    Create {
        #[command(flatten)]
        data_dir: DataDirArg,
        name: String,
        /// SPIFFE ID allowed to log in, exact or a glob with `*` (repeatable; at least one).
        #[arg(long = "allowed-spiffe-id", required = true)]
        allowed_spiffe_ids: Vec<String>,
        /// Policy the token gets (repeatable).
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// Token lifetime, e.g. 1h, 15m (default 1h).
        #[arg(long)]
        token_ttl: Option<String>,
        /// `service` (stored, renewable) or `batch` (stateless, signed).
        #[arg(long, default_value = "service")]
        token_type: String,
    },
    /// List cert role names.
    List {
        #[command(flatten)]
        data_dir: DataDirArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsRotatingCommand {
    /// Register (or update) rotating credential NAME, read at `rotating/creds/NAME`.
    Create {
        #[command(flatten)]
        data_dir: DataDirArg,
        name: String,
        /// The hook program (absolute path; run without a shell, the new
        /// secret on its stdin; exit 0 once the upstream accepted it).
        #[arg(long)]
        hook: String,
        /// An argument for the hook (repeatable, in order).
        #[arg(long = "hook-arg", allow_hyphen_values = true)]
        hook_args: Vec<String>,
        /// Lease of each read, e.g. 5m (default 5m).
        #[arg(long)]
        ttl: Option<String>,
        /// How long the hook may run, e.g. 30s (default 30s).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// List rotating credential names.
    List {
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// Forget rotating credential NAME (its live leases expire without a rotation).
    Delete {
        #[command(flatten)]
        data_dir: DataDirArg,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsPolicyCommand {
    /// Create or replace policy NAME from FILE (HCL or JSON, Vault syntax).
    Write {
        #[command(flatten)]
        data_dir: DataDirArg,
        name: String,
        file: PathBuf,
    },
    /// List policy names.
    List {
        #[command(flatten)]
        data_dir: DataDirArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsRoleCommand {
    /// Create or replace JWT role NAME.
    Create(SecretsRoleCreateArgs),
    /// List role names.
    List {
        #[command(flatten)]
        data_dir: DataDirArg,
    },
}

#[derive(Debug, Args)]
pub struct SecretsRoleCreateArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    pub name: String,
    /// Audience the JWT-SVID must carry (repeatable; at least one).
    #[arg(long = "bound-audience", required = true)]
    pub bound_audiences: Vec<String>,
    /// SPIFFE ID, exact or a glob with `*` (e.g. spiffe://example.org/agent/*).
    #[arg(long)]
    pub bound_subject: String,
    /// Policy the token gets (repeatable).
    #[arg(long = "policy")]
    pub policies: Vec<String>,
    /// Token lifetime, e.g. 1h, 15m (default 1h).
    #[arg(long)]
    pub token_ttl: Option<String>,
    /// Longest lifetime through renewals, e.g. 24h.
    #[arg(long)]
    pub token_max_ttl: Option<String>,
    /// `service` (stored, renewable) or `batch` (stateless, signed).
    #[arg(long, default_value = "service")]
    pub token_type: String,
    /// Refuse a JWT-SVID whose `jti` was already used to log in.
    #[arg(long)]
    pub single_use: bool,
}

#[derive(Debug, Subcommand)]
pub enum SecretsKvCommand {
    /// Write a new version of secret PATH (under `secret/`): KEY=VALUE...
    Put {
        #[command(flatten)]
        data_dir: DataDirArg,
        path: String,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsDbCommand {
    /// Register a PostgreSQL server; its password is rotated so nobody knows it afterwards.
    Configure {
        #[command(flatten)]
        data_dir: DataDirArg,
        /// postgres://USER:PASSWORD@HOST:PORT/DB (USER needs CREATEROLE).
        #[arg(long)]
        connection_url: String,
        /// Name of the connection (roles refer to it).
        #[arg(long, default_value = "postgres")]
        name: String,
        /// Roles allowed to use this connection (repeatable; default all).
        #[arg(long = "allowed-role")]
        allowed_roles: Vec<String>,
    },
    /// Database roles.
    #[command(subcommand)]
    Role(SecretsDbRoleCommand),
}

#[derive(Debug, Subcommand)]
pub enum SecretsDbRoleCommand {
    /// Create or replace database role NAME.
    Create {
        #[command(flatten)]
        data_dir: DataDirArg,
        name: String,
        /// SQL file; statements separated by `;`, with {{name}}, {{password}}, {{expiration}}.
        #[arg(long)]
        creation_statements: PathBuf,
        #[arg(long)]
        default_ttl: String,
        #[arg(long)]
        max_ttl: String,
        /// Connection name (see `db configure --name`).
        #[arg(long, default_value = "postgres")]
        db_name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsLeaseCommand {
    /// Revoke every lease whose id starts with PREFIX.
    RevokePrefix {
        #[command(flatten)]
        data_dir: DataDirArg,
        prefix: String,
    },
    /// Leases whose revocation failed and is being retried.
    Pending {
        #[command(flatten)]
        data_dir: DataDirArg,
    },
}
