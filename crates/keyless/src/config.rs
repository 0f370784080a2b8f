//! One typed configuration: TOML file → serde → `KEYLESS_*` environment
//! overrides → command-line flags. Environment names are constants here; the
//! process never writes its own environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::cli::UpArgs;

pub const ENV_DATA_DIR: &str = "KEYLESS_DATA_DIR";
pub const ENV_LISTEN: &str = "KEYLESS_LISTEN";
pub const ENV_TRUST_DOMAIN: &str = "KEYLESS_TRUST_DOMAIN";
pub const ENV_DATABASE_URL: &str = "KEYLESS_DATABASE_URL";
pub const ENV_PUBLIC_URL: &str = "KEYLESS_PUBLIC_URL";
pub const ENV_CONFIG: &str = "KEYLESS_CONFIG";
pub const ENV_LOG: &str = "KEYLESS_LOG";
pub const ENV_LOG_FORMAT: &str = "KEYLESS_LOG_FORMAT";
pub const ENV_CA_TTL: &str = "KEYLESS_CA_TTL";
pub const ENV_JWT_KEY_TTL: &str = "KEYLESS_JWT_KEY_TTL";
pub const ENV_POLICIES_DIR: &str = "KEYLESS_POLICIES_DIR";
pub const ENV_MTLS_LISTEN: &str = "KEYLESS_MTLS_LISTEN";
pub const ENV_SECRETS_BACKEND: &str = "KEYLESS_SECRETS_BACKEND";
pub const ENV_OPENBAO_ADDR: &str = "KEYLESS_OPENBAO_ADDR";
pub const ENV_OPENBAO_ROLE: &str = "KEYLESS_OPENBAO_ROLE";
pub const ENV_OPENBAO_AUDIENCE: &str = "KEYLESS_OPENBAO_AUDIENCE";
pub const ENV_GATEWAY_CONFIG: &str = "KEYLESS_GATEWAY_CONFIG";
pub const ENV_RISK_CONFIG: &str = "KEYLESS_RISK_CONFIG";
pub const ENV_MODEL: &str = "KEYLESS_MODEL";
pub const ENV_MODEL_NAME: &str = "KEYLESS_MODEL_NAME";
pub const ENV_MODEL_URL: &str = "KEYLESS_MODEL_URL";

pub const DEFAULT_DATA_DIR: &str = ".keyless";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8180";
pub const DEFAULT_TRUST_DOMAIN: &str = "keyless.local";

/// The file format. Every field is optional; absent fields take defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub trust_domain: Option<String>,
    pub database_url: Option<String>,
    /// Address of the optional mTLS listener (`tls.rs`).
    pub mtls_listen: Option<String>,
    #[serde(default)]
    pub identity: IdentityFileConfig,
    /// Directory of `*.cedar` policies (+ `schema.cedarschema`), watched
    /// and reloaded on change; default `<data_dir>/policies`.
    pub policies_dir: Option<PathBuf>,
    #[serde(default)]
    pub sts: StsFileConfig,
    #[serde(default)]
    pub secrets: SecretsFileConfig,
    /// The MCP gateway's upstreams and tool catalog (TOML, see
    /// `keyless_gateway::config`); default: the demo tool servers.
    pub gateway_config: Option<PathBuf>,
    /// The risk ladder's thresholds, decay and detector weights (TOML, see
    /// `keyless_signals::risk::RiskConfig`); default: built in.
    pub risk_config: Option<PathBuf>,
    #[serde(default)]
    pub agent: AgentFileConfig,
}

/// `[agent]`: the agent host's model (its API key lives in the secrets
/// broker, never here).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFileConfig {
    /// `scripted` (default), `anthropic` or `openai`.
    pub model: Option<String>,
    pub model_name: Option<String>,
    pub model_url: Option<String>,
}

/// `[secrets]`: the secrets broker's backend.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsFileConfig {
    /// `local` (default) or `openbao`.
    pub backend: Option<String>,
    pub openbao_addr: Option<String>,
    pub openbao_role: Option<String>,
    pub openbao_audience: Option<String>,
}

