//! The keys of a Modbus device and its points: read with unknown keys refused, then
//! checked, every problem reported with its key path (`point[2].type`), never a panic.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sensorgate_api::config::{check_name, de_opt_duration, join_path, parse_value};
use sensorgate_api::{ConfigError, DeviceSpec};
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::plan::Table;
use crate::value::{ByteOrder, DataType, Format};

/// `timeout` when a device leaves it out.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// `retries` when a device leaves it out: one more try after a timeout or I/O error.
pub const DEFAULT_RETRIES: u32 = 1;
/// `max_gap` when a device leaves it out.
pub const DEFAULT_MAX_GAP: u16 = 10;
/// `max_registers_per_read` when a device leaves it out; also the protocol's limit.
pub const DEFAULT_MAX_REGISTERS: u16 = 125;
/// `max_bits_per_read` when a device leaves it out; also the protocol's limit.
pub const DEFAULT_MAX_BITS: u16 = 2000;
/// `port` of a TCP `address` that has none.
pub const DEFAULT_TCP_PORT: u16 = 502;
/// `baud` when an RTU device leaves it out.
pub const DEFAULT_BAUD: u32 = 9600;
/// `unit` when a device leaves it out.
pub const DEFAULT_UNIT: u8 = 1;

/// `transport = "…"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TransportKind {
    #[serde(rename = "tcp")]
    Tcp,
    #[serde(rename = "rtu")]
    Rtu,
    /// RTU frames (with CRC) through a TCP socket: serial-to-Ethernet converters.
    #[serde(rename = "rtu-over-tcp", alias = "rtu_over_tcp")]
    RtuOverTcp,
}

impl TransportKind {
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Rtu => "rtu",
            TransportKind::RtuOverTcp => "rtu-over-tcp",
        }
    }
}

/// `parity = "N" | "E" | "O"` (or `none`, `even`, `odd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

impl Parity {
    pub fn letter(self) -> char {
        match self {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        }
    }
}

impl<'de> Deserialize<'de> for Parity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.trim().to_ascii_lowercase().as_str() {
            "n" | "none" => Ok(Parity::None),
            "e" | "even" => Ok(Parity::Even),
            "o" | "odd" => Ok(Parity::Odd),
            _ => Err(de::Error::custom(format!(
                "unknown parity {s:?}, expected \"N\", \"E\" or \"O\""
            ))),
        }
    }
}

/// The line settings of a serial port. Devices on one port must agree on them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Serial {
    pub port: String,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl Serial {
    /// The time of one character on the line (start, data, parity and stop bits).
    pub fn char_time(&self) -> Duration {
        let bits = 1
            + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits);
        Duration::from_secs_f64(f64::from(bits) / f64::from(self.baud.max(1)))
    }

    /// The silence the RTU framing needs between two frames: 3.5 characters, and
    /// 1.75 ms above 19200 baud (the Modbus serial line spec).
    pub fn frame_gap(&self) -> Duration {
        if self.baud > 19200 {
            Duration::from_micros(1750)
        } else {
            self.char_time().mul_f64(3.5)
        }
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}{}{}",
            self.port,
            self.baud,
            self.data_bits,
            self.parity.letter(),
            self.stop_bits
        )
    }
}

/// How to reach the device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Modbus TCP to `host:port`.
    Tcp { address: String },
    /// Modbus RTU on a serial port.
    Rtu(Serial),
    /// RTU frames through a TCP socket to `host:port`.
    RtuOverTcp { address: String },
}

impl Transport {
    /// The bus this device is on: devices with the same key share one.
    pub fn bus_key(&self) -> String {
        match self {
            Transport::Tcp { address } => format!("tcp://{address}"),
            Transport::Rtu(s) => format!("rtu://{}", s.port),
            Transport::RtuOverTcp { address } => format!("rtu-over-tcp://{address}"),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Tcp { address } => write!(f, "tcp {address}"),
            Transport::Rtu(s) => write!(f, "rtu {s}"),
            Transport::RtuOverTcp { address } => write!(f, "rtu-over-tcp {address}"),
        }
    }
}

/// The device keys as written (the `point` tables are taken out first).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceKeys {
    transport: Option<TransportKind>,
    address: Option<String>,
    port: Option<String>,
    baud: Option<u32>,
    parity: Option<Parity>,
    data_bits: Option<u8>,
    stop_bits: Option<u8>,
    unit: Option<u8>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    timeout: Option<Duration>,
    retries: Option<u32>,
    max_gap: Option<u16>,
    max_registers_per_read: Option<u16>,
    max_bits_per_read: Option<u16>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    delay_between_requests: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    delay_on_unit_switch: Option<Duration>,
    byte_order: Option<ByteOrder>,
}

