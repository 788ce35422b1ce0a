//! The configuration: the main TOML file, then `conf.d/*.toml` beside it in name order,
//! then `SENSORGATE__SECTION__KEY` environment variables.
//!
//! Layering is done here on TOML tables rather than by the `config` crate, for two
//! reasons a user sees: a `conf.d` file that adds `[[device]]` tables must add devices
//! (the `config` crate replaces whole arrays), and every error must name the file (or
//! the variable) it came from and the full key path, `device[2].point[0].type`.
//!
//! Each section is deserialized on its own, so that one bad section does not hide the
//! errors of the others; every device is handed to its plugin, which reports all of its
//! own errors. Unknown keys are errors everywhere.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sensorgate_api::config::{check_name, join_path, parse_duration, parse_value};
use sensorgate_api::{ConfigError, DeviceSpec, Plugin, PointInfo};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::plugins;

/// The default `--config`.
pub const DEFAULT_PATH: &str = "/etc/sensorgate/sensorgate.toml";
/// Prefix of the environment variables that override single keys.
pub const ENV_PREFIX: &str = "SENSORGATE__";

/// The whole, checked configuration.
#[derive(Debug)]
pub struct Config {
    pub gateway: Gateway,
    pub broker: BrokerConfig,
    pub buffer: BufferConfig,
    /// `None`: no bridge.
    pub upstream: Option<UpstreamConfig>,
    pub homeassistant: HomeAssistantConfig,
    pub devices: Vec<Device>,
    /// The files read, in order (the main file first).
    pub files: Vec<PathBuf>,
}

/// `[gateway]`, with its defaults resolved.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub id: String,
    pub topic_prefix: String,
    pub state_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    #[serde(default)]
    id: Option<String>,
    #[serde(default = "default_topic_prefix")]
    topic_prefix: String,
    #[serde(default)]
    state_dir: Option<PathBuf>,
}

fn default_topic_prefix() -> String {
    "sensorgate".into()
}

/// `[broker]`: the embedded MQTT broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub enabled: bool,
    /// MQTT 3.1.1 listener.
    pub listen: String,
    /// MQTT 5 listener; empty = none.
    pub listen_v5: String,
    /// Default: true on a loopback listener without `password_file`, else false.
    pub allow_anonymous: Option<bool>,
    pub password_file: String,
    #[serde(deserialize_with = "de_size")]
    pub max_payload_size: u64,
    pub max_connections: usize,
    pub max_subscriptions_per_client: usize,
    #[serde(deserialize_with = "de_duration")]
    pub max_keepalive: Duration,
    pub max_inflight: u16,
    pub max_queued_messages: usize,
    #[serde(deserialize_with = "de_duration")]
    pub message_expiry: Duration,
    pub acl_file: String,
    pub listen_tls: String,
    pub cert_file: String,
    pub key_file: String,
    pub client_ca_file: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            enabled: true,
            listen: "127.0.0.1:1883".into(),
            listen_v5: String::new(),
            allow_anonymous: None,
            password_file: String::new(),
            max_payload_size: 256 * 1024,
            max_connections: 1000,
            max_subscriptions_per_client: 100,
            max_keepalive: Duration::from_secs(300),
            max_inflight: 100,
            max_queued_messages: 1000,
            message_expiry: Duration::from_secs(86_400),
            acl_file: String::new(),
            listen_tls: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
        }
    }
}

impl BrokerConfig {
    /// The MQTT 3.1.1 listener address (checked by `load`).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }

    /// The MQTT 5 listener address, when one is configured.
    pub fn listen_v5_addr(&self) -> Option<SocketAddr> {
        self.listen_v5.parse().ok()
    }

    /// The TLS listener address, when one is configured.
    pub fn listen_tls_addr(&self) -> Option<SocketAddr> {
        self.listen_tls.parse().ok()
    }

    /// Whether clients without a username (or, with no password_file, any client) may
    /// connect: `allow_anonymous`, by default true only without a password_file (a
    /// network listener without one needs the explicit `true`, see validation).
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous
            .unwrap_or(self.password_file.is_empty())
    }
}

/// `[buffer]`: the store-and-forward outbox for the upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    #[serde(deserialize_with = "de_size")]
    pub max_bytes: u64,
    #[serde(deserialize_with = "de_duration")]
    pub max_age: Duration,
    pub durability: Durability,
    pub on_full: OnFull,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_bytes: 64 * 1024 * 1024,
            max_age: Duration::from_secs(7 * 86_400),
            durability: Durability::Always,
            on_full: OnFull::DropOldest,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    Always,
    Offline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    DropOldest,
    RejectNew,
}

