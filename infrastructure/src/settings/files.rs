//! The `files.*` section: where uploaded files' bytes are kept, and the
//! limits on what a user may store. Apart from the other sections because
//! the store has settings of its own (`files.s3.*`) and a secret.

use std::path::{Path, PathBuf};

use pantheon_domain::files::kind::DEFAULT_ALLOWED_TYPES;
use serde::Deserialize;

use super::load::SettingsError;
use super::sections::DatabaseSettings;

/// `files.store`: where the bytes of files live.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileStoreKind {
    /// A directory (`files.local_dir`): one machine, or a shared volume.
    #[default]
    Local,
    /// An S3 bucket, or any S3-compatible store (`files.s3.*`).
    S3,
}

/// `files.s3.*`: only read (and validated) when `files.store = s3`.
/// Credentials come from the environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, a web identity, the
/// instance's role), unless both keys below are set.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// `files.s3.bucket`: required.
    pub bucket: Option<String>,
    /// `files.s3.endpoint`: an S3-compatible server (`http(s)://host:port`);
    /// unset, AWS's own for the region.
    pub endpoint: Option<String>,
    /// `files.s3.region`
    pub region: String,
    /// `files.s3.path_style`: address the bucket as `endpoint/bucket`
    /// rather than `bucket.endpoint` (most self-hosted servers need this).
    pub path_style: bool,
    /// `files.s3.allow_http`: allow a plain `http://` endpoint.
    pub allow_http: bool,
    /// `files.s3.access_key_id`: with `secret_access_key`, instead of the
    /// environment's credentials.
    pub access_key_id: Option<String>,
    /// `files.s3.secret_access_key`: never logged.
    pub secret_access_key: Option<String>,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            bucket: None,
            endpoint: None,
            region: "us-east-1".into(),
            path_style: false,
            allow_http: false,
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

/// Hand-written so the secret never reaches a log line.
impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `files.*`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FilesSettings {
    /// `files.store`
    pub store: FileStoreKind,
    /// `files.local_dir`: unset, `pantheon-files` beside the SQLite
    /// database file, else `./pantheon-files`; see
    /// [`FilesSettings::local_dir`].
    pub local_dir: Option<PathBuf>,
    /// `files.s3.*`
    pub s3: S3Settings,
    /// `files.max_file_bytes`: the largest file one upload may store.
    pub max_file_bytes: u64,
    /// `files.quota_bytes`: the bytes one user may store (and reserve).
    pub quota_bytes: u64,
    /// `files.max_files`: the files one user may have, uploads included.
    pub max_files: u64,
    /// `files.allowed_types`: the types an upload may be sniffed as (from
    /// the environment, comma-separated).
    pub allowed_types: Vec<String>,
    /// `files.max_upload_secs`: the longest one upload may take.
    pub max_upload_secs: u64,
    /// `files.orphan_grace_secs`: how long an upload or a deletion may stay
    /// unfinished before the sweep takes it for abandoned (its instance
    /// died); longer than any upload may take.
    pub orphan_grace_secs: u64,
    /// `files.sweep_interval_secs`: how often the sweep looks for them.
    pub sweep_interval_secs: u64,
    /// `files.max_read_bytes`: the most one `file_read` call returns to a
    /// model.
    pub max_read_bytes: u64,
}

impl Default for FilesSettings {
    fn default() -> Self {
        Self {
            store: FileStoreKind::Local,
            local_dir: None,
            s3: S3Settings::default(),
            max_file_bytes: 25 * 1024 * 1024,
            quota_bytes: 1024 * 1024 * 1024,
            max_files: 1_000,
            allowed_types: DEFAULT_ALLOWED_TYPES.iter().map(|t| (*t).to_owned()).collect(),
            max_upload_secs: 600,
            orphan_grace_secs: 3_600,
            sweep_interval_secs: 60,
            max_read_bytes: 64 * 1024,
        }
    }
}

/// The directory's name when `files.local_dir` is unset.
const DEFAULT_LOCAL_DIR: &str = "pantheon-files";

