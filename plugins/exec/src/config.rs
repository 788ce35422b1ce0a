//! The keys of an exec device: each key read on its own, unknown keys refused, and every
//! problem reported with its key path (`env.PORT`, `command[1]`), never a panic.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sensorgate_api::config::{join_path, parse_duration, parse_value};
use sensorgate_api::{ConfigError, DeviceSpec};
use serde::Deserialize;

/// `timeout` (poll mode) when a device leaves it out: how long one run may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// `stop_timeout` when a device leaves it out: the grace between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// `restart_delay` when a device leaves it out: the first step of the restart back-off.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(1);
/// The longest wait between two restarts, however often the program fails.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

/// Every key an exec device takes besides the common ones.
const KEYS: &[&str] = &[
    "command",
    "env",
    "working_dir",
    "mode",
    "timeout",
    "stop_timeout",
    "restart_delay",
];

/// `mode = "stream" | "poll"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The program runs all the time and prints a line whenever it has a reading.
    #[default]
    Stream,
    /// The program is started once per `poll_interval`, prints its readings and exits.
    Poll,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Stream => "stream",
            Mode::Poll => "poll",
        }
    }
}

/// An exec device's keys, checked, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecConfig {
    /// The program and its arguments; `command[0]` is looked up in `PATH` when it has no
    /// `/`. Never run through a shell.
    pub command: Vec<String>,
    /// Variables added to (or replacing in) the daemon's environment for the program.
    pub env: BTreeMap<String, String>,
    /// The program's working directory; `None`: the daemon's.
    pub working_dir: Option<PathBuf>,
    pub mode: Mode,
    /// Poll mode: how long one run may take before it is stopped.
    pub timeout: Duration,
    /// How long a program has to exit after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// The first wait before a restart; it doubles up to [`MAX_RESTART_DELAY`].
    pub restart_delay: Duration,
}

