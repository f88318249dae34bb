//! Reading the layers into [`Settings`]. The sources are a value so tests can
//! load from a map instead of the process environment.

use std::collections::HashMap;
use std::path::PathBuf;

use config::{Config, Environment, File, FileFormat};
use thiserror::Error;

use super::Settings;

/// The prefix of Pantheon's environment variables.
const ENV_PREFIX: &str = "PANTHEON";

/// A setting that cannot be used; the start stops with this one line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettingsError {
    /// A key holds a value Pantheon refuses.
    #[error("configuration error: {key}: {message}")]
    Invalid {
        /// The dotted key (`auth.jwt_secret`).
        key: String,
        /// What is wrong, for a human.
        message: String,
    },
    /// A layer could not be read or does not fit the settings' shape.
    #[error("configuration error: {0}")]
    Unreadable(String),
}

impl SettingsError {
    pub(super) fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self::Invalid { key: key.to_owned(), message: message.into() }
    }
}

/// Where settings come from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// An optional TOML file (`pantheon.toml`).
    pub toml_file: Option<PathBuf>,
    /// An optional dotenv file (`.env`), below the environment.
    pub dotenv_file: Option<PathBuf>,
    /// The environment variables.
    pub env: HashMap<String, String>,
}

impl Sources {
    /// `pantheon.toml` and `.env` in the working directory, and the process
    /// environment.
    pub fn from_process() -> Self {
        Self {
            toml_file: Some(PathBuf::from("pantheon.toml")),
            dotenv_file: Some(PathBuf::from(".env")),
            env: std::env::vars().collect(),
        }
    }

    /// Only the given variables: no files.
    pub fn from_env(env: impl IntoIterator<Item = (String, String)>) -> Self {
        Self { toml_file: None, dotenv_file: None, env: env.into_iter().collect() }
    }