/// `[upstream]`: the cloud broker the bridge connects to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub url: String,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password_file: String,
    #[serde(default)]
    pub ca_file: String,
    #[serde(default)]
    pub cert_file: String,
    #[serde(default)]
    pub key_file: String,
    #[serde(default = "default_keepalive", deserialize_with = "de_duration")]
    pub keepalive: Duration,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default = "default_drain_rate")]
    pub drain_rate: u32,
    #[serde(default)]
    pub route: Vec<Route>,
}

fn default_keepalive() -> Duration {
    Duration::from_secs(30)
}

fn default_drain_rate() -> u32 {
    500
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    V4,
    V5,
}

/// `[[upstream.route]]`: one mosquitto bridge `topic` line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub filter: String,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub qos: u8,
    #[serde(default)]
    pub local_prefix: String,
    #[serde(default)]
    pub remote_prefix: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Out,
    In,
    Both,
}

/// `[homeassistant]`: MQTT discovery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    pub enabled: bool,
    pub discovery_prefix: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            enabled: false,
            discovery_prefix: "homeassistant".into(),
        }
    }
}

/// One `[[device]]`, checked by its plugin.
pub struct Device {
    pub spec: DeviceSpec,
    pub plugin: &'static dyn Plugin,
    /// The file the device was defined in.
    pub file: PathBuf,
    pub points: Vec<PointInfo>,
    /// Extra lines the plugin wants `check` to show.
    pub describe: Vec<String>,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.spec.name)
            .field("plugin", &self.spec.plugin)
            .field("file", &self.file)
            .finish()
    }
}

/// The default `poll_interval` of a device.
pub use sensorgate_api::config::DEFAULT_POLL_INTERVAL;

/// Where a value came from: a file, or an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

/// One configuration error, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedError {
    pub source: Source,
    /// Full key path (`device[2].point[0].type`); empty for a file-level error.
    pub path: String,
    pub message: String,
}

impl fmt::Display for LocatedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: {}: {}", self.source, self.path, self.message)
        }
    }
}

/// Every error the configuration has; never empty.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<LocatedError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "invalid configuration ({n} error{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for (i, e) in self.0.iter().enumerate() {
            if i + 1 < n {
                writeln!(f, "  {e}")?;
            } else {
                write!(f, "  {e}")?;
            }
        }
        Ok(())
    }
}

/// Which source set each key path, so that an error can name it.
#[derive(Debug, Default)]
struct Provenance {
    by_path: BTreeMap<String, Source>,
}

impl Provenance {
    /// The source of `path`, or of the nearest enclosing path that has one.
    fn find(&self, path: &str) -> Option<&Source> {
        let mut p = path.to_string();
        loop {
            if let Some(s) = self.by_path.get(&p) {
                return Some(s);
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }

    fn record_tree(&mut self, path: &str, value: &toml::Value, source: &Source) {
        self.by_path.insert(path.to_string(), source.clone());
        if let toml::Value::Table(t) = value {
            for (k, v) in t {
                self.record_tree(&join_path(path, k), v, source);
            }
        }
    }
}

/// Arrays of tables that a later file appends to instead of replacing.
const APPENDED_ARRAYS: &[&str] = &["device", "upstream.route"];

fn merge(
    base: &mut toml::Table,
    add: toml::Table,
    prefix: &str,
    source: &Source,
    prov: &mut Provenance,
) {
    for (key, value) in add {
        let path = join_path(prefix, &key);
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(a)) => {
                prov.by_path.insert(path.clone(), source.clone());
                merge(b, a, &path, source, prov);
            }
            (Some(toml::Value::Array(b)), toml::Value::Array(a))
                if APPENDED_ARRAYS.contains(&path.as_str()) =>
            {
                for item in a {
                    let item_path = format!("{path}[{}]", b.len());
                    prov.record_tree(&item_path, &item, source);
                    b.push(item);
                }
            }
            (_, value) => {
                // Replaced whole: forget what the earlier source said below this key.
                let stale: Vec<String> = prov
                    .by_path
                    .range(path.clone()..)
                    .map(|(k, _)| k.clone())
                    .take_while(|k| k.starts_with(&path))
                    .collect();
                for k in stale {
                    prov.by_path.remove(&k);
                }
                if let toml::Value::Array(items) = &value {
                    for (i, item) in items.iter().enumerate() {
                        prov.record_tree(&format!("{path}[{i}]"), item, source);
                    }
                }
                prov.record_tree(&path, &value, source);
                base.insert(key, value);
            }
        }
    }
}

