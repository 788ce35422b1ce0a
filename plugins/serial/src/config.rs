//! The keys of a serial device: read with unknown keys refused, then checked, and every
//! problem reported with its key path (`point[1].scale`, `regex`), never a panic.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sensorgate_api::config::{check_name, de_opt_duration, join_path};
use sensorgate_api::{ConfigError, DeviceSpec};
use serde::Deserialize;

/// `baud` when the device leaves it out.
pub const DEFAULT_BAUD: u32 = 9600;
/// `max_line_length` when the device leaves it out, in bytes.
pub const DEFAULT_MAX_LINE_LENGTH: usize = 1024;
/// `timeout` when the device leaves it out: how long an answer to `send` may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest `max_line_length` accepted: a line buffer of this size per device.
pub const MAX_MAX_LINE_LENGTH: usize = 1 << 20;

/// The device table as first read. The points stay raw here so that each is parsed on its
/// own: a typo in `point[0]` does not hide the problems of `point[3]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceTable {
    port: Option<String>,
    baud: Option<u32>,
    parity: Option<String>,
    data_bits: Option<u8>,
    stop_bits: Option<u8>,
    format: Option<String>,
    regex: Option<String>,
    columns: Option<Vec<String>>,
    separator: Option<String>,
    delimiter: Option<String>,
    max_line_length: Option<usize>,
    send: Option<String>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    only_listed: bool,
    #[serde(default)]
    point: Vec<toml::Value>,
}

/// One `[[device.point]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointTable {
    name: String,
    key: Option<String>,
    unit: Option<String>,
    scale: Option<f64>,
    offset: Option<f64>,
    device_class: Option<String>,
    state_class: Option<String>,
}

/// `parity = "N" | "E" | "O"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl Parity {
    /// The letter as written in the config (and in `9600 8N1`).
    pub fn letter(self) -> char {
        match self {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        }
    }
}

/// How a line is turned into points: `format = "auto" | "json" | "kv" | "csv" | "regex"`.
#[derive(Debug, Clone)]
pub enum Format {
    /// The default: a line that starts with `{` is JSON, any other kv.
    Auto { separator: Separator },
    /// `{"temp": 21.5, "hum": 40}`: every key a point; nested objects joined with `_`.
    Json,
    /// `temp=21.5,hum=40` (or `temp:21.5`): pairs split by `separator`.
    Kv { separator: Separator },
    /// `21.5,40`: fields split by `separator`, named by `columns` (`""`/`"_"` skipped).
    Csv {
        separator: Separator,
        columns: Vec<Option<Arc<str>>>,
    },
    /// A regular expression whose named groups are points.
    Regex(regex::Regex),
}

impl Format {
    /// The name as written in the config.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Auto { .. } => "auto",
            Format::Json => "json",
            Format::Kv { .. } => "kv",
            Format::Csv { .. } => "csv",
            Format::Regex(_) => "regex",
        }
    }
}

/// What splits the pairs (kv) or fields (csv) of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Separator {
    /// Any run of spaces and tabs (`separator = " "`).
    Whitespace,
    /// This exact text (`","`, `";"`, `"\t"`).
    Text(String),
}

impl Separator {
    fn from_config(s: &str) -> Separator {
        if s.chars().all(|c| c == ' ') {
            Separator::Whitespace
        } else {
            Separator::Text(s.to_string())
        }
    }
}

impl fmt::Display for Separator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Separator::Whitespace => f.write_str("whitespace"),
            Separator::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// A checked `[[device.point]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The point name (the topic segment).
    pub name: Arc<str>,
    /// The key in the line this point is read from (`name` unless `key` renames).
    pub key: String,
    pub unit: Option<Arc<str>>,
    /// `value = raw * scale + offset`, numbers only; `None` when neither is set.
    pub scale: Option<(f64, f64)>,
    pub device_class: Option<String>,
    pub state_class: Option<String>,
}