    /// Merges the layers and validates the result.
    ///
    /// # Errors
    /// [`SettingsError`] for an unreadable layer or a bad value.
    pub fn load(&self) -> Result<Settings, SettingsError> {
        let mut builder = Config::builder();
        if let Some(path) = self.toml_file.as_ref().filter(|p| p.exists()) {
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
        }
        let settings: Settings = builder
            .add_source(
                Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .ignore_empty(true)
                    .try_parsing(true)
                    // `PANTHEON__REDIS__CLUSTER_URLS=redis://a:6379,redis://b:6379`,
                    // `PANTHEON__FILES__ALLOWED_TYPES=text/plain,image/png`;
                    // every other value stays one string, commas and all.
                    .list_separator(",")
                    .with_list_parse_key("redis.cluster_urls")
                    .with_list_parse_key("files.allowed_types")
                    .source(Some(self.environment()?.into_iter().collect())),
            )
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|e| SettingsError::Unreadable(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// The variables in force: `.env` below the real environment, and the
    /// plain `DATABASE_URL` standing in for `PANTHEON__DATABASE__URL` when
    /// that one is not given.
    fn environment(&self) -> Result<HashMap<String, String>, SettingsError> {
        let mut env = HashMap::new();
        if let Some(path) = self.dotenv_file.as_ref().filter(|p| p.exists()) {
            let entries = dotenvy::from_path_iter(path)
                .map_err(|e| SettingsError::Unreadable(format!("{}: {e}", path.display())))?;
            for entry in entries {
                let (key, value) = entry
                    .map_err(|e| SettingsError::Unreadable(format!("{}: {e}", path.display())))?;
                env.insert(key, value);
            }
        }
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let pantheon_url = format!("{ENV_PREFIX}__DATABASE__URL");
        let plain = env.get("DATABASE_URL").filter(|v| !v.is_empty()).cloned();
        if let Some(url) = plain.filter(|_| env.get(&pantheon_url).is_none_or(|v| v.is_empty())) {
            env.insert(pantheon_url, url);
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Fallback, FileStoreKind, ProviderKind};

    fn load(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Sources::from_env(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))).load()
    }

    #[test]
    fn defaults_load_and_match_the_spec() {
        let s = load(&[]).unwrap_or_default();
        assert_eq!(s, Settings::default());
        assert_eq!(s.server.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.database.url, "sqlite://pantheon.db?mode=rwc");
        assert_eq!((s.rate_limit.per_minute, s.rate_limit.per_hour), (20, 300));
        assert_eq!(s.rate_limit.fallback, Fallback::Allow);
        assert_eq!(s.provider.kind, ProviderKind::Builtin);
    }

    #[test]
    fn environment_overrides_with_double_underscores() {
        let s = load(&[
            ("PANTHEON__RATE_LIMIT__PER_MINUTE", "5"),
            ("PANTHEON__RATE_LIMIT__TIERS__PRO__PER_MINUTE", "50"),
            ("PANTHEON__RATE_LIMIT__TIERS__PRO__PER_HOUR", "900"),
        ]);
        let s = s.map_err(|e| e.to_string());
        assert_eq!(s.as_ref().map(|s| s.rate_limit.per_minute), Ok(5));
        assert_eq!(s.map(|s| s.rate_limit.tiers.get("pro").map(|t| t.per_hour)), Ok(Some(900)));
    }

    #[test]
    fn database_url_precedence() {
        let plain = load(&[("DATABASE_URL", "postgres://a@localhost/plain")]);
        assert_eq!(plain.map(|s| s.database.url), Ok("postgres://a@localhost/plain".into()));
        let both = load(&[
            ("DATABASE_URL", "postgres://a@localhost/plain"),
            ("PANTHEON__DATABASE__URL", "postgres://a@localhost/prefixed"),
        ]);
        assert_eq!(both.map(|s| s.database.url), Ok("postgres://a@localhost/prefixed".into()));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("PANTHEON__AUTH__JWT_SECRET", "short", "auth.jwt_secret"),
            ("PANTHEON__PROVIDER__KIND", "sorcery", "provider.kind"),
            ("PANTHEON__DATABASE__URL", "not a url", "database.url"),
            ("PANTHEON__REDIS__URL", "http://x", "redis.url"),
            ("PANTHEON__RATE_LIMIT__PER_MINUTE", "0", "rate_limit.per_minute"),
            ("PANTHEON__SERVER__ADDR", "nowhere", "server.addr"),
            ("PANTHEON__SERVER__METRICS_ADDR", "nowhere", "server.metrics_addr"),
            ("PANTHEON__AUTH__LEEWAY_SECS", "3601", "auth.leeway_secs"),
        ];
        for (var, value, key) in cases {
            let err = load(&[(var, value)]).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(key), "{var}={value}: {err:?} should name {key}");
        }
    }

    #[test]
    fn cluster_urls_come_comma_separated_from_the_environment() {
        let s = load(&[(
            "PANTHEON__REDIS__CLUSTER_URLS",
            "redis://10.0.0.1:6379,redis://10.0.0.2:6379",
        )]);
        assert_eq!(
            s.map(|s| s.redis.cluster_urls),
            Ok(vec!["redis://10.0.0.1:6379".to_owned(), "redis://10.0.0.2:6379".to_owned()])
        );
        let one = load(&[("PANTHEON__REDIS__CLUSTER_URLS", "redis://10.0.0.1:6379")]);
        assert_eq!(one.map(|s| s.redis.cluster_urls.len()), Ok(1));
        // Other values keep their commas.
        let title = load(&[("PANTHEON__PROVIDER__OPENAI__SYSTEM_PROMPT", "Be brief, be kind.")]);
        assert!(title.is_ok(), "{title:?}");
    }

    #[test]
    fn a_single_redis_and_a_cluster_are_exclusive_and_the_error_names_both() {
        let err = load(&[
            ("PANTHEON__REDIS__URL", "redis://127.0.0.1:6379"),
            ("PANTHEON__REDIS__CLUSTER_URLS", "redis://10.0.0.1:6379"),
        ])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("redis.url") && err.contains("redis.cluster_urls"), "{err:?}");
        let bad = load(&[("PANTHEON__REDIS__CLUSTER_URLS", "redis://10.0.0.1:6379,http://x")]);
        let bad = bad.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(bad.contains("redis.cluster_urls"), "{bad:?}");
    }

    #[test]
    fn the_metrics_listener_defaults_to_loopback_9464_and_off_disables_it() {
        let addr = |vars: &[(&str, &str)]| load(vars).map(|s| s.server.metrics_addr);
        assert_eq!(
            addr(&[]),
            Ok(Some("127.0.0.1:9464".parse().unwrap_or_else(|_| unreachable!())))
        );
        assert_eq!(addr(&[("PANTHEON__SERVER__METRICS_ADDR", "off")]), Ok(None));
        let same = [
            ("PANTHEON__SERVER__ADDR", "127.0.0.1:9000"),
            ("PANTHEON__SERVER__METRICS_ADDR", "127.0.0.1:9000"),
        ];
        let refused = load(&same).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("server.metrics_addr"), "{refused}");
        assert_eq!(
            addr(&[("PANTHEON__SERVER__METRICS_ADDR", "0.0.0.0:9100")]),
            Ok(Some("0.0.0.0:9100".parse().unwrap_or_else(|_| unreachable!())))
        );
    }

    #[test]
    fn files_settings_come_from_the_environment() {
        let s = load(&[
            ("PANTHEON__FILES__MAX_FILE_BYTES", "1048576"),
            ("PANTHEON__FILES__ALLOWED_TYPES", "text/plain,image/png"),
            ("PANTHEON__FILES__STORE", "s3"),
            ("PANTHEON__FILES__S3__BUCKET", "pantheon"),
            ("PANTHEON__FILES__S3__PATH_STYLE", "true"),
            ("PANTHEON__RATE_LIMIT__UPLOADS_PER_MINUTE", "3"),
        ])
        .map_err(|e| e.to_string());
        let files = s.as_ref().map(|s| &s.files);
        assert_eq!(files.map(|f| f.max_file_bytes), Ok(1_048_576));
        assert_eq!(files.map(|f| f.allowed_types.join(" ")), Ok("text/plain image/png".into()));
        assert_eq!(files.map(|f| (f.store, f.s3.path_style)), Ok((FileStoreKind::S3, true)));
        assert_eq!(files.map(|f| f.s3.bucket.as_deref()), Ok(Some("pantheon")));
        assert_eq!(s.as_ref().map(|s| s.rate_limit.uploads_per_minute), Ok(3));
        let defaults = Settings::default();
        assert_eq!(defaults.files.max_file_bytes, 26_214_400);
        assert_eq!(defaults.files.quota_bytes, 1 << 30);
        assert_eq!(defaults.rate_limit.uploads_per_minute, 10);
    }

    #[test]
    fn bad_files_settings_name_their_key() {
        let cases: [&[(&str, &str)]; 6] = [
            &[("PANTHEON__FILES__MAX_FILES", "0")],
            &[("PANTHEON__FILES__ORPHAN_GRACE_SECS", "600")],
            &[("PANTHEON__FILES__MAX_FILE_BYTES", "2147483648")],
            &[("PANTHEON__FILES__ALLOWED_TYPES", "text/plain,Image/PNG")],
            &[("PANTHEON__FILES__STORE", "s3")],
            &[
                ("PANTHEON__FILES__STORE", "s3"),
                ("PANTHEON__FILES__S3__BUCKET", "b"),
                ("PANTHEON__FILES__S3__ENDPOINT", "http://127.0.0.1:9000"),
            ],
        ];
        let keys = [
            "files.max_files",
            "files.orphan_grace_secs",
            "files.max_file_bytes",
            "files.allowed_types",
            "files.s3.bucket",
            "files.s3.endpoint",
        ];
        for (vars, key) in cases.iter().zip(keys) {
            let err = load(vars).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(key), "{vars:?}: {err:?} should name {key}");
        }
    }

    #[test]
    fn production_refuses_the_development_secret() {
        let err = load(&[("PANTHEON__APP__ENV", "production")]).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("auth.jwt_secret"));
    }
}