/// Read and parse one TOML file.
fn read_toml(path: &Path) -> Result<toml::Table, LocatedError> {
    let source = Source::File(path.to_path_buf());
    let text = std::fs::read_to_string(path).map_err(|e| LocatedError {
        source: source.clone(),
        path: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    toml::from_str::<toml::Table>(&text).map_err(|e| LocatedError {
        source,
        path: String::new(),
        message: e.to_string().trim_end().replace('\n', "\n    "),
    })
}

/// The `conf.d/*.toml` files beside `main`, in name order.
fn conf_d_files(main: &Path) -> Vec<PathBuf> {
    let dir = main
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("conf.d");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    files
}

/// An environment value as TOML: a bool or a number when it reads as one, else a string.
fn env_value(raw: &str) -> toml::Value {
    if let Ok(t) = toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        if let Some(
            v @ (toml::Value::Boolean(_) | toml::Value::Integer(_) | toml::Value::Float(_)),
        ) = t.get("v")
        {
            return v.clone();
        }
    }
    toml::Value::String(raw.to_string())
}

/// An override from the environment: `SENSORGATE__BROKER__LISTEN` -> `broker.listen`.
struct EnvOverride {
    var: String,
    path: Vec<String>,
    raw: String,
}

fn env_overrides(vars: impl Iterator<Item = (String, String)>) -> Vec<EnvOverride> {
    let mut out: Vec<EnvOverride> = vars
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(ENV_PREFIX)?;
            let path = rest
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect::<Vec<_>>();
            Some(EnvOverride {
                var: k.clone(),
                path,
                raw: v,
            })
        })
        .collect();
    out.sort_by(|a, b| a.var.cmp(&b.var));
    out
}

fn apply_env(
    root: &mut toml::Table,
    ov: &EnvOverride,
    value: toml::Value,
    prov: &mut Provenance,
) -> Result<String, LocatedError> {
    let source = Source::Env(ov.var.clone());
    let err = |message: String| LocatedError {
        source: source.clone(),
        path: String::new(),
        message,
    };
    if ov.path.iter().any(|s| s.is_empty()) || ov.path.len() < 2 {
        return Err(err(
            "expected SENSORGATE__SECTION__KEY (sections and keys separated by \"__\")".into(),
        ));
    }
    let mut table = root;
    let mut path = String::new();
    let (last, parents) = ov.path.split_last().ok_or_else(|| err("empty".into()))?;
    for seg in parents {
        path = join_path(&path, seg);
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(err(format!(
                    "{path} is not a table here, so it has no key {last:?} (arrays such as \
                     [[device]] cannot be addressed from the environment)"
                )))
            }
        };
    }
    let path = join_path(&path, last);
    prov.by_path.insert(path.clone(), source);
    table.insert(last.clone(), value);
    Ok(path)
}

/// Deserialize one value with the key path of any error.
fn de_at<T: DeserializeOwned>(value: toml::Value, base: &str) -> Result<T, ConfigError> {
    parse_value(value).map_err(|e| e.under(base))
}

/// The host name, for the default gateway id.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "sensorgate".into())
}

fn default_state_dir() -> PathBuf {
    // systemd's StateDirectory= sets $STATE_DIRECTORY (colon-separated if several).
    std::env::var("STATE_DIRECTORY")
        .ok()
        .and_then(|s| s.split(':').next().map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("/var/lib/sensorgate"))
}

/// Check an MQTT topic prefix: non-empty, no wildcards, no empty level at either end.
fn check_topic_prefix(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("must not be empty".into());
    }
    if p.contains(['+', '#', '\0']) {
        return Err(format!("{p:?} must not contain '+', '#' or NUL"));
    }
    if p.starts_with('/') || p.ends_with('/') {
        return Err(format!("{p:?} must not start or end with '/'"));
    }
    Ok(())
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

