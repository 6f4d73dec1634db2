//! Service configuration: a TOML file, overridden by environment variables, overridden by
//! command-line flags (DESIGN §8). Any librdkafka property passes through (`-X key=value`,
//! or the `[kafka.properties]` table), so TLS and SASL need no code here.
//!
//! Environment variables (each overrides the file's value):
//! `SMKI_BOOTSTRAP_SERVERS`, `SMKI_TOPIC`, `SMKI_GROUP_ID`, `SMKI_DEAD_LETTER_TOPIC`,
//! `SMKI_STORE_PATH`, `SMKI_TIME_ZONE`, `SMKI_BATCH_MAX_RECORDS`, `SMKI_BATCH_MAX_MS`,
//! `SMKI_LOG_FORMAT`, `SMKI_OUTPUT_DIR`, `SMKI_FULL_WEEKDAY`, `SMKI_GRACE_SECS`,
//! `SMKI_IDLE_SECS`, `SMKI_DEADLINE_SECS`, `SMKI_CLOSES_TOPIC`, `SMKI_HTTP_ADDRESS`,
//! `SMKI_HTTP_READY_MAX_LAG_RECORDS`, `SMKI_HTTP_STORE_CENSUS_INTERVAL_S`.
//!
//! Secret librdkafka properties need not be written into the file: each variable of
//! [`SECRET_PROPERTY_FILES`] names a file (e.g. a mounted Kubernetes Secret) whose content,
//! less one trailing newline, becomes that property: `SMKI_KAFKA_SASL_PASSWORD_FILE` sets
//! `sasl.password`, `SMKI_KAFKA_SSL_KEY_PASSWORD_FILE` sets `ssl.key.password`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use serde::Deserialize;

/// Environment variables naming a file whose content is a secret librdkafka property:
/// `(variable, property)`. They override the file's `[kafka.properties]`; `-X` overrides them.
pub const SECRET_PROPERTY_FILES: &[(&str, &str)] = &[
    ("SMKI_KAFKA_SASL_PASSWORD_FILE", "sasl.password"),
    ("SMKI_KAFKA_SSL_KEY_PASSWORD_FILE", "ssl.key.password"),
];

/// The whole configuration of the service.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Kafka connection and topics.
    pub kafka: KafkaConfig,
    /// The state store.
    pub store: StoreConfig,
    /// The ingest loop.
    pub ingest: IngestConfig,
    /// The window clock: when days close.
    pub window: WindowSettings,
    /// The published files.
    pub output: OutputConfig,
    /// Logging.
    pub log: LogConfig,
    /// The observability endpoint (`/metrics`, `/healthz`, `/readyz`).
    pub http: HttpConfig,
}

/// When days close (see [`crate::window`]); times in seconds.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WindowSettings {
    /// How far past a day's end a partition's event time must be before the day closes on it.
    pub grace_secs: u64,
    /// How long a caught-up partition must be quiet before it stops holding a day open.
    pub idle_secs: u64,
    /// How long after its end a day closes regardless (once caught up).
    pub deadline_secs: u64,
    /// Largest accepted lead of `occurred_at` over the record's Kafka timestamp.
    pub max_future_skew_secs: u64,
}

impl Default for WindowSettings {
    fn default() -> Self {
        WindowSettings {
            grace_secs: 600,
            idle_secs: 60,
            deadline_secs: 7200,
            max_future_skew_secs: 3600,
        }
    }
}

/// The published files.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Directory Parties read (served read-only over SFTP).
    pub dir: PathBuf,
    /// Day of the week whose close produces the full extract (`Mon` … `Sun`).
    pub full_weekday: String,
    /// A delta is removed once a delta this many days newer is published.
    pub delta_retention_days: u32,
    /// How many of the newest full extracts are kept.
    pub fulls_kept: u32,
    /// Compression threads; 0 = one per core. The bytes do not depend on it.
    pub gzip_threads: usize,
    /// Deflate level 0–9 (part of the bytes: changing it changes every new file).
    pub gzip_level: u32,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            dir: PathBuf::from("./smki-output"),
            full_weekday: "Sun".into(),
            delta_retention_days: 7,
            fulls_kept: 2,
            gzip_threads: 0,
            gzip_level: 6,
        }
    }
}

impl OutputConfig {
    /// The weekday of the full extract.
    pub fn full_weekday(&self) -> Result<chrono::Weekday> {
        self.full_weekday.parse::<chrono::Weekday>().map_err(|_| {
            anyhow::anyhow!(
                "output.full_weekday {:?} is not a day of the week (Mon … Sun)",
                self.full_weekday
            )
        })
    }