impl FilesSettings {
    /// The directory of `files.store = local`: `files.local_dir`, else
    /// `pantheon-files` beside the SQLite database file (so a deployment's
    /// data stays in one place), else in the working directory.
    pub fn local_dir(&self, database: &DatabaseSettings) -> PathBuf {
        if let Some(dir) = &self.local_dir {
            return dir.clone();
        }
        sqlite_file(&database.url)
            .and_then(|file| file.parent().map(|dir| dir.join(DEFAULT_LOCAL_DIR)))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LOCAL_DIR))
    }

    /// Checks what the types cannot express; the first bad key is named.
    pub(super) fn check(&self) -> Result<(), SettingsError> {
        let positive = [
            ("files.max_file_bytes", self.max_file_bytes),
            ("files.quota_bytes", self.quota_bytes),
            ("files.max_files", self.max_files),
            ("files.max_upload_secs", self.max_upload_secs),
            ("files.orphan_grace_secs", self.orphan_grace_secs),
            ("files.sweep_interval_secs", self.sweep_interval_secs),
            ("files.max_read_bytes", self.max_read_bytes),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(SettingsError::invalid(key, "must be at least 1"));
            }
        }
        if self.max_file_bytes > self.quota_bytes {
            return Err(SettingsError::invalid(
                "files.max_file_bytes",
                "must be at most files.quota_bytes: a larger file could never be stored",
            ));
        }
        if self.orphan_grace_secs <= self.max_upload_secs {
            return Err(SettingsError::invalid(
                "files.orphan_grace_secs",
                "must be more than files.max_upload_secs, or the sweep could take a live \
                 upload for abandoned",
            ));
        }
        if self.allowed_types.is_empty() {
            return Err(SettingsError::invalid("files.allowed_types", "must name a type"));
        }
        if let Some(bad) = self.allowed_types.iter().find(|t| !is_media_type(t)) {
            return Err(SettingsError::invalid(
                "files.allowed_types",
                format!("{bad:?} is not a lowercase type/subtype"),
            ));
        }
        if self.store == FileStoreKind::S3 {
            self.check_s3()?;
        }
        Ok(())
    }

    fn check_s3(&self) -> Result<(), SettingsError> {
        let s3 = &self.s3;
        if s3.bucket.as_deref().is_none_or(str::is_empty) {
            return Err(SettingsError::invalid(
                "files.s3.bucket",
                "is required with files.store = s3",
            ));
        }
        if let Some(endpoint) = &s3.endpoint {
            if endpoint.starts_with("http://") && !s3.allow_http {
                return Err(SettingsError::invalid(
                    "files.s3.endpoint",
                    "is plain http: set files.s3.allow_http = true to allow it",
                ));
            }
            if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                return Err(SettingsError::invalid(
                    "files.s3.endpoint",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
            return Err(SettingsError::invalid(
                "files.s3.access_key_id",
                "must be set together with files.s3.secret_access_key",
            ));
        }
        Ok(())
    }
}

/// `type/subtype` in lowercase, as sniffing names types.
fn is_media_type(value: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
    };
    value.split_once('/').is_some_and(|(kind, sub)| token(kind) && token(sub))
}

/// The file of a `sqlite:` URL, when it names one (not `:memory:`).
fn sqlite_file(url: &str) -> Option<&Path> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| Path::new(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(url: &str) -> DatabaseSettings {
        DatabaseSettings { url: url.to_owned(), ..DatabaseSettings::default() }
    }

    #[test]
    fn the_local_dir_defaults_beside_the_sqlite_file() {
        let files = FilesSettings::default();
        let beside = |url: &str| files.local_dir(&database(url));
        assert_eq!(beside("sqlite://pantheon.db?mode=rwc"), PathBuf::from("pantheon-files"));
        assert_eq!(
            beside("sqlite:///var/lib/pantheon/p.db?mode=rwc"),
            PathBuf::from("/var/lib/pantheon/pantheon-files")
        );
        assert_eq!(beside("sqlite:data/p.db"), PathBuf::from("data/pantheon-files"));
        assert_eq!(beside("sqlite::memory:"), PathBuf::from("pantheon-files"));
        assert_eq!(beside("postgres://u@h/db"), PathBuf::from("pantheon-files"));
        let set = FilesSettings { local_dir: Some("/srv/files".into()), ..files.clone() };
        assert_eq!(set.local_dir(&database("sqlite://x.db")), PathBuf::from("/srv/files"));
    }

    #[test]
    fn media_types() {
        for ok in ["text/plain", "application/vnd.ms-excel", "image/svg+xml"] {
            assert!(is_media_type(ok), "{ok}");
        }
        for bad in ["text", "Text/Plain", "text/", "/plain", "text/plain; charset=utf-8", ""] {
            assert!(!is_media_type(bad), "{bad}");
        }
    }

    #[test]
    fn the_secret_is_not_debug_printed() {
        let s3 = S3Settings { secret_access_key: Some("hunter2".into()), ..S3Settings::default() };
        assert!(!format!("{s3:?}").contains("hunter2"));
    }
}