impl Config {
    /// Load `path`, its `conf.d/`, and the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::load_with_env(path, std::env::vars())
    }

    /// Load with the given environment (tests pass their own).
    pub fn load_with_env(
        path: &Path,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut prov = Provenance::default();
        let mut root = toml::Table::new();
        let mut files = vec![path.to_path_buf()];
        files.extend(conf_d_files(path));
        for file in &files {
            match read_toml(file) {
                Ok(t) => merge(&mut root, t, "", &Source::File(file.clone()), &mut prov),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }

        // Environment overrides; remember which were typed from their text, so that a
        // string key given "007" can be read again as the string it is.
        let mut typed_env: BTreeMap<String, (String, String)> = BTreeMap::new();
        for ov in env_overrides(env) {
            let value = env_value(&ov.raw);
            let is_typed = !value.is_str();
            match apply_env(&mut root, &ov, value, &mut prov) {
                Ok(p) if is_typed => {
                    typed_env.insert(p, (ov.var.clone(), ov.raw.clone()));
                }
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }

        let located = |e: ConfigError, prov: &Provenance| locate(e, prov, path);

        // One section at a time, so that every section's first error is reported.
        let gateway_raw = root.remove("gateway");
        let broker_raw = root.remove("broker");
        let buffer_raw = root.remove("buffer");
        let upstream_raw = root.remove("upstream");
        let ha_raw = root.remove("homeassistant");
        let device_raw = root.remove("device");
        for key in root.keys() {
            errors.push(located(
                ConfigError::new(
                    key.clone(),
                    "unknown section (expected gateway, broker, buffer, upstream, \
                     homeassistant or device)",
                ),
                &prov,
            ));
        }

        let gateway: Option<RawGateway> =
            section_as(gateway_raw, "gateway", &typed_env, &prov, &mut errors, path);
        let broker: Option<BrokerConfig> =
            section_as(broker_raw, "broker", &typed_env, &prov, &mut errors, path);
        let buffer: Option<BufferConfig> =
            section_as(buffer_raw, "buffer", &typed_env, &prov, &mut errors, path);
        let upstream: Option<Option<UpstreamConfig>> = match upstream_raw {
            None => Some(None),
            Some(v) => {
                section_as(Some(v), "upstream", &typed_env, &prov, &mut errors, path).map(Some)
            }
        };
        let homeassistant: Option<HomeAssistantConfig> = section_as(
            ha_raw,
            "homeassistant",
            &typed_env,
            &prov,
            &mut errors,
            path,
        );

        // Checks beyond types.
        let check = |ok: Result<(), String>, key: &str, errors: &mut Vec<LocatedError>| {
            if let Err(m) = ok {
                errors.push(located(ConfigError::new(key, m), &prov));
            }
        };
        let gateway = gateway.map(|g| {
            check(
                check_topic_prefix(&g.topic_prefix),
                "gateway.topic_prefix",
                &mut errors,
            );
            if let Some(id) = &g.id {
                check(
                    if id.trim().is_empty() {
                        Err("must not be empty".into())
                    } else {
                        Ok(())
                    },
                    "gateway.id",
                    &mut errors,
                );
            }
            Gateway {
                id: g.id.unwrap_or_else(host_name),
                topic_prefix: g.topic_prefix,
                state_dir: g.state_dir.unwrap_or_else(default_state_dir),
            }
        });
        if let Some(b) = &broker {
            validate_broker(b, &mut |m, k| check(Err(m), k, &mut errors));
        }
        if let Some(Some(u)) = &upstream {
            validate_upstream(u, &mut |m, k| check(Err(m), k, &mut errors));
        }
        if let Some(b) = &buffer {
            if b.max_bytes == 0 {
                check(
                    Err("must be more than 0".into()),
                    "buffer.max_bytes",
                    &mut errors,
                );
            }
        }
        if let Some(h) = &homeassistant {
            if let Err(m) = check_topic_prefix(&h.discovery_prefix) {
                check(Err(m), "homeassistant.discovery_prefix", &mut errors);
            }
        }

        // Devices.
        let state_dir = gateway
            .as_ref()
            .map(|g| g.state_dir.clone())
            .unwrap_or_default();
        let mut devices = Vec::new();
        let device_tables = match device_raw {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items,
            Some(_) => {
                errors.push(located(
                    ConfigError::new(
                        "device",
                        "must be an array of tables: write [[device]], not [device]",
                    ),
                    &prov,
                ));
                Vec::new()
            }
        };
        let mut names = HashSet::new();
        for (i, item) in device_tables.into_iter().enumerate() {
            let base = format!("device[{i}]");
            match build_device(item, &base, &state_dir, &mut names) {
                Ok(d) => {
                    let file = match prov.find(&base) {
                        Some(Source::File(f)) => f.clone(),
                        _ => path.to_path_buf(),
                    };
                    devices.push(Device { file, ..d });
                }
                Err(errs) => errors.extend(errs.into_iter().map(|e| located(e, &prov))),
            }
        }

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        match (gateway, broker, buffer, upstream, homeassistant) {
            (Some(gateway), Some(broker), Some(buffer), Some(upstream), Some(homeassistant)) => {
                Ok(Config {
                    gateway,
                    broker,
                    buffer,
                    upstream,
                    homeassistant,
                    devices,
                    files,
                })
            }
            _ => Err(ConfigErrors(vec![LocatedError {
                source: Source::File(path.to_path_buf()),
                path: String::new(),
                message: "invalid configuration".into(),
            }])),
        }
    }

    /// The local topic of a point.
    pub fn point_topic(&self, device: &str, point: &str) -> String {
        format!("{}/{device}/{point}", self.gateway.topic_prefix)
    }
}

/// Put a source in front of an error: the file or variable that set its key.
fn locate(e: ConfigError, prov: &Provenance, main: &Path) -> LocatedError {
    LocatedError {
        source: prov
            .find(&e.path)
            .cloned()
            .unwrap_or_else(|| Source::File(main.to_path_buf())),
        path: e.path,
        message: e.message,
    }
}

/// Deserialize a section, retrying keys an environment variable typed as a number or
/// bool as strings when the section wants a string there.
fn section_as<T: DeserializeOwned>(
    raw: Option<toml::Value>,
    name: &str,
    typed_env: &BTreeMap<String, (String, String)>,
    prov: &Provenance,
    errors: &mut Vec<LocatedError>,
    main: &Path,
) -> Option<T> {
    let mut value = raw.unwrap_or(toml::Value::Table(toml::Table::new()));
    let mut retried = HashSet::new();
    loop {
        match de_at::<T>(value.clone(), name) {
            Ok(t) => return Some(t),
            Err(e) => {
                if let Some((_, raw)) = typed_env.get(&e.path) {
                    if retried.insert(e.path.clone()) && set_string(&mut value, name, &e.path, raw)
                    {
                        continue;
                    }
                }
                errors.push(locate(e, prov, main));
                return None;
            }
        }
    }
}

/// Set the key at `path` (which starts with `section.`) inside `value` to a string.
fn set_string(value: &mut toml::Value, section: &str, path: &str, raw: &str) -> bool {
    let Some(rest) = path.strip_prefix(section).and_then(|r| r.strip_prefix('.')) else {
        return false;
    };
    let mut cur = value;
    let segs: Vec<&str> = rest.split('.').collect();
    for (i, seg) in segs.iter().enumerate() {
        let toml::Value::Table(t) = cur else {
            return false;
        };
        if i + 1 == segs.len() {
            t.insert((*seg).to_string(), toml::Value::String(raw.to_string()));
            return true;
        }
        match t.get_mut(*seg) {
            Some(v) => cur = v,
            None => return false,
        }
    }
    false
}

fn validate_broker(b: &BrokerConfig, bad: &mut dyn FnMut(String, &str)) {
    if !b.enabled {
        bad(
            "must be true: this version publishes only through its embedded broker".into(),
            "broker.enabled",
        );
        return;
    }
    let listen = match b.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            bad(
                format!(
                    "{:?} is not an address: write IP:PORT, e.g. \"127.0.0.1:1883\"",
                    b.listen
                ),
                "broker.listen",
            );
            None
        }
    };
    let listen_v5 = if b.listen_v5.is_empty() {
        None
    } else {
        match b.listen_v5.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                bad(
                    format!(
                        "{:?} is not an address: write IP:PORT, e.g. \"127.0.0.1:1884\", or \"\" for none",
                        b.listen_v5
                    ),
                    "broker.listen_v5",
                );
                None
            }
        }
    };
    if let (Some(a), Some(b5)) = (listen, listen_v5) {
        if a == b5 {
            bad(
                format!("{b5} is also broker.listen: give each listener its own port"),
                "broker.listen_v5",
            );
        }
    }
    let listen_tls = if b.listen_tls.is_empty() {
        None
    } else {
        match b.listen_tls.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                bad(
                    format!(
                        "{:?} is not an address: write IP:PORT, e.g. \"0.0.0.0:8883\", or \"\" for none",
                        b.listen_tls
                    ),
                    "broker.listen_tls",
                );
                None
            }
        }
    };
    if let Some(t) = listen_tls {
        for (key, other) in [("broker.listen", listen), ("broker.listen_v5", listen_v5)] {
            if other == Some(t) {
                bad(
                    format!("{t} is also {key}: give each listener its own port"),
                    "broker.listen_tls",
                );
            }
        }
    }
    if !b.password_file.is_empty() {
        if let Err(e) = crate::broker::passwd::PasswordFile::load(Path::new(&b.password_file)) {
            bad(e.to_string(), "broker.password_file");
        }
    }
    if !b.acl_file.is_empty() {
        if let Err(e) = crate::broker::acl::Acl::load(Path::new(&b.acl_file)) {
            bad(e.to_string(), "broker.acl_file");
        }
    }
    if b.listen_tls.is_empty() {
        for (key, value) in [
            ("broker.cert_file", &b.cert_file),
            ("broker.key_file", &b.key_file),
            ("broker.client_ca_file", &b.client_ca_file),
        ] {
            if !value.is_empty() {
                bad(
                    "is only used by the TLS listener: set broker.listen_tls too, or leave it empty"
                        .into(),
                    key,
                );
            }
        }
    } else if b.cert_file.is_empty() || b.key_file.is_empty() {
        for (key, value) in [
            ("broker.cert_file", &b.cert_file),
            ("broker.key_file", &b.key_file),
        ] {
            if value.is_empty() {
                bad(
                    "must be set: broker.listen_tls needs a certificate and its key".into(),
                    key,
                );
            }
        }
    } else if let Err(e) = crate::broker::tls::server_config(b) {
        let (key, message) = e.key_and_message();
        bad(message, &format!("broker.{key}"));
    }
    // A broker reachable from the network must not accept anyone by accident.
    let exposed = listen
        .iter()
        .chain(listen_v5.iter())
        .chain(listen_tls.iter())
        .any(|a| !is_loopback(a));
    if exposed && b.password_file.is_empty() && b.allow_anonymous != Some(true) {
        bad(
            "a listener on a non-loopback address needs password_file or an explicit \
             allow_anonymous = true"
                .into(),
            "broker.allow_anonymous",
        );
    }
    if b.max_payload_size == 0 || b.max_payload_size > 256 * 1024 * 1024 {
        bad(
            "must be between 1 B and 256 MiB (the MQTT limit)".into(),
            "broker.max_payload_size",
        );
    }
    if b.max_connections == 0 {
        bad("must be at least 1".into(), "broker.max_connections");
    }
    if b.max_keepalive.as_secs() > 65_535 || b.max_keepalive.is_zero() {
        bad(
            "must be between 1s and 65535s (18h12m15s), the MQTT limit".into(),
            "broker.max_keepalive",
        );
    }
    if b.max_inflight == 0 {
        bad("must be at least 1".into(), "broker.max_inflight");
    }
}