/// The OpenBao backend's settings, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBaoSettings {
    pub addr: String,
    pub role: String,
    /// `None`: the default audience (`openbao`).
    pub audience: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StsFileConfig {
    /// How long an STS signing key signs before it is rotated, e.g. "24h".
    pub signing_key_lifetime: Option<String>,
    /// How often rotation is checked and expired rows are purged, e.g. "1m".
    pub maintenance_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFileConfig {
    /// Lifetime of a CA generation, e.g. "24h".
    pub ca_ttl: Option<String>,
    /// Lifetime of a JWT signing key, e.g. "24h".
    pub jwt_key_ttl: Option<String>,
    pub default_x509_ttl: Option<String>,
    pub default_jwt_ttl: Option<String>,
}

/// The resolved configuration of `keyless up`.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: String,
    pub public_url: Option<String>,
    pub trust_domain: Option<String>,
    pub database_url: Option<String>,
    pub ca_ttl: Option<Duration>,
    pub jwt_key_ttl: Option<Duration>,
    pub default_x509_ttl: Option<Duration>,
    pub default_jwt_ttl: Option<Duration>,
    /// `None`: `<data_dir>/policies`.
    pub policies_dir: Option<PathBuf>,
    pub sts_signing_key_lifetime: Option<Duration>,
    pub sts_maintenance_interval: Option<Duration>,
    /// Address of the optional mTLS listener.
    pub mtls_listen: Option<String>,
    /// `local` (or `None`) or `openbao`; checked by [`Config::openbao`].
    pub secrets_backend: Option<String>,
    pub openbao_addr: Option<String>,
    pub openbao_role: Option<String>,
    pub openbao_audience: Option<String>,
    /// `None`: the demo catalog.
    pub gateway_config: Option<PathBuf>,
    /// `None`: the built-in ladder settings.
    pub risk_config: Option<PathBuf>,
    /// The agent host's model; checked by [`Config::model`].
    pub model: Option<String>,
    pub model_name: Option<String>,
    pub model_url: Option<String>,
}

/// Which model the agent host runs, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSettings {
    /// The offline scripted model (the default).
    Scripted,
    /// A provider: `anthropic` or `openai`, with its model name and base URL.
    Provider {
        provider: String,
        name: String,
        url: Option<String>,
    },
}

/// Parses a duration such as `10s`, `5m`, `1h`; a clear error otherwise.
pub fn parse_duration(what: &str, s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid {what} `{s}`: {e} (use e.g. 10s, 5m, 1h)"))?;
    if d.is_zero() {
        return Err(format!("invalid {what} `{s}`: must be greater than zero"));
    }
    Ok(d)
}

impl Config {
    pub fn resolve(args: &UpArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let env_duration = |name: &str| -> anyhow::Result<Option<Duration>> {
            match std::env::var(name) {
                Ok(v) => Ok(Some(parse_duration(name, &v).map_err(anyhow::Error::msg)?)),
                Err(_) => Ok(None),
            }
        };
        let file_duration = |what: &str, v: &Option<String>| -> anyhow::Result<Option<Duration>> {
            v.as_deref()
                .map(|s| parse_duration(what, s).map_err(anyhow::Error::msg))
                .transpose()
        };
        // Flags (and their KEYLESS_* env, handled by clap) win over the file,
        // but clap fills defaults, so the file wins over a defaulted flag.
        let data_dir = if args.data_dir.data_dir == Path::new(DEFAULT_DATA_DIR) {
            file.data_dir
                .unwrap_or_else(|| args.data_dir.data_dir.clone())
        } else {
            args.data_dir.data_dir.clone()
        };
        let listen = if args.listen == DEFAULT_LISTEN {
            file.listen.unwrap_or_else(|| args.listen.clone())
        } else {
            args.listen.clone()
        };
        Ok(Self {
            data_dir,
            listen,
            public_url: args.public_url.clone().or(file.public_url),
            trust_domain: args.trust_domain.clone().or(file.trust_domain),
            database_url: args.database_url.clone().or(file.database_url),
            ca_ttl: env_duration(ENV_CA_TTL)?
                .or(file_duration("identity.ca_ttl", &file.identity.ca_ttl)?),
            jwt_key_ttl: env_duration(ENV_JWT_KEY_TTL)?.or(file_duration(
                "identity.jwt_key_ttl",
                &file.identity.jwt_key_ttl,
            )?),
            default_x509_ttl: file_duration(
                "identity.default_x509_ttl",
                &file.identity.default_x509_ttl,
            )?,
            default_jwt_ttl: file_duration(
                "identity.default_jwt_ttl",
                &file.identity.default_jwt_ttl,
            )?,
            policies_dir: args.policies_dir.clone().or(file.policies_dir),
            sts_signing_key_lifetime: file_duration(
                "sts.signing_key_lifetime",
                &file.sts.signing_key_lifetime,
            )?,
            sts_maintenance_interval: file_duration(
                "sts.maintenance_interval",
                &file.sts.maintenance_interval,
            )?,
            mtls_listen: args.mtls_listen.clone().or(file.mtls_listen),
            secrets_backend: args.secrets_backend.clone().or(file.secrets.backend),
            openbao_addr: args.openbao_addr.clone().or(file.secrets.openbao_addr),
            openbao_role: args.openbao_role.clone().or(file.secrets.openbao_role),
            openbao_audience: args
                .openbao_audience
                .clone()
                .or(file.secrets.openbao_audience),
            gateway_config: args.gateway_config.clone().or(file.gateway_config),
            risk_config: args.risk_config.clone().or(file.risk_config),
            model: args.model.clone().or(file.agent.model),
            model_name: args.model_name.clone().or(file.agent.model_name),
            model_url: args.model_url.clone().or(file.agent.model_url),
        })
    }