/// A serial device's configuration, checked, defaults filled in.
#[derive(Debug, Clone)]
pub struct SerialConfig {
    pub port: String,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
    pub format: Format,
    /// The bytes that end a line; a `\r` before them is stripped as well.
    pub delimiter: Vec<u8>,
    pub max_line_length: usize,
    /// The query written every `poll_interval` (request/response); `None`: the device streams.
    pub send: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Publish only the keys that a `[[device.point]]` names.
    pub only_listed: bool,
    pub points: Vec<Point>,
}

impl SerialConfig {
    /// `9600 8N1`.
    pub fn line_settings(&self) -> String {
        format!(
            "{} {}{}{}",
            self.baud,
            self.data_bits,
            self.parity.letter(),
            self.stop_bits
        )
    }

    /// Parse and check a device's table; every problem found, each with its key path.
    pub fn from_spec(spec: &DeviceSpec) -> Result<SerialConfig, Vec<ConfigError>> {
        let t: DeviceTable = spec.parse().map_err(|e| vec![e.first_line()])?;
        let mut errors = Vec::new();
        let mut err = |path: &str, msg: String| errors.push(ConfigError::new(path, msg));

        let port = match t.port {
            Some(p) if !p.trim().is_empty() => p,
            Some(_) => {
                err(
                    "port",
                    "must not be empty: the serial device, e.g. \"/dev/ttyUSB0\"".into(),
                );
                String::new()
            }
            None => {
                err(
                    "port",
                    "missing: the serial device, e.g. \"/dev/ttyUSB0\"".into(),
                );
                String::new()
            }
        };
        let baud = t.baud.unwrap_or(DEFAULT_BAUD);
        if baud == 0 {
            err("baud", "must be greater than 0 (e.g. 9600, 115200)".into());
        }
        let parity = match t.parity.as_deref() {
            None | Some("N") | Some("n") => Parity::None,
            Some("E") | Some("e") => Parity::Even,
            Some("O") | Some("o") => Parity::Odd,
            Some(other) => {
                err(
                    "parity",
                    format!(
                        "{other:?} is not a parity: use \"N\" (none), \"E\" (even) or \"O\" (odd)"
                    ),
                );
                Parity::None
            }
        };
        let data_bits = t.data_bits.unwrap_or(8);
        if !(5..=8).contains(&data_bits) {
            err("data_bits", format!("{data_bits} is not 5, 6, 7 or 8"));
        }
        let stop_bits = t.stop_bits.unwrap_or(1);
        if !(1..=2).contains(&stop_bits) {
            err("stop_bits", format!("{stop_bits} is not 1 or 2"));
        }

        let delimiter = t.delimiter.unwrap_or_else(|| "\n".into());
        if delimiter.is_empty() {
            err(
                "delimiter",
                "must not be empty (the default is \"\\n\")".into(),
            );
        }
        let max_line_length = t.max_line_length.unwrap_or(DEFAULT_MAX_LINE_LENGTH);
        if max_line_length == 0 || max_line_length > MAX_MAX_LINE_LENGTH {
            err(
                "max_line_length",
                format!("{max_line_length} is not between 1 and {MAX_MAX_LINE_LENGTH} bytes"),
            );
        }
        let send = match t.send {
            Some(s) if s.is_empty() => {
                err(
                    "send",
                    "must not be empty: leave it out for a device that streams".into(),
                );
                None
            }
            Some(s) => Some(s.into_bytes()),
            None => None,
        };
        let timeout = t.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            err("timeout", "must be greater than 0".into());
        }
        if t.timeout.is_some() && send.is_none() {
            err(
                "timeout",
                "only for a request/response device: set `send` too, or leave `timeout` out".into(),
            );
        }