fn validate_upstream(u: &UpstreamConfig, bad: &mut dyn FnMut(String, &str)) {
    if !(u.url.starts_with("mqtt://") || u.url.starts_with("mqtts://")) {
        bad(
            format!("{:?} must start with mqtt:// or mqtts://", u.url),
            "upstream.url",
        );
    }
    if u.cert_file.is_empty() != u.key_file.is_empty() {
        bad(
            "cert_file and key_file go together (a client certificate needs its key)".into(),
            if u.cert_file.is_empty() {
                "upstream.cert_file"
            } else {
                "upstream.key_file"
            },
        );
    }
    if !u.password_file.is_empty() && u.username.is_empty() {
        bad(
            "password_file is set but username is empty".into(),
            "upstream.username",
        );
    }
    for (i, r) in u.route.iter().enumerate() {
        if r.qos > 2 {
            bad(
                "must be 0, 1 or 2".into(),
                &format!("upstream.route[{i}].qos"),
            );
        }
        if !crate::topic::valid_filter(&r.filter) {
            bad(
                format!("{:?} is not a valid MQTT topic filter", r.filter),
                &format!("upstream.route[{i}].filter"),
            );
        }
        for (key, p) in [
            ("local_prefix", &r.local_prefix),
            ("remote_prefix", &r.remote_prefix),
        ] {
            if p.contains(['+', '#']) {
                bad(
                    format!("{p:?} must not contain wildcards"),
                    &format!("upstream.route[{i}].{key}"),
                );
            }
        }
    }
}