/// One `[[device.point]]` table as written, before it is checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    pub name: String,
    pub table: Option<Table>,
    pub address: u16,
    #[serde(rename = "type")]
    pub ty: Option<DataType>,
    pub length: Option<u16>,
    pub bit: Option<u8>,
    pub byte_order: Option<ByteOrder>,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    pub unit: Option<String>,
    pub device_class: Option<String>,
    pub state_class: Option<String>,
    #[serde(default)]
    pub writable: bool,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub poll_interval: Option<Duration>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// A checked point, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub name: Arc<str>,
    pub table: Table,
    pub address: u16,
    pub format: Format,
    pub unit: Option<Arc<str>>,
    pub device_class: Option<String>,
    pub state_class: Option<String>,
    pub writable: bool,
    /// `None`: the device's `poll_interval`.
    pub poll_interval: Option<Duration>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Point {
    /// Registers (or bits) the point takes.
    pub fn count(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.format.registers()
        }
    }

    /// One line for people: `holding 100..101 f32 CDAB ×0.1 +2`.
    pub fn source(&self) -> String {
        let mut s = format!("{} {}", self.table, self.address);
        let n = self.count();
        if n > 1 {
            s.push_str(&format!("..{}", u32::from(self.address) + u32::from(n) - 1));
        }
        if !self.table.is_bits() {
            match self.format.bit {
                Some(b) => s.push_str(&format!(" bit {b}")),
                None => s.push_str(&format!(" {}", self.format.ty)),
            }
            if self.format.order != ByteOrder::Abcd {
                s.push_str(&format!(" {}", self.format.order));
            }
        }
        if let Some(k) = self.format.scale.filter(|k| *k != 1.0) {
            s.push_str(&format!(" ×{k}"));
        }
        if let Some(o) = self.format.offset.filter(|o| *o != 0.0) {
            s.push_str(&format!(" {o:+}"));
        }
        if let Some(p) = self.poll_interval {
            s.push_str(&format!(", every {}", humantime::format_duration(p)));
        }
        s
    }
}

/// A Modbus device, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusConfig {
    pub transport: Transport,
    pub unit: u8,
    pub timeout: Duration,
    pub retries: u32,
    pub max_gap: u16,
    pub max_registers_per_read: u16,
    pub max_bits_per_read: u16,
    pub delay_between_requests: Duration,
    pub delay_on_unit_switch: Duration,
    pub points: Vec<Point>,
}

impl ModbusConfig {
    /// Parse and check a device's table; every problem found, each with its key path.
    pub fn from_spec(spec: &DeviceSpec) -> Result<ModbusConfig, Vec<ConfigError>> {
        let mut table = spec.table.clone();
        let mut errors = Vec::new();
        let raw_points = match table.remove("point") {
            None => Vec::new(),
            Some(toml::Value::Array(a)) => a,
            Some(other) => {
                errors.push(ConfigError::new(
                    "point",
                    format!(
                        "invalid type: {}, expected [[device.point]] tables",
                        other.type_str()
                    ),
                ));
                Vec::new()
            }
        };
        // serde stops at the first bad key: report it, take it out and parse again, so
        // that every bad device key is named at once.
        let mut removed: Vec<String> = Vec::new();
        let keys: DeviceKeys = loop {
            match parse_value(toml::Value::Table(table.clone())) {
                Ok(k) => break k,
                Err(e) => {
                    let top = e.path.split(['.', '[']).next().unwrap_or("").to_string();
                    errors.push(e);
                    if top.is_empty() || table.remove(&top).is_none() {
                        removed.push(String::new());
                        break DeviceKeys::default();
                    }
                    removed.push(top);
                }
            }
        };
        // A transport key that failed already has its error; checking the transport
        // without it would only add a misleading one.
        let transport_broken = removed
            .iter()
            .any(|k| ["", "transport", "address", "port"].contains(&k.as_str()));
        let transport = if transport_broken {
            None
        } else {
            check_transport(&keys, &mut errors)
        };
        let unit = keys.unit.unwrap_or(DEFAULT_UNIT);
        if matches!(transport, Some(Transport::Rtu(_))) && keys.unit == Some(0) {
            errors.push(ConfigError::new(
                "unit",
                "0 is the broadcast address, which never answers: use 1 to 247",
            ));
        }
        let timeout = keys.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            errors.push(ConfigError::new("timeout", "must be more than 0"));
        }
        let max_registers = keys.max_registers_per_read.unwrap_or(DEFAULT_MAX_REGISTERS);
        if !(1..=DEFAULT_MAX_REGISTERS).contains(&max_registers) {
            errors.push(ConfigError::new(
                "max_registers_per_read",
                format!("{max_registers} is out of range: 1 to {DEFAULT_MAX_REGISTERS}"),
            ));
        }
        let max_bits = keys.max_bits_per_read.unwrap_or(DEFAULT_MAX_BITS);
        if !(1..=DEFAULT_MAX_BITS).contains(&max_bits) {
            errors.push(ConfigError::new(
                "max_bits_per_read",
                format!("{max_bits} is out of range: 1 to {DEFAULT_MAX_BITS}"),
            ));
        }