impl ExecConfig {
    /// Parse and check a device's table; every problem found, each with its key path.
    pub fn from_spec(spec: &DeviceSpec) -> Result<ExecConfig, Vec<ConfigError>> {
        let mut errors = Vec::new();
        for key in spec.table.keys() {
            if !KEYS.contains(&key.as_str()) {
                errors.push(ConfigError::new(
                    key.as_str(),
                    format!(
                        "unknown key `{key}` for an exec device; it takes {}",
                        KEYS.iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let get = |key: &str| spec.table.get(key).cloned();

        let command = match get("command") {
            None => {
                errors.push(ConfigError::new(
                    "command",
                    "missing: the program to run, as a list: command = [\"python3\", \
                     \"/opt/sensors/dht22.py\"]",
                ));
                Vec::new()
            }
            Some(v) => check_command(v, &mut errors),
        };

        let env = match get("env") {
            None => BTreeMap::new(),
            Some(v) => check_env(v, &mut errors),
        };

        let working_dir = match get("working_dir") {
            None => None,
            Some(v) => match parse_value::<String>(v) {
                Ok(s) if s.trim().is_empty() => {
                    errors.push(ConfigError::new("working_dir", "must not be empty"));
                    None
                }
                Ok(s) => Some(PathBuf::from(s)),
                Err(e) => {
                    errors.push(e.under("working_dir"));
                    None
                }
            },
        };

        let mode = match get("mode") {
            None => Mode::default(),
            Some(v) => parse_value::<Mode>(v).unwrap_or_else(|e| {
                errors.push(e.under("mode"));
                Mode::default()
            }),
        };

        let timeout = match duration(&spec.table, "timeout", &mut errors) {
            Some(_) if mode == Mode::Stream => {
                errors.push(ConfigError::new(
                    "timeout",
                    "`timeout` is only for mode = \"poll\" (how long one run may take); a \
                     streaming program runs all the time",
                ));
                DEFAULT_TIMEOUT
            }
            Some(d) if d.is_zero() => {
                errors.push(ConfigError::new("timeout", "must be more than 0"));
                DEFAULT_TIMEOUT
            }
            Some(d) => d,
            None => DEFAULT_TIMEOUT,
        };
        let stop_timeout =
            duration(&spec.table, "stop_timeout", &mut errors).unwrap_or(DEFAULT_STOP_TIMEOUT);
        let restart_delay = match duration(&spec.table, "restart_delay", &mut errors) {
            Some(d) if d.is_zero() => {
                errors.push(ConfigError::new("restart_delay", "must be more than 0"));
                DEFAULT_RESTART_DELAY
            }
            Some(d) if d > MAX_RESTART_DELAY => {
                errors.push(ConfigError::new(
                    "restart_delay",
                    format!(
                        "must be at most {}",
                        humantime::format_duration(MAX_RESTART_DELAY)
                    ),
                ));
                DEFAULT_RESTART_DELAY
            }
            Some(d) => d,
            None => DEFAULT_RESTART_DELAY,
        };

        if errors.is_empty() {
            Ok(ExecConfig {
                command,
                env,
                working_dir,
                mode,
                timeout,
                stop_timeout,
                restart_delay,
            })
        } else {
            Err(errors)
        }
    }

    /// The command for people: `python3 /opt/dht22.py`, arguments with blanks quoted.
    pub fn command_line(&self) -> String {
        self.command
            .iter()
            .map(|a| {
                if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"') {
                    format!("{a:?}")
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `command`: a non-empty list of strings. A string gets an error that shows the list it
/// probably meant.
fn check_command(v: toml::Value, errors: &mut Vec<ConfigError>) -> Vec<String> {
    if let toml::Value::String(s) = &v {
        let guess: Vec<String> = s.split_whitespace().map(|w| format!("{w:?}")).collect();
        errors.push(ConfigError::new(
            "command",
            format!(
                "must be a list of arguments, not a string (it is never run through a \
                 shell): command = [{}]; for shell features write command = [\"sh\", \"-c\", \
                 \"…\"]",
                guess.join(", ")
            ),
        ));
        return Vec::new();
    }
    let list = match parse_value::<Vec<String>>(v) {
        Ok(list) => list,
        Err(e) => {
            errors.push(e.under("command"));
            return Vec::new();
        }
    };
    if list.is_empty() {
        errors.push(ConfigError::new(
            "command",
            "must name a program: command = [\"python3\", \"/opt/sensors/dht22.py\"]",
        ));
    } else if list[0].trim().is_empty() {
        errors.push(ConfigError::new(
            "command[0]",
            "the program must not be empty",
        ));
    }
    for (i, a) in list.iter().enumerate() {
        if a.contains('\0') {
            errors.push(ConfigError::new(
                format!("command[{i}]"),
                "must not contain a NUL character",
            ));
        }
    }
    list
}

/// `env`: a table of strings; names that a process environment can hold.
fn check_env(v: toml::Value, errors: &mut Vec<ConfigError>) -> BTreeMap<String, String> {
    let toml::Value::Table(table) = v else {
        errors.push(ConfigError::new(
            "env",
            "must be a table of strings: env = { SENSOR_PIN = \"4\" }",
        ));
        return BTreeMap::new();
    };
    let mut env = BTreeMap::new();
    for (name, value) in table {
        let at = join_path("env", &name);
        if name.is_empty() || name.contains(['=', '\0']) {
            errors.push(ConfigError::new(
                &at,
                format!("{name:?} cannot be an environment variable name"),
            ));
            continue;
        }
        match value {
            toml::Value::String(s) if s.contains('\0') => {
                errors.push(ConfigError::new(&at, "must not contain a NUL character"))
            }
            toml::Value::String(s) => {
                env.insert(name, s);
            }
            other => errors.push(ConfigError::new(
                &at,
                format!(
                    "must be a string (environment values are text): {name} = \"{}\"",
                    other.to_string().trim_matches('"')
                ),
            )),
        }
    }
    env
}

/// An optional duration key; a bad one is recorded and taken as absent.
fn duration(table: &toml::Table, key: &str, errors: &mut Vec<ConfigError>) -> Option<Duration> {
    match table.get(key)? {
        toml::Value::String(s) => match parse_duration(s) {
            Ok(d) => Some(d),
            Err(m) => {
                errors.push(ConfigError::new(key, m));
                None
            }
        },
        _ => {
            errors.push(ConfigError::new(
                key,
                "must be a duration string such as \"500ms\" or \"5s\"",
            ));
            None
        }
    }
}