/// Point names whose topic the gateway uses itself.
pub(crate) const RESERVED_POINTS: &[&str] = &["availability"];

/// Take the keys common to every device out of its table and hand the rest to its plugin.
fn build_device(
    item: toml::Value,
    base: &str,
    state_dir: &Path,
    names: &mut HashSet<String>,
) -> Result<Device, Vec<ConfigError>> {
    let toml::Value::Table(mut table) = item else {
        return Err(vec![ConfigError::new(base, "must be a table")]);
    };
    let mut errors = Vec::new();
    let take_str = |table: &mut toml::Table, key: &str, errors: &mut Vec<ConfigError>| match table
        .remove(key)
    {
        None => None,
        Some(toml::Value::String(s)) => Some(s),
        Some(other) => {
            errors.push(ConfigError::new(
                join_path(base, key),
                format!("invalid type: {}, expected a string", other.type_str()),
            ));
            None
        }
    };
    let name = take_str(&mut table, "name", &mut errors);
    let plugin_name = take_str(&mut table, "plugin", &mut errors);
    let poll = take_str(&mut table, "poll_interval", &mut errors);

    let name = match name {
        None if errors.is_empty() => {
            errors.push(ConfigError::new(
                join_path(base, "name"),
                "missing: every device needs a name",
            ));
            None
        }
        None => None,
        Some(n) => match check_name(&n) {
            Err(m) => {
                errors.push(ConfigError::new(join_path(base, "name"), m));
                None
            }
            Ok(()) if !names.insert(n.clone()) => {
                errors.push(ConfigError::new(
                    join_path(base, "name"),
                    format!("{n:?} is used by another device: names must be unique"),
                ));
                None
            }
            Ok(()) => Some(n),
        },
    };
    let plugin = match &plugin_name {
        None => {
            errors.push(ConfigError::new(
                join_path(base, "plugin"),
                format!(
                    "missing: say which plugin drives this device ({})",
                    plugins::names().join(", ")
                ),
            ));
            None
        }
        Some(p) => match plugins::find(p) {
            Some(plugin) => Some(plugin),
            None => {
                errors.push(ConfigError::new(
                    join_path(base, "plugin"),
                    plugins::unknown_message(p),
                ));
                None
            }
        },
    };
    let poll_interval = match poll.as_deref().map(parse_duration) {
        None => DEFAULT_POLL_INTERVAL,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            errors.push(ConfigError::new(
                join_path(base, "poll_interval"),
                "must be more than 0",
            ));
            DEFAULT_POLL_INTERVAL
        }
        Some(Err(m)) => {
            errors.push(ConfigError::new(join_path(base, "poll_interval"), m));
            DEFAULT_POLL_INTERVAL
        }
    };
    let (Some(name), Some(plugin)) = (name, plugin) else {
        return Err(errors);
    };
    let spec = DeviceSpec {
        name: Arc::from(name.as_str()),
        plugin: plugin.name().to_string(),
        poll_interval,
        state_dir: state_dir.join("devices").join(&name),
        table,
    };
    match plugin.build(&spec) {
        Ok(adapter) => {
            for (i, p) in adapter.points().iter().enumerate() {
                if RESERVED_POINTS.contains(&p.name.as_str()) {
                    errors.push(ConfigError::new(
                        format!("{base}.point[{i}].name"),
                        format!(
                            "{:?} is reserved: <prefix>/<device>/{} is the device's own topic",
                            p.name, p.name
                        ),
                    ));
                }
            }
            if !errors.is_empty() {
                return Err(errors);
            }
            Ok(Device {
                points: adapter.points(),
                describe: adapter.describe(),
                spec,
                plugin,
                file: PathBuf::new(),
            })
        }
        Err(errs) => {
            errors.extend(errs.into_iter().map(|e| e.under(base)));
            Err(errors)
        }
    }
}

/// serde `deserialize_with` for sizes: `"256 KiB"`, `"64 MiB"`, or a number of bytes.
fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(s) => s
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.0)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a size ({e}); write e.g. \"256 KiB\", \"64 MiB\""
                ))
            }),
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    sensorgate_api::config::de_duration(d)
}

#[cfg(test)]
mod tests;