        // The format and the keys that belong to it.
        let format_name = t.format.as_deref().unwrap_or("auto");
        let separator = t.separator.as_deref().unwrap_or(",");
        if separator.is_empty() {
            err(
                "separator",
                "must not be empty (the default is \",\")".into(),
            );
        }
        let only = |key: &str, set: bool, formats: &str, err: &mut dyn FnMut(&str, String)| {
            if set {
                err(
                    key,
                    format!("`{key}` is only for format {formats}, and this device's format is {format_name:?}"),
                );
            }
        };
        let format = match format_name {
            "auto" => {
                only("regex", t.regex.is_some(), "\"regex\"", &mut err);
                only("columns", t.columns.is_some(), "\"csv\"", &mut err);
                Some(Format::Auto {
                    separator: Separator::from_config(separator),
                })
            }
            "json" => {
                only("regex", t.regex.is_some(), "\"regex\"", &mut err);
                only("columns", t.columns.is_some(), "\"csv\"", &mut err);
                only(
                    "separator",
                    t.separator.is_some(),
                    "\"auto\", \"kv\" and \"csv\"",
                    &mut err,
                );
                Some(Format::Json)
            }
            "kv" => {
                only("regex", t.regex.is_some(), "\"regex\"", &mut err);
                only("columns", t.columns.is_some(), "\"csv\"", &mut err);
                Some(Format::Kv {
                    separator: Separator::from_config(separator),
                })
            }
            "csv" => {
                only("regex", t.regex.is_some(), "\"regex\"", &mut err);
                match t.columns {
                    None => {
                        err(
                            "columns",
                            "missing: format \"csv\" needs `columns`, the point name of each \
                             field in order (\"\" or \"_\" skips a field)"
                                .into(),
                        );
                        None
                    }
                    Some(cols) => {
                        let columns = check_columns(&cols, &mut err);
                        Some(Format::Csv {
                            separator: Separator::from_config(separator),
                            columns,
                        })
                    }
                }
            }
            "regex" => {
                only("columns", t.columns.is_some(), "\"csv\"", &mut err);
                only(
                    "separator",
                    t.separator.is_some(),
                    "\"auto\", \"kv\" and \"csv\"",
                    &mut err,
                );
                match t.regex {
                    None => {
                        err(
                            "regex",
                            "missing: format \"regex\" needs `regex`, whose named groups \
                             are the points, e.g. \"T=(?P<temp>[-0-9.]+)\""
                                .into(),
                        );
                        None
                    }
                    Some(src) => check_regex(&src, &mut err).map(Format::Regex),
                }
            }
            other => {
                err(
                    "format",
                    format!(
                        "{other:?} is not a format: use \"json\", \"kv\", \"csv\" or \"regex\""
                    ),
                );
                None
            }
        };