    /// gzip settings of the files.
    pub fn gzip(&self) -> crate::extract::gzip::GzOptions {
        let mut g = crate::extract::gzip::GzOptions {
            level: self.gzip_level,
            ..Default::default()
        };
        if self.gzip_threads > 0 {
            g.threads = self.gzip_threads;
        }
        g
    }

    /// Retention of the published files.
    pub fn retention(&self) -> crate::extract::publish::Retention {
        crate::extract::publish::Retention {
            delta_days: i64::from(self.delta_retention_days),
            fulls_kept: self.fulls_kept as usize,
        }
    }
}

impl Config {
    /// The window clock's settings.
    pub fn window_config(&self) -> Result<crate::window::WindowConfig> {
        let secs = |s: u64| (s.min(i64::MAX as u64 / 1000) as i64) * 1000;
        Ok(crate::window::WindowConfig {
            tz: crate::day::parse_time_zone(&self.ingest.time_zone)?,
            grace_ms: secs(self.window.grace_secs),
            idle_ms: secs(self.window.idle_secs),
            deadline_ms: secs(self.window.deadline_secs),
            max_future_skew_ms: secs(self.window.max_future_skew_secs),
        })
    }
}

/// Kafka connection and topics.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// The certificate-events topic.
    pub topic: String,
    /// Consumer group id; instances of one deployment share it.
    pub group_id: String,
    /// Dead-letter topic; empty means `<topic>.dlq`.
    pub dead_letter_topic: String,
    /// Close-log topic (compacted: when each day closed, for replay); empty means
    /// `<topic>.closes`.
    pub closes_topic: String,
    /// Any further librdkafka properties (e.g. `security.protocol`, `ssl.ca.location`,
    /// `sasl.mechanism`), applied to every client this service creates.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "localhost:9092".into(),
            topic: "smki.certificate-events".into(),
            group_id: "smki-extract".into(),
            dead_letter_topic: String::new(),
            closes_topic: String::new(),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The dead-letter topic, defaulted from the events topic.
    pub fn dead_letter_topic(&self) -> String {
        if self.dead_letter_topic.is_empty() {
            format!("{}.dlq", self.topic)
        } else {
            self.dead_letter_topic.clone()
        }
    }

    /// The close-log topic, defaulted from the events topic.
    pub fn closes_topic(&self) -> String {
        if self.closes_topic.is_empty() {
            format!("{}.closes", self.topic)
        } else {
            self.closes_topic.clone()
        }
    }

    /// librdkafka settings shared by every client: servers plus the pass-through properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// The state store.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of the RocksDB store.
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("./smki-store"),
        }
    }
}

/// The ingest loop.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// A batch is committed after this many records...
    pub batch_max_records: usize,
    /// ...or when its first record is this old (milliseconds), whichever comes first.
    pub batch_max_ms: u64,
    /// IANA zone whose calendar days the deltas follow.
    pub time_zone: String,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            batch_max_records: 10_000,
            batch_max_ms: 250,
            time_zone: crate::day::DEFAULT_TIME_ZONE.into(),
        }
    }
}

/// Logging.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "human".into(),
        }
    }
}

/// The observability endpoint (see [`crate::http`]).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to serve on; empty disables the endpoint and the metrics work behind it
    /// (lag polling, store census).
    pub address: String,
    /// `/readyz` answers 503 while more records than this (summed over the assigned
    /// partitions) are behind the head.
    pub ready_max_lag_records: u64,
    /// Seconds between two censuses of the store (`smki_store_certificates`): each is a
    /// scan of every certificate record.
    pub store_census_interval_s: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            address: "127.0.0.1:9464".into(),
            ready_max_lag_records: 10_000,
            store_census_interval_s: 300,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kafka: KafkaConfig::default(),
            store: StoreConfig::default(),
            ingest: IngestConfig::default(),
            window: WindowSettings::default(),
            output: OutputConfig::default(),
            log: LogConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

/// Overrides given on the command line (each `None` leaves the value alone).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--bootstrap-servers`.
    pub bootstrap_servers: Option<String>,
    /// `--topic`.
    pub topic: Option<String>,
    /// `--group-id`.
    pub group_id: Option<String>,
    /// `--dead-letter-topic`.
    pub dead_letter_topic: Option<String>,
    /// `--store`.
    pub store_path: Option<PathBuf>,
    /// `--time-zone`.
    pub time_zone: Option<String>,
    /// `--output-dir`.
    pub output_dir: Option<PathBuf>,
    /// `-X key=value`, applied in order.
    pub properties: Vec<String>,
    /// `--http-address`.
    pub http_address: Option<String>,
}

