//! A device's slice of the configuration, and the errors that point into it.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// One `[[device]]` table, as the daemon hands it to a plugin.
///
/// The daemon has already taken out and checked the keys common to every device
/// (`name`, `plugin`, `poll_interval`); `table` holds the rest: the plugin's own keys and
/// its `point` tables. A plugin parses it with [`DeviceSpec::parse`] into a struct with
/// `#[serde(deny_unknown_fields)]`, so a misspelt key is an error, not silently ignored.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// `[a-z0-9_-]+`, unique: the topic segment.
    pub name: Arc<str>,
    /// The plugin name the device asked for (`"sim"`).
    pub plugin: String,
    /// How often the device is polled (a streaming plugin may ignore it).
    pub poll_interval: Duration,
    /// Where this device may keep state across restarts (created by the daemon).
    pub state_dir: PathBuf,
    /// The remaining keys of the table.
    pub table: toml::Table,
}

impl DeviceSpec {
    /// Deserialize the plugin's keys. Every error carries the key path inside the device
    /// table (`point[1].signal`); the daemon puts `device[N].` and the file in front.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        parse_value(toml::Value::Table(self.table.clone()))
    }
}

/// The `poll_interval` of a device that sets none.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);

impl DeviceSpec {
    /// The `[[device]]` tables of one config file that ask for `plugin`, handed over as
    /// the daemon does it (`name`, `plugin`, `poll_interval` taken out), for a plugin's
    /// tests of its `sample.toml`. Every device shares `state_dir`. The daemon's own
    /// loader checks much more (names, other files, the environment).
    pub fn from_file(
        text: &str,
        plugin: &str,
        state_dir: &std::path::Path,
    ) -> Result<Vec<DeviceSpec>, ConfigError> {
        let mut root: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::new("", e.message().to_string()))?;
        let devices = match root.remove("device") {
            Some(toml::Value::Array(d)) => d,
            _ => return Err(ConfigError::new("device", "no [[device]] tables")),
        };
        let mut out = Vec::new();
        for (i, d) in devices.into_iter().enumerate() {
            let at = |key: &str| format!("device[{i}].{key}");
            let toml::Value::Table(mut table) = d else {
                return Err(ConfigError::new(format!("device[{i}]"), "must be a table"));
            };
            if table.get("plugin").and_then(|p| p.as_str()) != Some(plugin) {
                continue;
            }
            table.remove("plugin");
            let name = match table.remove("name") {
                Some(toml::Value::String(n)) => n,
                _ => return Err(ConfigError::new(at("name"), "missing or not a string")),
            };
            let poll_interval = match table.remove("poll_interval") {
                None => DEFAULT_POLL_INTERVAL,
                Some(toml::Value::String(p)) => {
                    parse_duration(&p).map_err(|m| ConfigError::new(at("poll_interval"), m))?
                }
                Some(_) => return Err(ConfigError::new(at("poll_interval"), "not a string")),
            };
            out.push(DeviceSpec {
                name: name.as_str().into(),
                plugin: plugin.to_string(),
                poll_interval,
                state_dir: state_dir.to_path_buf(),
                table,
            });
        }
        Ok(out)
    }
}

/// Deserialize any TOML value; an error carries the key path inside it (`point[1].type`,
/// empty for the value itself) and a one-line message.
pub fn parse_value<T: DeserializeOwned>(value: toml::Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, e.into_inner().message().trim().to_string())
    })
}

/// Deserialize one `[[device.point]]` (or any sub-table): like [`parse_value`], with a
/// clear error when the value is not a table at all.
pub fn parse_table<T: DeserializeOwned>(value: toml::Value) -> Result<T, ConfigError> {
    if !value.is_table() {
        return Err(ConfigError::new(
            "",
            format!(
                "a point must be a table ([[device.point]]), found: {}",
                value.type_str()
            ),
        ));
    }
    parse_value(value)
}

/// A configuration problem at a key path. `path` is relative to whatever the producer
/// was given (a device table for a plugin); the daemon makes it absolute and adds the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Only the first line of the message: toml's own messages can carry an "in `key`"
    /// suffix and more lines, and the path already says where.
    pub fn first_line(mut self) -> ConfigError {
        if let Some(first) = self.message.lines().next() {
            self.message = first.trim().to_string();
        }
        self
    }

    /// The same error, seen from one level up (`point[0].type` under `device[2]`).
    pub fn under(mut self, parent: &str) -> ConfigError {
        self.path = join_path(parent, &self.path);
        self
    }
}

/// `a` + `b` as a key path: `device[2]` + `point[0]` = `device[2].point[0]`.
pub fn join_path(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ if b.starts_with('[') => format!("{a}{b}"),
        _ => format!("{a}.{b}"),
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Check a point or device name: `[a-z0-9_-]+`, so that it is one safe topic segment.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        Some(c) => Err(format!(
            "{name:?} has {c:?}: use only a-z, 0-9, '_' and '-' (it is a topic segment)"
        )),
        None => Ok(()),
    }
}

/// Parse a human duration such as `"500ms"`, `"5s"`, `"7d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. \"500ms\", \"5s\", \"7d\""))
}

/// serde `deserialize_with` for a required human duration.
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// serde `deserialize_with` for an optional human duration (use with `#[serde(default)]`).
pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct P {
        point: Vec<Pt>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Pt {
        name: String,
        #[serde(default, deserialize_with = "de_opt_duration")]
        every: Option<Duration>,
    }

    fn spec(src: &str) -> DeviceSpec {
        DeviceSpec {
            name: "d".into(),
            plugin: "x".into(),
            poll_interval: Duration::from_secs(1),
            state_dir: PathBuf::from("/nonexistent"),
            table: toml::from_str(src).unwrap(),
        }
    }

    #[test]
    fn parse_errors_carry_the_key_path() {
        let e = spec("[[point]]\nname = \"a\"\n[[point]]\nname = \"b\"\nevery = \"soon\"\n")
            .parse::<P>()
            .unwrap_err();
        assert_eq!(e.path, "point[1].every");
        assert!(e.message.contains("not a duration"), "{e}");
        let e = spec("[[point]]\nname = \"a\"\ncolour = 1\n")
            .parse::<P>()
            .unwrap_err();
        assert!(e.message.contains("unknown field `colour`"), "{e}");
        assert_eq!(e.under("device[3]").path, "device[3].point[0].colour");
    }

    #[test]
    fn from_file_hands_over_the_plugin_keys_only() {
        let text = "[[device]]\nname = \"a\"\nplugin = \"x\"\nport = 1\n\
                    [[device]]\nname = \"b\"\nplugin = \"y\"\n\
                    [[device]]\nname = \"c\"\nplugin = \"x\"\npoll_interval = \"soon\"\n";
        let e = DeviceSpec::from_file(text, "x", Path::new("/s")).unwrap_err();
        assert_eq!(e.path, "device[2].poll_interval");
        let ok = DeviceSpec::from_file(&text.replace("soon", "2s"), "x", Path::new("/s")).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(&*ok[0].name, "a");
        assert_eq!(ok[0].poll_interval, DEFAULT_POLL_INTERVAL);
        assert_eq!(ok[1].poll_interval, Duration::from_secs(2));
        assert_eq!(ok[0].table.keys().collect::<Vec<_>>(), ["port"]);
    }

    #[test]
    fn names_are_topic_segments() {
        assert!(check_name("boiler_2-a").is_ok());
        assert!(check_name("Boiler").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("").is_err());
    }
}
