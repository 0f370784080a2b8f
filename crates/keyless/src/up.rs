//! `keyless up`: the whole fabric in one process.
//!
//! Start order matters: the store and the audit log come first (nothing may
//! happen that cannot be recorded), then identity, then the listeners. The
//! `ready` line is printed only once every listener accepts connections.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use keyless_audit::AuditLog;
use keyless_identity::{Identity, IdentityConfig, TrustDomain};
use keyless_secrets::{Secrets, SecretsConfig};
use keyless_store::{FileKeyManager, KeyManager, Store};
use keyless_sts::policy::{LoadedPolicies, PolicyStore};
use keyless_sts::rar::RarRegistry;
use keyless_sts::{Sts, StsConfig};
use keyless_workload_api::WorkloadApi;
use tokio::sync::watch;

use crate::cli::UpArgs;
use crate::config::{self, Config};
use crate::{CliError, CliResult, admin, agent, console_api, http, internal, signals};

/// The gateway's client id at the STS.
const GATEWAY_CLIENT_ID: &str = "keyless-gateway";

pub async fn run(args: UpArgs) -> CliResult {
    init_tracing();
    let started = Instant::now();
    let config = Config::resolve(&args)?;
    // Checked before anything touches the data dir: a bad combination
    // changes nothing.
    let openbao = config.openbao().map_err(CliError::Usage)?;
    let openbao = openbao
        .map(|o| {
            let mut bao = keyless_secrets::openbao::OpenBaoConfig::new(&o.addr, &o.role);
            if let Some(a) = &o.audience {
                bao.audience = a.clone();
            }
            bao.validate()
                .map(|_| bao)
                .map_err(|e| CliError::Usage(e.to_string()))
        })
        .transpose()?;
    let trust_domain: Option<TrustDomain> = config
        .trust_domain
        .as_deref()
        .map(|td| {
            td.parse()
                .map_err(|e| CliError::Usage(format!("invalid trust domain `{td}`: {e}")))
        })
        .transpose()?;

    // The risk ladder's settings, also checked before the data dir is touched.
    let risk_config = match &config.risk_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the risk config `{}`", path.display()))?;
            let c: keyless_signals::risk::RiskConfig = toml::from_str(&text).map_err(|e| {
                // One line: where, and what (toml's own text spans lines).
                let line = e
                    .span()
                    .map(|r| text.get(..r.start).unwrap_or("").lines().count().max(1));
                CliError::Usage(format!(
                    "{}{}: {}",
                    path.display(),
                    line.map(|l| format!(" line {l}")).unwrap_or_default(),
                    e.message().trim()
                ))
            })?;
            c.validate()
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
            c
        }
        None => keyless_signals::risk::RiskConfig::default(),
    };
    // The agent host's model, also checked before the data dir is touched.
    let model_settings = config.model().map_err(CliError::Usage)?;
    let data_dir = prepare_data_dir(&config.data_dir)?;
    let keys: Arc<dyn KeyManager> = Arc::new(
        FileKeyManager::open(&data_dir.join("keys")).context("cannot open the key manager")?,
    );
    let store = match &config.database_url {
        Some(url) => Store::open(url).await,
        None => Store::open_sqlite(&data_dir.join("keyless.db")).await,
    }
    .context("cannot open the store")?;
    if config.database_url.is_none() {
        restrict_db_files(&data_dir);
    }

    // The trust domain is fixed at first start; later starts read it back
    // and must agree, before anything else touches the data.
    let stored_td = store
        .get_meta(keyless_identity::TRUST_DOMAIN_META_KEY)
        .await
        .context("reading the store")?;
    if let (Some(given), Some(stored)) = (&trust_domain, &stored_td)
        && given.to_string() != *stored
    {
        return Err(CliError::Usage(format!(
            "trust domain mismatch: the data in `{}` belongs to trust domain `{stored}`, not `{given}` (a trust domain never changes; use another --data-dir)",
            data_dir.display()
        )));
    }
    let trust_domain = match trust_domain {
        Some(td) => td,
        None => match stored_td {
            Some(td) => td
                .parse()
                .map_err(|e| anyhow::anyhow!("stored trust domain `{td}` is invalid: {e}"))?,
            None => config::DEFAULT_TRUST_DOMAIN
                .parse()
                .map_err(|e| anyhow::anyhow!("default trust domain: {e}"))?,
        },
    };

    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on `{}`", config.listen))?;
    let local = listener
        .local_addr()
        .context("reading the listen address")?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{local}"))
        .trim_end_matches('/')
        .to_owned();

    // The optional mTLS listener is bound now too, so its address is known
    // to the STS metadata (`mtls_endpoint_aliases`) before anything serves.
    let mtls_listener = match &config.mtls_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on `{addr}` (mtls)"))?;
            let local = l.local_addr().context("reading the mtls listen address")?;
            Some((l, format!("https://{local}")))
        }
        None => None,
    };

    let audit = AuditLog::open(
        store.clone(),
        keys.clone(),
        format!("{trust_domain}/keyless-audit"),
    )
    .await
    .context("cannot open the audit log")?;

    let mut identity_config = IdentityConfig::new(trust_domain.clone(), public_url.clone());
    if let Some(d) = config.ca_ttl {
        identity_config.ca_ttl = d;
    }
    if let Some(d) = config.jwt_key_ttl {
        identity_config.jwt_key_ttl = d;
    }
    if let Some(d) = config.default_x509_ttl {
        identity_config.default_x509_ttl = d;
    }
    if let Some(d) = config.default_jwt_ttl {
        identity_config.default_jwt_ttl = d;
    }
    let identity = Identity::open(store.clone(), keys.clone(), audit.clone(), identity_config)
        .await
        .context("cannot open the identity service")?;
    let _rotation = identity.spawn_rotation();

    // The gateway's upstreams (the demo tool servers unless configured):
    // read first, since their OAuth audiences become resource servers.
    let gateway_config = match &config.gateway_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the gateway config `{}`", path.display()))?;
            keyless_gateway::GatewayConfig::parse(&text)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?
        }
        None => keyless_gateway::GatewayConfig::demo(&public_url)
            .map_err(|e| anyhow::anyhow!("the demo gateway config: {e}"))?,
    };
    let mut sts_config = StsConfig::new(public_url.clone());
    // The demo tool servers consume their tokens as themselves, and the
    // gateway exchanges for agents as a confidential client.
    for rs in &mut sts_config.resource_servers {
        let path = match rs.audience.as_str() {
            keyless_demo::DIRECTORY_AUDIENCE => internal::DIRECTORY_ID_PATH,
            keyless_demo::BANK_AUDIENCE => internal::BANK_ID_PATH,
            _ => continue,
        };
        rs.spiffe_id = Some(format!("spiffe://{trust_domain}{path}"));
        rs.resource_uris
            .push(format!("{public_url}/demo/{}/mcp", rs.audience));
    }
    // Every OAuth upstream is a resource server (the demo ones already are).
    for u in &gateway_config.upstreams {
        if let (keyless_gateway::config::UpstreamAuth::Oauth, Some(aud)) = (&u.auth, &u.audience)
            && sts_config.resource_server(aud).is_none()
        {
            let mut rs = keyless_sts::ResourceServer::new(aud);
            rs.resource_uris.extend(u.url.clone());
            sts_config.resource_servers.push(rs);
        }
    }
    // Calls to upstreams that take no OBO token are decided under this one.
    sts_config
        .resource_servers
        .push(keyless_sts::ResourceServer::new(
            keyless_gateway::GATEWAY_AUDIENCE,
        ));
    sts_config.clients.push(keyless_sts::ClientRegistration {
        client_id: GATEWAY_CLIENT_ID.into(),
        spiffe_id: format!("spiffe://{trust_domain}{}", internal::GATEWAY_ID_PATH),
        uri: format!("{public_url}/mcp"),
    });
    sts_config.mtls_base_url = mtls_listener.as_ref().map(|(_, url)| url.clone());
    // Behind the mTLS listener the gateway lets agents in by their
    // X509-SVID and vouches for them at the exchange (keyless-sts
    // `actor.rs`); without that listener it has nothing to attest.
    if mtls_listener.is_some() {
        sts_config.actor_attesters.push(GATEWAY_CLIENT_ID.into());
    }
    // Workloads under `spiffe://<td>/ssf` are SSF receivers: they may get
    // stream management and poll tokens with their JWT-SVID.
    sts_config
        .service_scopes
        .push(keyless_sts::ServiceScopeRule {
            spiffe_id_prefix: format!("spiffe://{trust_domain}{}", signals::SSF_CLIENTS_PATH),
            scopes: vec![
                keyless_signals::http::SCOPE_MANAGE.into(),
                keyless_signals::http::SCOPE_READ.into(),
            ],
        });
    // Cedar policies: `<data-dir>/policies` unless configured, seeded with
    // the built-in set on first start so operators have files to edit. An
    // invalid set refuses the start (a running fabric keeps its last valid
    // set instead: see the watcher below).
    let policies_dir = config
        .policies_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("policies"));
    if LoadedPolicies::seed_dir(&policies_dir).context("cannot create the policies dir")? {
        tracing::info!(dir = %policies_dir.display(), "seeded the policies dir with the default policy set");
    }
    let policies = Arc::new(PolicyStore::new(
        LoadedPolicies::from_dir(&policies_dir).map_err(|e| {
            CliError::Usage(format!(
                "invalid policy set in `{}`: {e}",
                policies_dir.display()
            ))
        })?,
    ));
    if let Some(d) = config.sts_signing_key_lifetime {
        sts_config.signing_key_lifetime = d;
    }
    if let Some(d) = config.sts_maintenance_interval {
        sts_config.maintenance_interval = d;
    }
    let sts = Sts::open_with(
        store.clone(),
        keys.clone(),
        identity.clone(),
        audit.clone(),
        sts_config,
        RarRegistry::builtin().context("the built-in rar types")?,
        policies.clone(),
    )
    .await
    .context("cannot open the token service")?;

    // The Vault-compatible secrets broker (JWT-SVID login, KV v2, leases).
    let secrets = Secrets::open(
        store.clone(),
        keys.clone(),
        identity.clone(),
        audit.clone(),
        SecretsConfig::default(),
    )
    .await
    .context("cannot open the secrets broker")?;
    // Optional OpenBao backend: KV v2 and database credentials come from
    // OpenBao; Keyless logs in lazily with its own JWT-SVID (OpenBao may be
    // configured to trust this fabric only once it is up), and keeps the
    // OpenBao token in memory only.
    let secrets_backend = match &openbao {
        Some(o) => {
            secrets
                .use_openbao(o.clone())
                .map_err(|e| CliError::Usage(e.to_string()))?;
            format!(
                "openbao at {} (role `{}`, as spiffe://{trust_domain}{})",
                o.addr,
                o.role,
                keyless_secrets::openbao::BROKER_ID_PATH
            )
        }
        None => "local".to_owned(),
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // Shared Signals: the transmitter (SETs signed with its own key), the
    // receiver (`/ssf/push`, subscriptions), and the risk ladder, whose
    // levels the STS consults on every exchange and refresh.
    let set_key = match keys.load(signals::SET_KEY_NAME).await {
        Ok(k) => k,
        Err(_) => keys
            .generate(
                signals::SET_KEY_NAME,
                keyless_store::KeyAlgorithm::EcdsaP256,
            )
            .await
            .context("cannot create the SET signing key")?,
    };
    let transmitter = keyless_signals::transmitter::Transmitter::new(
        store.clone(),
        audit.clone(),
        keyless_signals::set::SetSigner::new(set_key, public_url.clone())
            .map_err(|e| anyhow::anyhow!("the SET signing key: {e}"))?,
        keyless_signals::transmitter::TransmitterConfig::new(public_url.clone()),
    )
    .map_err(|e| anyhow::anyhow!("cannot start the SSF transmitter: {e}"))?;
    let push_worker = transmitter.spawn_push_worker();
    let receiver = keyless_signals::receiver::Receiver::open(
        store.clone(),
        audit.clone(),
        Arc::new(signals::LocalCaep { sts: sts.clone() }),
        public_url.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot open the SSF receiver: {e}"))?;
    let risk = keyless_signals::risk::RiskEngine::open(store.clone(), risk_config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the risk engine: {e}"))?;
    // Replicas sharing PostgreSQL learn each other's levels and restrictions.
    let risk_listener = risk.spawn_listener();
    sts.set_risk_gate(Arc::new(signals::LadderGate {
        engine: risk.clone(),
    }));
    let ladder = keyless_signals::ladder::Ladder::new(
        risk.clone(),
        transmitter.clone(),
        Arc::new(signals::StsSessions { sts: sts.clone() }),
        audit.clone(),
    );

    // The MCP gateway and, behind it, the demo tool servers.
    let demo_dir = data_dir.join("demo");
    std::fs::create_dir_all(&demo_dir).context("cannot create the demo dir")?;
    let demo = |file: &str, path: &str| -> anyhow::Result<keyless_demo::DemoConfig> {
        Ok(keyless_demo::DemoConfig {
            issuer: public_url.clone(),
            database: demo_dir.join(file),
            svid: Arc::new(internal::InternalSvid::new(identity.clone(), path)?),
        })
    };
    let demo_routes = keyless_demo::directory_router(
        demo("directory.db", internal::DIRECTORY_ID_PATH)?,
        "/demo/directory/mcp",
    )
    .await
    .context("cannot start the demo directory server")?
    .merge(
        keyless_demo::bank_router(demo("bank.db", internal::BANK_ID_PATH)?, "/demo/bank/mcp")
            .await
            .context("cannot start the demo bank server")?,
    );
    let gateway_svid = internal::InternalSvid::new(identity.clone(), internal::GATEWAY_ID_PATH)?;
    let gateway = keyless_gateway::start(keyless_gateway::StartParams {
        config: gateway_config,
        base_url: public_url.clone(),
        store: store.clone(),
        sts: sts.clone(),
        identity: identity.clone(),
        events: audit.clone(),
        client: keyless_sts::AuthenticatedClient {
            client_id: GATEWAY_CLIENT_ID.into(),
            spiffe_id: Some(gateway_svid.spiffe_id()),
            uri: format!("{public_url}/mcp"),
        },
        secrets: Some(secrets.clone()),
        shutdown: shutdown_rx.clone(),
    })
    .await
    .context("cannot start the mcp gateway")?;
    gateway.set_ladder(ladder.clone());
    let sts_feed = signals::spawn_sts_feed(
        audit.clone(),
        ladder.clone(),
        sts.clone(),
        GATEWAY_CLIENT_ID,
    );
    // The agent host: its agent talks to the gateway like any other agent
    // (JWT-SVID + the user's token); the host itself reads the provider key
    // from the secrets broker under its own identity.
    let agent_svid = internal::InternalSvid::new(identity.clone(), internal::AGENT_ID_PATH)?;
    let agent_host_svid =
        internal::InternalSvid::new(identity.clone(), internal::AGENT_HOST_ID_PATH)?;
    agent::register_broker_role(&secrets, &public_url, &agent_host_svid.spiffe_id()).await?;
    let model = agent::build_model(&model_settings, |provider| {
        Ok(Arc::new(agent::BrokerKey::new(
            public_url.clone(),
            provider.to_owned(),
            agent_host_svid.clone(),
        )?) as Arc<dyn keyless_agent::model::KeySource>)
    })?;
    let model_name = model.name();
    let agent_host = Arc::new(keyless_agent::host::Host::new(
        model,
        Arc::new(agent::GatewayClient::new(
            format!("{public_url}/mcp"),
            agent_svid.clone(),
            audit.clone(),
        )?),
        keyless_agent::host::HostConfig {
            system_prompt: agent::SYSTEM_PROMPT.to_owned(),
            ..keyless_agent::host::HostConfig::default()
        },
    ));
    let console_state = console_api::ConsoleState {
        host: agent_host,
        sts: sts.clone(),
        audit: audit.clone(),
        identity: identity.clone(),
        secrets: secrets.clone(),
        transmitter: transmitter.clone(),
        config: Arc::new(console_api::config_json(
            &public_url,
            &agent_svid.spiffe_id(),
            &model_name,
        )),
        conversations: Arc::default(),
    };
    let shutdown = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // STS upkeep (key rotation by age, retired-key removal, purges) and
    // policy hot reload (polling, see `PolicyStore::spawn_watch_recording`).
    let sts_maintenance = sts.spawn_maintenance(shutdown(shutdown_rx.clone()));
    let policy_watch = policies.spawn_watch_recording(
        policies_dir.clone(),
        std::time::Duration::from_secs(1),
        Some(audit.clone() as Arc<dyn keyless_audit::EventSink>),
    );
    // Revokes expired leases (first pass now: what expired while we were down).
    let lease_worker = secrets.spawn_expiry_worker(shutdown(shutdown_rx.clone()));

    // Workload API: world-connectable, callers are attested.
    let workload_socket = data_dir.join("workload.sock");
    let workload = WorkloadApi::new(identity.clone(), audit.clone());
    let workload_task = {
        let path = workload_socket.clone();
        let stop = shutdown(shutdown_rx.clone());
        tokio::spawn(async move { workload.serve(&path, stop).await })
    };

    // Admin API: the socket's 0600 mode is the authentication.
    let admin_socket = data_dir.join("admin.sock");
    let admin_listener = admin::bind(&admin_socket)?;
    let admin_router = admin::router(admin::AdminState {
        identity: identity.clone(),
        sts: sts.clone(),
        secrets: secrets.clone(),
        gateway: gateway.clone(),
        transmitter: transmitter.clone(),
        receiver: receiver.clone(),
        risk: risk.clone(),
        audit: audit.clone(),
    });
    let admin_task = {
        let stop = shutdown(shutdown_rx.clone());
        tokio::spawn(async move {
            axum::serve(admin_listener, admin_router)
                .with_graceful_shutdown(stop)
                .await
        })
    };

    let router = http::router(http::HttpState {
        identity: identity.clone(),
        audit: audit.clone(),
        sts: sts.clone(),
        secrets: secrets.clone(),
        started,
    })
    .merge(keyless_gateway::http::router(gateway.clone()))
    .merge(keyless_signals::http::transmitter_router(
        transmitter.clone(),
        Arc::new(signals::StsAuthorizer { sts: sts.clone() }),
    ))
    .merge(keyless_signals::http::receiver_router(receiver.clone()))
    .merge(console_api::router(console_state))
    .merge(keyless_console::router())
    .merge(demo_routes);
    let mtls_router = mtls_listener.as_ref().map(|_| router.clone());
    let http_task = {
        let stop = shutdown(shutdown_rx.clone());
        tokio::spawn(async move {
            // Peer addresses feed the per-IP sign-in rate limit.
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(stop)
            .await
        })
    };

    // mTLS: the same router, with the client's verified X509-SVID as a
    // request extension (tls.rs).
    let mtls_task = match mtls_listener.zip(mtls_router) {
        Some(((listener, url), router)) => {
            let tls = crate::tls::MtlsConfig::start(identity.clone(), shutdown_rx.clone())
                .context("cannot start the mtls listener")?;
            let task = tokio::spawn(crate::tls::serve(
                listener,
                router,
                identity.clone(),
                tls,
                shutdown_rx.clone(),
            ));
            Some((task, url))
        }
        None => None,
    };

    wait_for_socket(&workload_socket).await?;
    let unconnected = gateway
        .upstreams()
        .wait_connected(std::time::Duration::from_secs(10))
        .await;
    for name in &unconnected {
        tracing::warn!(upstream = %name, "mcp upstream not connected yet; retrying in the background");
    }
    let demo_logins = demo_users(&sts).await?;
    // Keyless receives from its own transmitter too: a push stream to our
    // own `/ssf/push`, created once.
    signals::subscribe_self(&transmitter, &receiver, &public_url).await?;

    let abs_socket = std::fs::canonicalize(&workload_socket).unwrap_or(workload_socket.clone());
    println!("Keyless is up (trust domain {trust_domain})");
    println!("  console:  {public_url}/");
    println!("  issuer:   {public_url}");
    println!("  SPIFFE JWT issuer: {public_url}/spiffe");
    println!("  SPIFFE_ENDPOINT_SOCKET=unix://{}", abs_socket.display());
    println!("  secrets (Vault API): VAULT_ADDR={public_url}");
    println!(
        "  MCP gateway: {public_url}/mcp (agents: JWT-SVID with this audience; users: X-Keyless-Subject-Token)"
    );
    println!("  secrets backend: {secrets_backend}");
    println!(
        "  agent:    {} (model: {model_name}; try \"list users\" in the console)",
        agent_svid.spiffe_id()
    );
    if let Some((_, url)) = &mtls_task {
        println!(
            "  mTLS:     {url} (client X509-SVIDs: certificate-bound tokens, agents at {url}/mcp)"
        );
    }
    println!("  admin socket: {}", admin_socket.display());
    println!("  data dir: {}", data_dir.display());
    println!(
        "  policies: {} (reloaded on change)",
        policies_dir.display()
    );
    println!(
        "  sign in at {public_url}/login with a demo user (one-time passwords, new at every start):"
    );
    for (email, password) in &demo_logins {
        println!("    {email}  {password}");
    }
    println!("ready");
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "ready");

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = http_task.await;
    if let Some((task, _)) = mtls_task {
        let _ = task.await;
    }
    let _ = admin_task.await;
    let _ = lease_worker.await;
    push_worker.abort();
    if let Some(l) = risk_listener {
        l.abort();
    }
    if let Err(e) = risk.flush_baselines().await {
        tracing::warn!(error = %e, "risk: learned baselines not written at shutdown");
    }
    sts_feed.abort();
    let _ = workload_task.await;
    policy_watch.abort();
    let _ = sts_maintenance.await;
    audit.shutdown().await;
    let _ = std::fs::remove_file(&admin_socket);
    let _ = std::fs::remove_file(&workload_socket);
    store.close().await;
    Ok(())
}

/// The demo users of DESIGN.md. Their passwords are new at every start and
/// shown only on this terminal; existing sessions end with the old password.
const DEMO_USERS: [&str; 2] = ["alice@example.com", "bob@example.com"];

async fn demo_users(sts: &Sts) -> anyhow::Result<Vec<(String, String)>> {
    let mut logins = Vec::new();
    for email in DEMO_USERS {
        let password = Sts::generate_password()?;
        if sts.find_user(email).await?.is_some() {
            sts.reset_password(email, &password).await?;
        } else {
            sts.add_user(email, &password).await?;
        }
        logins.push((email.to_owned(), password));
    }
    Ok(logins)
}

/// What `keyless up` logs unless `KEYLESS_LOG` says otherwise.
const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn,rmcp=warn";

fn init_tracing() {
    // rmcp logs every stateless request's session start and end at info
    // (three lines per tool call, each hop): the audit log is the record
    // of calls, the process log is for what goes wrong.
    let filter = tracing_subscriber::EnvFilter::try_from_env(config::ENV_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var(config::ENV_LOG_FORMAT).is_ok_and(|f| f == "json");
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Creates the data dir (0755: the Workload API socket inside must be
/// reachable by every local workload) and returns its absolute path.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("cannot create data dir `{}`", dir.display()))?;
    }
    std::fs::canonicalize(dir).with_context(|| format!("cannot resolve `{}`", dir.display()))
}

/// The database holds no plaintext secret, but nobody else needs to read it.
fn restrict_db_files(dir: &Path) {
    for name in ["keyless.db", "keyless.db-wal", "keyless.db-shm"] {
        let path = dir.join(name);
        if path.exists()
            && let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot restrict database file");
        }
    }
}

async fn wait_for_socket(path: &Path) -> anyhow::Result<()> {
    for _ in 0..500 {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    anyhow::bail!("the Workload API did not start on `{}`", path.display())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
}