impl Config {
    /// Parse a TOML text.
    pub fn from_toml(text: &str) -> Result<Config> {
        toml::from_str(text).context("invalid configuration")
    }

    /// Load: defaults, then the file (if given), then `env`, then `flags`; then validate.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: &Overrides,
    ) -> Result<Config> {
        let mut c = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading configuration {}", path.display()))?;
                Config::from_toml(&text)
                    .with_context(|| format!("in configuration file {}", path.display()))?
            }
            None => Config::default(),
        };
        c.apply_env(env)?;
        c.apply_flags(flags)?;
        c.validate()?;
        Ok(c)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<()> {
        let set = |target: &mut String, name: &str| {
            if let Some(v) = env(name) {
                *target = v;
            }
        };
        set(&mut self.kafka.bootstrap_servers, "SMKI_BOOTSTRAP_SERVERS");
        set(&mut self.kafka.topic, "SMKI_TOPIC");
        set(&mut self.kafka.group_id, "SMKI_GROUP_ID");
        set(&mut self.kafka.dead_letter_topic, "SMKI_DEAD_LETTER_TOPIC");
        set(&mut self.kafka.closes_topic, "SMKI_CLOSES_TOPIC");
        set(&mut self.ingest.time_zone, "SMKI_TIME_ZONE");
        set(&mut self.log.format, "SMKI_LOG_FORMAT");
        if let Some(v) = env("SMKI_STORE_PATH") {
            self.store.path = PathBuf::from(v);
        }
        if let Some(v) = env("SMKI_OUTPUT_DIR") {
            self.output.dir = PathBuf::from(v);
        }
        set(&mut self.output.full_weekday, "SMKI_FULL_WEEKDAY");
        for (name, target) in [
            ("SMKI_GRACE_SECS", &mut self.window.grace_secs),
            ("SMKI_IDLE_SECS", &mut self.window.idle_secs),
            ("SMKI_DEADLINE_SECS", &mut self.window.deadline_secs),
        ] {
            if let Some(v) = env(name) {
                *target = v
                    .parse()
                    .with_context(|| format!("{name}={v:?} is not a number of seconds"))?;
            }
        }
        if let Some(v) = env("SMKI_BATCH_MAX_RECORDS") {
            self.ingest.batch_max_records = v
                .parse()
                .with_context(|| format!("SMKI_BATCH_MAX_RECORDS={v:?} is not a number"))?;
        }
        if let Some(v) = env("SMKI_BATCH_MAX_MS") {
            self.ingest.batch_max_ms = v
                .parse()
                .with_context(|| format!("SMKI_BATCH_MAX_MS={v:?} is not a number"))?;
        }
        set(&mut self.http.address, "SMKI_HTTP_ADDRESS");
        for (name, key) in SECRET_PROPERTY_FILES {
            if let Some(path) = env(name) {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("{name}={path:?}: cannot read the {key} file"))?;
                let value = text.strip_suffix('\n').unwrap_or(&text);
                let value = value.strip_suffix('\r').unwrap_or(value);
                self.kafka
                    .properties
                    .insert(key.to_string(), value.to_string());
            }
        }
        for (target, name) in [
            (
                &mut self.http.ready_max_lag_records,
                "SMKI_HTTP_READY_MAX_LAG_RECORDS",
            ),
            (
                &mut self.http.store_census_interval_s,
                "SMKI_HTTP_STORE_CENSUS_INTERVAL_S",
            ),
        ] {
            if let Some(v) = env(name) {
                *target = v
                    .parse()
                    .with_context(|| format!("{name}={v:?} is not a number"))?;
            }
        }
        Ok(())
    }

    fn apply_flags(&mut self, f: &Overrides) -> Result<()> {
        if let Some(v) = &f.bootstrap_servers {
            self.kafka.bootstrap_servers = v.clone();
        }
        if let Some(v) = &f.topic {
            self.kafka.topic = v.clone();
        }
        if let Some(v) = &f.group_id {
            self.kafka.group_id = v.clone();
        }
        if let Some(v) = &f.dead_letter_topic {
            self.kafka.dead_letter_topic = v.clone();
        }
        if let Some(v) = &f.store_path {
            self.store.path = v.clone();
        }
        if let Some(v) = &f.time_zone {
            self.ingest.time_zone = v.clone();
        }
        if let Some(v) = &f.output_dir {
            self.output.dir = v.clone();
        }
        if let Some(v) = &f.http_address {
            self.http.address = v.clone();
        }
        for kv in &f.properties {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("-X {kv:?}: expected key=value");
            };
            self.kafka
                .properties
                .insert(k.trim().into(), v.trim().into());
        }
        Ok(())
    }

    /// Check values that would otherwise fail later and obscurely.
    pub fn validate(&self) -> Result<()> {
        if self.kafka.topic.is_empty() {
            bail!("kafka.topic must not be empty");
        }
        if self.kafka.dead_letter_topic() == self.kafka.topic {
            bail!("the dead-letter topic must differ from the events topic");
        }
        let closes = self.kafka.closes_topic();
        if closes == self.kafka.topic || closes == self.kafka.dead_letter_topic() {
            bail!("the close-log topic must differ from the events and dead-letter topics");
        }
        if self.kafka.group_id.is_empty() {
            bail!("kafka.group_id must not be empty");
        }
        if self.ingest.batch_max_records == 0 {
            bail!("ingest.batch_max_records must be at least 1");
        }
        if self.http.store_census_interval_s == 0 {
            bail!("http.store_census_interval_s must be at least 1");
        }
        crate::day::parse_time_zone(&self.ingest.time_zone)?;
        self.output.full_weekday()?;
        if self.output.gzip_level > 9 {
            bail!(
                "output.gzip_level must be 0..=9, not {}",
                self.output.gzip_level
            );
        }
        if self.output.delta_retention_days == 0 || self.output.fulls_kept == 0 {
            bail!("output.delta_retention_days and output.fulls_kept must be at least 1");
        }
        if self.window.deadline_secs < self.window.grace_secs {
            bail!(
                "window.deadline_secs ({}) must not be shorter than window.grace_secs ({})",
                self.window.deadline_secs,
                self.window.grace_secs
            );
        }
        if !matches!(self.log.format.as_str(), "human" | "json") {
            bail!(
                "log.format must be \"human\" or \"json\", not {:?}",
                self.log.format
            );
        }
        for key in ["bootstrap.servers", "group.id", "enable.auto.commit"] {
            if self.kafka.properties.contains_key(key) {
                bail!("kafka property {key:?} is set by the service; use the dedicated setting");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            r#"
            [kafka]
            bootstrap_servers = "file:9092"
            topic = "file-topic"
            [kafka.properties]
            "security.protocol" = "SSL"
            [ingest]
            time_zone = "Europe/Paris"
            "#,
        )
        .unwrap();
        let env = |k: &str| match k {
            "SMKI_TOPIC" => Some("env-topic".to_string()),
            "SMKI_BATCH_MAX_RECORDS" => Some("7".to_string()),
            _ => None,
        };
        let flags = Overrides {
            bootstrap_servers: Some("flag:9092".into()),
            properties: vec!["sasl.mechanism=PLAIN".into()],
            ..Default::default()
        };
        let c = Config::load(Some(&file), env, &flags).unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "flag:9092");
        assert_eq!(c.kafka.topic, "env-topic");
        assert_eq!(c.kafka.dead_letter_topic(), "env-topic.dlq");
        assert_eq!(c.ingest.batch_max_records, 7);
        assert_eq!(c.ingest.time_zone, "Europe/Paris");
        assert_eq!(c.kafka.properties["security.protocol"], "SSL");
        assert_eq!(c.kafka.properties["sasl.mechanism"], "PLAIN");
        let cc = c.kafka.client_config();
        assert_eq!(cc.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(cc.get("bootstrap.servers"), Some("flag:9092"));
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let none = |_: &str| None;
        let bad = |text: &str| {
            let c = Config::from_toml(text).and_then(|c| c.validate().map(|_| c));
            format!("{:#}", c.unwrap_err())
        };
        assert!(bad("[ingest]\ntime_zone = \"Mars/Base\"").contains("time zone"));
        assert!(bad("[kafka]\ntopc = \"x\"").contains("unknown field"));
        assert!(bad("[ingest]\nbatch_max_records = 0").contains("at least 1"));
        assert!(bad("[output]\nfull_weekday = \"Caturday\"").contains("day of the week"));
        assert!(bad("[output]\ngzip_level = 10").contains("0..=9"));
        assert!(bad("[window]\ngrace_secs = 9000").contains("deadline_secs"));
        let flags = Overrides {
            properties: vec!["novalue".into()],
            ..Default::default()
        };
        assert!(Config::load(None, none, &flags)
            .unwrap_err()
            .to_string()
            .contains("key=value"));
        let env = |k: &str| (k == "SMKI_BATCH_MAX_MS").then(|| "soon".to_string());
        assert!(Config::load(None, env, &Overrides::default()).is_err());
    }

    #[test]
    fn secret_properties_come_from_files_named_by_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[kafka.properties]\n\"sasl.username\" = \"u\"\n\"sasl.password\" = \"from-toml\"\n",
        )
        .unwrap();
        let sasl = dir.path().join("password");
        std::fs::write(&sasl, "s3cr=t \n").unwrap();
        let key = dir.path().join("key-password");
        std::fs::write(&key, "k\r\n").unwrap();
        let (sasl_s, key_s) = (
            sasl.to_str().unwrap().to_string(),
            key.to_str().unwrap().to_string(),
        );
        let env = |k: &str| match k {
            "SMKI_KAFKA_SASL_PASSWORD_FILE" => Some(sasl_s.clone()),
            "SMKI_KAFKA_SSL_KEY_PASSWORD_FILE" => Some(key_s.clone()),
            _ => None,
        };
        let c = Config::load(Some(&file), env, &Overrides::default()).unwrap();
        // The file's value loses one line ending only: inner and trailing spaces are kept.
        assert_eq!(c.kafka.properties["sasl.password"], "s3cr=t ");
        assert_eq!(c.kafka.properties["ssl.key.password"], "k");
        assert_eq!(c.kafka.properties["sasl.username"], "u");
        assert_eq!(
            c.kafka.client_config().get("sasl.password"),
            Some("s3cr=t ")
        );
        // A flag still wins over the environment.
        let flags = Overrides {
            properties: vec!["sasl.password=from-flag".into()],
            ..Default::default()
        };
        let c = Config::load(Some(&file), env, &flags).unwrap();
        assert_eq!(c.kafka.properties["sasl.password"], "from-flag");
        // A missing file is an error that names the variable.
        let missing =
            |k: &str| (k == "SMKI_KAFKA_SASL_PASSWORD_FILE").then(|| "/nonexistent/pw".to_string());
        let err = Config::load(None, missing, &Overrides::default()).unwrap_err();
        assert!(
            format!("{err:#}").contains("SMKI_KAFKA_SASL_PASSWORD_FILE"),
            "{err:#}"
        );
    }

    #[test]
    fn defaults_are_sane() {
        let c = Config::load(None, |_| None, &Overrides::default()).unwrap();
        assert_eq!(c.http.address, "127.0.0.1:9464");
        assert_eq!(c.kafka.dead_letter_topic(), "smki.certificate-events.dlq");
        assert_eq!(c.ingest.time_zone, "Europe/London");
        assert_eq!(c.output.full_weekday().unwrap(), chrono::Weekday::Sun);
        let w = c.window_config().unwrap();
        assert_eq!(
            (w.grace_ms, w.idle_ms, w.deadline_ms),
            (600_000, 60_000, 7_200_000)
        );
        assert_eq!(c.output.retention().delta_days, 7);
    }

    #[test]
    fn http_section_follows_the_same_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[http]\naddress = \"0.0.0.0:1\"\nready_max_lag_records = 5\nstore_census_interval_s = 9\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), |_| None, &Overrides::default()).unwrap();
        assert_eq!(
            (c.http.address.as_str(), c.http.ready_max_lag_records),
            ("0.0.0.0:1", 5)
        );
        assert_eq!(c.http.store_census_interval_s, 9);
        let env = |k: &str| match k {
            "SMKI_HTTP_ADDRESS" => Some("0.0.0.0:2".to_string()),
            "SMKI_HTTP_READY_MAX_LAG_RECORDS" => Some("6".to_string()),
            _ => None,
        };
        let c = Config::load(Some(&file), env, &Overrides::default()).unwrap();
        assert_eq!(
            (c.http.address.as_str(), c.http.ready_max_lag_records),
            ("0.0.0.0:2", 6)
        );
        let flags = Overrides {
            http_address: Some(String::new()),
            ..Default::default()
        };
        let c = Config::load(Some(&file), env, &flags).unwrap();
        assert_eq!(c.http.address, "", "the flag wins (and may disable)");
        let bad = Config::from_toml("[http]\nadress = \"x\"").unwrap_err();
        assert!(format!("{bad:#}").contains("unknown field"));
        let env = |k: &str| (k == "SMKI_HTTP_READY_MAX_LAG_RECORDS").then(|| "lots".to_string());
        let err = Config::load(None, env, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("SMKI_HTTP_READY_MAX_LAG_RECORDS"));
    }
}