        if raw_points.is_empty() && errors.is_empty() {
            errors.push(ConfigError::new(
                "point",
                "a modbus device needs at least one point: add a [[device.point]] table \
                 with a name, a table and an address",
            ));
        }
        let defaults = PointDefaults {
            order: keys.byte_order.unwrap_or_default(),
            max_registers: max_registers.clamp(1, DEFAULT_MAX_REGISTERS),
        };
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut points = Vec::with_capacity(raw_points.len());
        for (i, raw) in raw_points.into_iter().enumerate() {
            let at = format!("point[{i}]");
            if let Some(name) = raw.get("name").and_then(toml::Value::as_str) {
                if let Some(first) = seen.get(name) {
                    errors.push(ConfigError::new(
                        join_path(&at, "name"),
                        format!("duplicate point name {name:?}: point[{first}] has it too"),
                    ));
                } else {
                    seen.insert(name.to_string(), i);
                }
            }
            if !raw.is_table() {
                errors.push(ConfigError::new(
                    &at,
                    format!("invalid type: {}, expected a table", raw.type_str()),
                ));
                continue;
            }
            match parse_value::<PointConfig>(raw) {
                Ok(p) => {
                    if let Some(point) = check_point(&at, p, &defaults, &mut errors) {
                        points.push(point);
                    }
                }
                Err(e) => errors.push(e.under(&at)),
            }
        }
        match transport {
            Some(transport) if errors.is_empty() => Ok(ModbusConfig {
                transport,
                unit,
                timeout,
                retries: keys.retries.unwrap_or(DEFAULT_RETRIES),
                max_gap: keys.max_gap.unwrap_or(DEFAULT_MAX_GAP),
                max_registers_per_read: max_registers,
                max_bits_per_read: max_bits,
                delay_between_requests: keys.delay_between_requests.unwrap_or_default(),
                delay_on_unit_switch: keys.delay_on_unit_switch.unwrap_or_default(),
                points,
            }),
            _ => Err(errors),
        }
    }
}

/// `transport`, `address`, `port` and the line settings, checked together.
fn check_transport(keys: &DeviceKeys, errors: &mut Vec<ConfigError>) -> Option<Transport> {
    let kind = keys.transport.unwrap_or(if keys.port.is_some() {
        TransportKind::Rtu
    } else {
        TransportKind::Tcp
    });
    let before = errors.len();
    let serial_keys = [
        ("port", keys.port.is_some()),
        ("baud", keys.baud.is_some()),
        ("parity", keys.parity.is_some()),
        ("data_bits", keys.data_bits.is_some()),
        ("stop_bits", keys.stop_bits.is_some()),
    ];
    match kind {
        TransportKind::Tcp | TransportKind::RtuOverTcp => {
            for (k, set) in serial_keys {
                if set {
                    errors.push(ConfigError::new(
                        k,
                        format!(
                            "`{k}` is only for transport \"rtu\", and this device's is {:?}",
                            kind.name()
                        ),
                    ));
                }
            }
            let address = match keys.address.as_deref().map(str::trim) {
                None | Some("") => {
                    errors.push(ConfigError::new(
                        "address",
                        format!(
                            "missing: transport {:?} needs `address = \"host:port\"`",
                            kind.name()
                        ),
                    ));
                    None
                }
                Some(a) => match normalize_address(a) {
                    Ok(a) => Some(a),
                    Err(m) => {
                        errors.push(ConfigError::new("address", m));
                        None
                    }
                },
            };
            if errors.len() > before {
                return None;
            }
            let address = address?;
            Some(match kind {
                TransportKind::Tcp => Transport::Tcp { address },
                _ => Transport::RtuOverTcp { address },
            })
        }
        TransportKind::Rtu => {
            if keys.address.is_some() {
                errors.push(ConfigError::new(
                    "address",
                    "`address` is for transports \"tcp\" and \"rtu-over-tcp\"; an rtu device \
                     names its serial `port`",
                ));
            }
            let port = match keys.port.as_deref().map(str::trim) {
                None | Some("") => {
                    errors.push(ConfigError::new(
                        "port",
                        "missing: transport \"rtu\" needs `port = \"/dev/ttyUSB0\"` (say)",
                    ));
                    String::new()
                }
                Some(p) => p.to_string(),
            };
            let baud = keys.baud.unwrap_or(DEFAULT_BAUD);
            if baud == 0 {
                errors.push(ConfigError::new("baud", "must be more than 0"));
            }
            let data_bits = keys.data_bits.unwrap_or(8);
            if !(5..=8).contains(&data_bits) {
                errors.push(ConfigError::new(
                    "data_bits",
                    format!("{data_bits} is not 5, 6, 7 or 8"),
                ));
            }
            let stop_bits = keys.stop_bits.unwrap_or(1);
            if !(1..=2).contains(&stop_bits) {
                errors.push(ConfigError::new(
                    "stop_bits",
                    format!("{stop_bits} is not 1 or 2"),
                ));
            }
            if errors.len() > before {
                return None;
            }
            Some(Transport::Rtu(Serial {
                port,
                baud,
                parity: keys.parity.unwrap_or_default(),
                data_bits,
                stop_bits,
            }))
        }
    }
}