    /// The agent host's model; a usage error for an unknown provider, a
    /// base URL that is not http(s), or provider settings without a provider.
    pub fn model(&self) -> Result<ModelSettings, String> {
        let given = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let url = given(&self.model_url);
        if let Some(u) = &url {
            let parsed =
                url::Url::parse(u).map_err(|e| format!("invalid --model-url `{u}`: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("invalid --model-url `{u}`: must be http or https"));
            }
        }
        match given(&self.model).as_deref() {
            None | Some("scripted") => {
                if url.is_some() || given(&self.model_name).is_some() {
                    return Err(
                        "--model-name and --model-url need --model anthropic or --model openai"
                            .into(),
                    );
                }
                Ok(ModelSettings::Scripted)
            }
            Some(p @ ("anthropic" | "openai")) => Ok(ModelSettings::Provider {
                provider: p.to_owned(),
                name: given(&self.model_name).unwrap_or_else(|| {
                    if p == "anthropic" {
                        keyless_agent::anthropic::AnthropicConfig::default().model
                    } else {
                        keyless_agent::openai::OpenAiConfig::default().model
                    }
                }),
                url,
            }),
            Some(other) => Err(format!(
                "unknown --model `{other}`: use scripted, anthropic or openai"
            )),
        }
    }

    /// The OpenBao settings when the secrets backend is `openbao`, `None`
    /// for `local`; a usage error for an unknown backend, a missing address
    /// or role, or OpenBao settings without the OpenBao backend.
    pub fn openbao(&self) -> Result<Option<OpenBaoSettings>, String> {
        fn given(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|s| !s.is_empty())
        }
        match self.secrets_backend.as_deref().map(str::trim) {
            None | Some("local") => {
                if given(&self.openbao_addr).is_some()
                    || given(&self.openbao_role).is_some()
                    || given(&self.openbao_audience).is_some()
                {
                    return Err(
                        "--openbao-addr, --openbao-role and --openbao-audience need --secrets-backend openbao"
                            .into(),
                    );
                }
                Ok(None)
            }
            Some("openbao") => {
                let addr = given(&self.openbao_addr)
                    .ok_or("--secrets-backend openbao needs --openbao-addr URL")?;
                let role = given(&self.openbao_role)
                    .ok_or("--secrets-backend openbao needs --openbao-role ROLE")?;
                if self.openbao_audience.is_some() && given(&self.openbao_audience).is_none() {
                    return Err("--openbao-audience must not be empty".into());
                }
                Ok(Some(OpenBaoSettings {
                    addr: addr.to_owned(),
                    role: role.to_owned(),
                    audience: given(&self.openbao_audience).map(str::to_owned),
                }))
            }
            Some(other) => Err(format!(
                "unknown secrets backend `{other}` (use `local` or `openbao`)"
            )),
        }
    }
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file `{}`", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file `{}`", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_or_say_why() {
        assert_eq!(parse_duration("ttl", "10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("ttl", "1h"), Ok(Duration::from_secs(3600)));
        let err = parse_duration("x509 ttl", "ten").unwrap_err();
        assert!(err.starts_with("invalid x509 ttl `ten`"), "{err}");
        assert!(parse_duration("ttl", "0s").is_err());
        assert!(parse_duration("ttl", "-5s").is_err());
    }

    #[test]
    fn mtls_listen_is_a_config_key() {
        let c: FileConfig = toml::from_str("mtls_listen = \"127.0.0.1:8443\"").unwrap();
        assert_eq!(c.mtls_listen.as_deref(), Some("127.0.0.1:8443"));
        assert_eq!(ENV_MTLS_LISTEN, "KEYLESS_MTLS_LISTEN");
    }

    fn with_backend(backend: Option<&str>, addr: Option<&str>, role: Option<&str>) -> Config {
        let file: FileConfig = toml::from_str("").unwrap();
        assert!(file.secrets.backend.is_none());
        Config {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: DEFAULT_LISTEN.into(),
            public_url: None,
            trust_domain: None,
            database_url: None,
            ca_ttl: None,
            jwt_key_ttl: None,
            default_x509_ttl: None,
            default_jwt_ttl: None,
            policies_dir: None,
            sts_signing_key_lifetime: None,
            sts_maintenance_interval: None,
            mtls_listen: None,
            secrets_backend: backend.map(Into::into),
            openbao_addr: addr.map(Into::into),
            openbao_role: role.map(Into::into),
            openbao_audience: None,
            gateway_config: None,
            risk_config: None,
            model: None,
            model_name: None,
            model_url: None,
        }
    }

    #[test]
    fn secrets_backend_combinations_are_checked() {
        assert_eq!(with_backend(None, None, None).openbao(), Ok(None));
        assert_eq!(with_backend(Some("local"), None, None).openbao(), Ok(None));
        let ok = with_backend(
            Some("openbao"),
            Some("http://127.0.0.1:8200"),
            Some("keyless"),
        )
        .openbao()
        .unwrap()
        .unwrap();
        assert_eq!(ok.addr, "http://127.0.0.1:8200");
        assert_eq!(ok.role, "keyless");
        assert_eq!(ok.audience, None);
        let err = with_backend(Some("openbao"), None, Some("r"))
            .openbao()
            .unwrap_err();
        assert!(err.contains("needs --openbao-addr"), "{err}");
        let err = with_backend(Some("openbao"), Some("http://x:1"), Some(" "))
            .openbao()
            .unwrap_err();
        assert!(err.contains("needs --openbao-role"), "{err}");
        let err = with_backend(None, Some("http://x:1"), None)
            .openbao()
            .unwrap_err();
        assert!(err.contains("need --secrets-backend openbao"), "{err}");
        let err = with_backend(Some("vault"), None, None)
            .openbao()
            .unwrap_err();
        assert!(err.contains("unknown secrets backend `vault`"), "{err}");
        let file: FileConfig = toml::from_str(
            "[secrets]\nbackend = \"openbao\"\nopenbao_addr = \"http://127.0.0.1:8200\"\nopenbao_role = \"k\"",
        )
        .unwrap();
        assert_eq!(file.secrets.backend.as_deref(), Some("openbao"));
        assert_eq!(file.secrets.openbao_role.as_deref(), Some("k"));
        assert!(toml::from_str::<FileConfig>("[secrets]\nbackend_x = 1").is_err());
        assert_eq!(ENV_SECRETS_BACKEND, "KEYLESS_SECRETS_BACKEND");
        assert_eq!(ENV_OPENBAO_ADDR, "KEYLESS_OPENBAO_ADDR");
        assert_eq!(ENV_OPENBAO_ROLE, "KEYLESS_OPENBAO_ROLE");
    }

    #[test]
    fn unknown_config_fields_are_refused() {
        let err = toml::from_str::<FileConfig>("listne = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let ok: FileConfig = toml::from_str("[identity]\nca_ttl = \"2h\"").unwrap();
        assert_eq!(ok.identity.ca_ttl.as_deref(), Some("2h"));
    }

    #[test]
    fn policies_dir_and_sts_maintenance_settings_parse() {
        let ok: FileConfig = toml::from_str(
            "policies_dir = \"/etc/keyless/policies\"\n[sts]\nsigning_key_lifetime = \"12h\"\nmaintenance_interval = \"30s\"",
        )
        .unwrap();
        assert_eq!(
            ok.policies_dir.as_deref(),
            Some(Path::new("/etc/keyless/policies"))
        );
        assert_eq!(ok.sts.signing_key_lifetime.as_deref(), Some("12h"));
        assert_eq!(ok.sts.maintenance_interval.as_deref(), Some("30s"));
        let err = toml::from_str::<FileConfig>("[sts]\nkey_lifetime = \"1h\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