        // Points.
        let mut seen_names: HashMap<String, usize> = HashMap::new();
        let mut seen_keys: HashMap<String, usize> = HashMap::new();
        let mut points = Vec::with_capacity(t.point.len());
        for (i, raw) in t.point.into_iter().enumerate() {
            let at = format!("point[{i}]");
            let p: PointTable = match sensorgate_api::config::parse_table(raw) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(e.under(&at));
                    continue;
                }
            };
            let before = errors.len();
            let key = |k: &str| join_path(&at, k);
            if let Err(e) = check_name(&p.name) {
                errors.push(ConfigError::new(key("name"), e));
            }
            if let Some(first) = seen_names.insert(p.name.clone(), i) {
                errors.push(ConfigError::new(
                    key("name"),
                    format!(
                        "duplicate point name {:?}: point[{first}] has it too",
                        p.name
                    ),
                ));
            }
            let line_key = p.key.clone().unwrap_or_else(|| p.name.clone());
            if line_key.is_empty() {
                errors.push(ConfigError::new(key("key"), "must not be empty"));
            }
            if let Some(first) = seen_keys.insert(line_key.clone(), i) {
                errors.push(ConfigError::new(
                    key(if p.key.is_some() { "key" } else { "name" }),
                    format!("point[{first}] reads key {line_key:?} already"),
                ));
            }
            // A key that the format can never produce is a typo.
            let known: Option<Vec<&str>> = match &format {
                Some(Format::Csv { columns, .. }) => {
                    Some(columns.iter().flatten().map(|c| &**c).collect())
                }
                Some(Format::Regex(re)) => Some(re.capture_names().flatten().collect()),
                _ => None,
            };
            if let Some(known) = known {
                if !known.contains(&line_key.as_str()) {
                    let what = if matches!(format, Some(Format::Csv { .. })) {
                        "one of `columns`"
                    } else {
                        "a named group of `regex`"
                    };
                    errors.push(ConfigError::new(
                        key(if p.key.is_some() { "key" } else { "name" }),
                        format!("{line_key:?} is not {what} ({})", known.join(", ")),
                    ));
                }
            }
            for (k, v) in [("scale", p.scale), ("offset", p.offset)] {
                if let Some(v) = v.filter(|v| !v.is_finite()) {
                    errors.push(ConfigError::new(
                        key(k),
                        format!("{v} is not a finite number"),
                    ));
                }
            }
            if errors.len() > before {
                continue;
            }
            let scale = match (p.scale, p.offset) {
                (None, None) => None,
                (s, o) => Some((s.unwrap_or(1.0), o.unwrap_or(0.0))),
            };
            points.push(Point {
                name: p.name.into(),
                key: line_key,
                unit: p.unit.map(Into::into),
                scale,
                device_class: p.device_class,
                state_class: p.state_class,
            });
        }
        if t.only_listed && points.is_empty() && errors.is_empty() {
            errors.push(ConfigError::new(
                "only_listed",
                "is true but no [[device.point]] is listed: nothing would be published",
            ));
        }

        match format {
            Some(format) if errors.is_empty() => Ok(SerialConfig {
                port,
                baud,
                parity,
                data_bits,
                stop_bits,
                format,
                delimiter: delimiter.into_bytes(),
                max_line_length,
                send,
                timeout,
                only_listed: t.only_listed,
                points,
            }),
            _ => Err(errors),
        }
    }
}

/// The csv `columns`: `""` and `"_"` skip a field, the others are point names.
fn check_columns(cols: &[String], err: &mut dyn FnMut(&str, String)) -> Vec<Option<Arc<str>>> {
    if cols.is_empty() {
        err("columns", "must name at least one field".into());
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::with_capacity(cols.len());
    for (i, c) in cols.iter().enumerate() {
        if c.is_empty() || c == "_" {
            out.push(None);
            continue;
        }
        if let Err(e) = check_name(c) {
            err(
                &format!("columns[{i}]"),
                format!("{e} (\"\" or \"_\" skips a field)"),
            );
        }
        if let Some(first) = seen.insert(c, i) {
            err(
                &format!("columns[{i}]"),
                format!("duplicate column {c:?}: columns[{first}] has it too"),
            );
        }
        out.push(Some(Arc::from(c.as_str())));
    }
    if !cols.is_empty() && out.iter().all(Option::is_none) {
        err(
            "columns",
            "every column is skipped: nothing would be published".into(),
        );
    }
    out
}

/// The `regex`: it compiles, has named groups, and each name is a point name.
fn check_regex(src: &str, err: &mut dyn FnMut(&str, String)) -> Option<regex::Regex> {
    let re = match regex::Regex::new(src) {
        Ok(re) => re,
        Err(e) => {
            // The regex crate's message spans several lines with a caret; keep it readable.
            let msg = e
                .to_string()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            err("regex", format!("does not compile: {msg}"));
            return None;
        }
    };
    let names: Vec<&str> = re.capture_names().flatten().collect();
    if names.is_empty() {
        err(
            "regex",
            "has no named group: each point is a group such as (?P<temp>[-0-9.]+)".into(),
        );
        return None;
    }
    let mut ok = true;
    for n in names {
        if let Err(e) = check_name(n) {
            err("regex", format!("group name {e}"));
            ok = false;
        }
    }
    ok.then_some(re)
}