/// `host:port`, with port 502 added when missing; the host is resolved at connect time.
pub(crate) fn normalize_address(a: &str) -> Result<String, String> {
    if a.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(a.to_string());
    }
    if let Ok(ip) = a.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, DEFAULT_TCP_PORT).to_string());
    }
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => match port.parse::<u16>()
        {
            Ok(p) if p > 0 => Ok(format!("{host}:{p}")),
            _ => Err(format!(
                "{a:?}: {port:?} is not a port number; write \"host:port\", e.g. \"192.168.1.50:502\""
            )),
        },
        None if !a.contains(char::is_whitespace) => Ok(format!("{a}:{DEFAULT_TCP_PORT}")),
        _ => Err(format!(
            "{a:?} is not an address; write \"host:port\", e.g. \"192.168.1.50:502\""
        )),
    }
}

struct PointDefaults {
    order: ByteOrder,
    max_registers: u16,
}

/// Check one parsed point; `None` if it has problems (pushed to `errors`).
fn check_point(
    at: &str,
    p: PointConfig,
    defaults: &PointDefaults,
    errors: &mut Vec<ConfigError>,
) -> Option<Point> {
    let before = errors.len();
    let key = |k: &str| join_path(at, k);
    if let Err(m) = check_name(&p.name) {
        errors.push(ConfigError::new(key("name"), m));
    }
    let table = p.table.unwrap_or(Table::Holding);
    let bits = table.is_bits();
    let ty = match (p.ty, bits, p.bit.is_some()) {
        (Some(t), _, _) => t,
        (None, true, _) | (None, false, true) => DataType::Bool,
        (None, false, false) => DataType::U16,
    };

    if bits {
        if ty != DataType::Bool {
            errors.push(ConfigError::new(
                key("type"),
                format!(
                    "a {table} is one bit: its type is \"bool\" (or leave `type` out), not {:?}",
                    ty.name()
                ),
            ));
        }
        for (k, set) in [
            ("bit", p.bit.is_some()),
            ("byte_order", p.byte_order.is_some()),
            ("length", p.length.is_some()),
            ("scale", p.scale.is_some()),
            ("offset", p.offset.is_some()),
            ("min", p.min.is_some()),
            ("max", p.max.is_some()),
        ] {
            if set {
                errors.push(ConfigError::new(
                    key(k),
                    format!("`{k}` is for register points; this point is a {table} (one bit)"),
                ));
            }
        }
    }
    if p.writable && !table.is_writable() {
        errors.push(ConfigError::new(
            key("writable"),
            format!(
                "the {table} table is read-only in Modbus: only coil and holding points can \
                 be writable"
            ),
        ));
    }
    if let Some(b) = p.bit {
        if b > 15 {
            errors.push(ConfigError::new(
                key("bit"),
                format!("{b} is not a bit of a register: 0 to 15"),
            ));
        }
        if !bits && ty != DataType::Bool {
            errors.push(ConfigError::new(
                key("bit"),
                format!(
                    "`bit` makes the point a bool, and its type is {:?}: leave `type` out or \
                     set it to \"bool\"",
                    ty.name()
                ),
            ));
        }
    }
    let order = p.byte_order.unwrap_or(defaults.order);
    let mut length = 1;
    if ty == DataType::String {
        match p.length {
            None => errors.push(ConfigError::new(
                key("length"),
                "missing: a string point needs `length`, its size in registers (2 characters \
                 each)",
            )),
            Some(n) if n == 0 || n > defaults.max_registers => errors.push(ConfigError::new(
                key("length"),
                format!(
                    "{n} is out of range: 1 to {} registers (max_registers_per_read)",
                    defaults.max_registers
                ),
            )),
            Some(n) => length = n,
        }
        if !matches!(order, ByteOrder::Abcd | ByteOrder::Badc) {
            errors.push(ConfigError::new(
                key("byte_order"),
                format!(
                    "a string is read register by register: its byte order is \"ABCD\" or \
                     \"BADC\" (bytes swapped in each register), not {:?}",
                    order.name()
                ),
            ));
        }
    } else if p.length.is_some() {
        errors.push(ConfigError::new(
            key("length"),
            format!(
                "`length` is only for type \"string\", and this point's type is {:?}",
                ty.name()
            ),
        ));
    }
    if !ty.is_numeric() && !bits {
        for (k, set) in [
            ("scale", p.scale.is_some()),
            ("offset", p.offset.is_some()),
            ("min", p.min.is_some()),
            ("max", p.max.is_some()),
        ] {
            if set {
                errors.push(ConfigError::new(
                    key(k),
                    format!(
                        "`{k}` is only for number types, and this point's type is {:?}",
                        ty.name()
                    ),
                ));
            }
        }
    }
    if let Some(s) = p.scale {
        if !s.is_finite() || s == 0.0 {
            errors.push(ConfigError::new(
                key("scale"),
                format!("{s} is not a usable scale: a finite number other than 0"),
            ));
        }
    }
    for (k, v) in [("offset", p.offset), ("min", p.min), ("max", p.max)] {
        if let Some(v) = v.filter(|v| !v.is_finite()) {
            errors.push(ConfigError::new(
                key(k),
                format!("{v} is not a finite number"),
            ));
        }
    }
    if let (Some(lo), Some(hi)) = (p.min, p.max) {
        if lo > hi {
            errors.push(ConfigError::new(
                key("min"),
                format!("min ({lo}) is greater than max ({hi})"),
            ));
        }
    }
    if p.poll_interval.is_some_and(|d| d.is_zero()) {
        errors.push(ConfigError::new(
            key("poll_interval"),
            "must be more than 0",
        ));
    }
    let format = Format {
        ty,
        order,
        bit: if bits { None } else { p.bit },
        length,
        scale: p.scale,
        offset: p.offset,
    };
    let count = if bits { 1 } else { format.registers() };
    if u32::from(p.address) + u32::from(count) > 65536 {
        errors.push(ConfigError::new(
            key("address"),
            format!(
                "{} + {count} registers runs past the last register, 65535",
                p.address
            ),
        ));
    }
    if !bits && count > defaults.max_registers && ty != DataType::String {
        errors.push(ConfigError::new(
            key("type"),
            format!(
                "a {} takes {count} registers, more than max_registers_per_read ({})",
                ty.name(),
                defaults.max_registers
            ),
        ));
    }
    if errors.len() > before {
        return None;
    }
    Some(Point {
        name: p.name.into(),
        table,
        address: p.address,
        format,
        unit: p.unit.map(Into::into),
        device_class: p.device_class,
        state_class: p.state_class,
        writable: p.writable,
        poll_interval: p.poll_interval,
        min: p.min,
        max: p.max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_a_port() {
        assert_eq!(normalize_address("10.0.0.5").unwrap(), "10.0.0.5:502");
        assert_eq!(normalize_address("10.0.0.5:1502").unwrap(), "10.0.0.5:1502");
        assert_eq!(normalize_address("plc.local").unwrap(), "plc.local:502");
        assert_eq!(normalize_address("[::1]:5020").unwrap(), "[::1]:5020");
        assert_eq!(normalize_address("::1").unwrap(), "[::1]:502");
        assert!(normalize_address("plc:http").is_err());
        assert!(normalize_address("plc:0").is_err());
        assert!(normalize_address("a b").is_err());
    }

    #[test]
    fn rtu_frame_gaps() {
        let s = Serial {
            port: "/dev/ttyUSB0".into(),
            baud: 9600,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
        };
        // 10 bits per char at 9600: 1.0417 ms; 3.5 chars: 3.65 ms.
        assert_eq!(s.frame_gap().as_micros(), 3645);
        let fast = Serial { baud: 115_200, ..s };
        assert_eq!(fast.frame_gap(), Duration::from_micros(1750));
    }
}
