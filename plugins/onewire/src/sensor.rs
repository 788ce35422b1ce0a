//! One sensor's folder under the w1 root: its id, and what reading it gives.
//!
//! The kernel's `w1_therm` driver shows each sensor as a folder named by its id
//! (`28-0316a2794bff`: family code, `-`, 48-bit serial number in hex) holding
//!
//! - `w1_slave`: two lines, the scratchpad bytes with the kernel's CRC verdict, then the
//!   same bytes and the temperature in thousandths of a degree Celsius:
//!   `72 01 4b 46 7f ff 0e 10 57 : crc=57 YES` / `72 01 4b 46 7f ff 0e 10 57 t=23125`;
//! - `temperature` (newer kernels): `23125`, without the CRC verdict.
//!
//! Reading either file makes the sensor convert (about 750 ms at 12 bits).

use std::fmt;
use std::io;
use std::path::Path;

/// Family codes of temperature sensors: DS18B20, DS18S20/DS1920, DS1822, MAX31826 (DS1825
/// too), DS28EA00.
pub const TEMPERATURE_FAMILIES: &[&str] = &["28", "10", "22", "3b", "42"];

/// The power-on value of the temperature register: a sensor that lost power (or never
/// converted) shows it instead of a temperature.
pub const POWER_ON_MILLIS: i64 = 85_000;

/// The range every one of these sensors measures: -55 °C to +125 °C.
const RANGE_MILLIS: std::ops::RangeInclusive<i64> = -55_000..=125_000;

/// Why a read gave no value. Each kind is counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadKind {
    /// The kernel's CRC check said `NO`: the bytes were garbled on the wire.
    Crc,
    /// 85 °C, the power-on value (see [`POWER_ON_MILLIS`]).
    PowerOn,
    /// The sensor's folder or file is gone, or reading it failed (I/O error).
    Missing,
    /// The file did not say what it should (all zero bytes, no `t=`, out of range).
    Invalid,
    /// No answer within `timeout`, or the read of an earlier poll still runs.
    Timeout,
}

impl BadKind {
    /// Every kind, in the order counts are shown.
    pub const ALL: [BadKind; 5] = [
        BadKind::Crc,
        BadKind::PowerOn,
        BadKind::Missing,
        BadKind::Invalid,
        BadKind::Timeout,
    ];

    /// Index into a `[_; 5]` of counts.
    pub fn index(self) -> usize {
        match self {
            BadKind::Crc => 0,
            BadKind::PowerOn => 1,
            BadKind::Missing => 2,
            BadKind::Invalid => 3,
            BadKind::Timeout => 4,
        }
    }

    /// A short name for counts in log lines.
    pub fn name(self) -> &'static str {
        match self {
            BadKind::Crc => "CRC",
            BadKind::PowerOn => "power-on 85 °C",
            BadKind::Missing => "unreadable",
            BadKind::Invalid => "invalid",
            BadKind::Timeout => "timeout",
        }
    }
}

/// A read that gave no value: its kind and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    pub kind: BadKind,
    pub message: String,
    /// The temperature the file showed, if it showed one (thousandths of °C).
    pub millis: Option<i64>,
}

impl Bad {
    pub fn new(kind: BadKind, message: impl Into<String>) -> Bad {
        Bad {
            kind,
            message: message.into(),
            millis: None,
        }
    }
}

impl fmt::Display for Bad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Whether a folder name under the root is a temperature sensor (not `w1_bus_master1`,
/// not a switch or a memory chip of another family).
pub fn is_temperature_sensor(name: &str) -> bool {
    check_sensor_id(name).is_ok_and(|id| id == name)
}

/// Check a sensor id as a user wrote it; the id as the kernel names the folder (lower
/// case), or why it is not one.
pub fn check_sensor_id(id: &str) -> Result<String, String> {
    let lower = id.trim().to_ascii_lowercase();
    let well_formed = lower.len() == 15
        && lower.as_bytes()[2] == b'-'
        && lower
            .bytes()
            .enumerate()
            .all(|(i, b)| i == 2 || b.is_ascii_hexdigit());
    if !well_formed {
        return Err(format!(
            "{id:?} is not a 1-wire sensor id: write the folder name under root, a family \
             code, '-' and 12 hex digits (\"28-0316a2794bff\")"
        ));
    }
    let family = &lower[..2];
    if !TEMPERATURE_FAMILIES.contains(&family) {
        return Err(format!(
            "{id:?} is of family {family}, not a temperature sensor (families {})",
            TEMPERATURE_FAMILIES.join(", ")
        ));
    }
    Ok(lower)
}

/// The temperature sensors under `root`, sorted by id.
pub fn scan(root: &Path) -> io::Result<Vec<String>> {
    let mut ids: Vec<String> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_temperature_sensor(n))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Read sensor `id` under `root` once, blocking (run it on a blocking thread): `w1_slave`
/// when the folder has one (it carries the CRC verdict), else `temperature`. The value in
/// thousandths of °C, not yet checked for the power-on value.
pub fn read_blocking(root: &Path, id: &str) -> Result<i64, Bad> {
    let dir = root.join(id);
    let missing = |file: &str, e: io::Error| {
        Bad::new(
            BadKind::Missing,
            format!("cannot read {}: {e}", dir.join(file).display()),
        )
    };
    match std::fs::read_to_string(dir.join("w1_slave")) {
        Ok(text) => return parse_w1_slave(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(missing("w1_slave", e)),
    }
    match std::fs::read_to_string(dir.join("temperature")) {
        Ok(text) => parse_temperature(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if dir.is_dir() {
                Err(Bad::new(
                    BadKind::Missing,
                    format!("{} has no w1_slave or temperature file", dir.display()),
                ))
            } else {
                Err(Bad::new(
                    BadKind::Missing,
                    format!("{} is gone (sensor unplugged?)", dir.display()),
                ))
            }
        }
        Err(e) => Err(missing("temperature", e)),
    }
}

/// The temperature of a `w1_slave` file, in thousandths of °C.
pub fn parse_w1_slave(text: &str) -> Result<i64, Bad> {
    let mut lines = text.lines();
    let (Some(first), Some(second)) = (lines.next(), lines.next()) else {
        return Err(invalid(text, "not two lines"));
    };
    let first = first.trim();
    let millis = second
        .rsplit_once("t=")
        .and_then(|(_, t)| t.trim().parse::<i64>().ok());
    if first.ends_with("NO") {
        let verdict = first.rsplit_once(':').map_or(first, |(_, v)| v.trim());
        return Err(Bad {
            kind: BadKind::Crc,
            message: format!("CRC check failed ({verdict})"),
            millis,
        });
    }
    if !first.ends_with("YES") {
        return Err(invalid(
            text,
            "no CRC verdict (YES or NO) on the first line",
        ));
    }
    // A data line held low reads as all zero bytes, and their CRC is zero too: "YES".
    let bytes = first.split_once(':').map_or("", |(b, _)| b);
    if !bytes.trim().is_empty() && bytes.split_whitespace().all(|b| b == "00") {
        return Err(Bad {
            kind: BadKind::Invalid,
            message: "all bytes read 0 (data line held low, or the sensor is gone)".into(),
            millis,
        });
    }
    let Some(millis) = millis else {
        return Err(invalid(text, "no t=<number> on the second line"));
    };
    in_range(millis)
}

/// The temperature of a `temperature` file, in thousandths of °C.
pub fn parse_temperature(text: &str) -> Result<i64, Bad> {
    match text.trim().parse::<i64>() {
        Ok(millis) => in_range(millis),
        Err(_) => Err(invalid(text, "not a whole number")),
    }
}

fn in_range(millis: i64) -> Result<i64, Bad> {
    if RANGE_MILLIS.contains(&millis) {
        Ok(millis)
    } else {
        Err(Bad {
            kind: BadKind::Invalid,
            message: format!(
                "{} °C is outside the sensor's range (-55 to 125 °C)",
                millis as f64 / 1000.0
            ),
            millis: Some(millis),
        })
    }
}

fn invalid(text: &str, why: &str) -> Bad {
    let shown: String = text.chars().take(120).collect();
    Bad::new(BadKind::Invalid, format!("{why}: {shown:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n\
                        72 01 4b 46 7f ff 0e 10 57 t=23125\n";

    #[test]
    fn w1_slave_gives_millidegrees() {
        assert_eq!(parse_w1_slave(GOOD), Ok(23125));
        let negative = "5e ff 4b 46 7f ff 02 10 29 : crc=29 YES\n\
                        5e ff 4b 46 7f ff 02 10 29 t=-10125\n";
        assert_eq!(parse_w1_slave(negative), Ok(-10125));
    }

    #[test]
    fn a_crc_no_is_bad_and_keeps_what_it_showed() {
        let e = parse_w1_slave(&GOOD.replace("YES", "NO")).unwrap_err();
        assert_eq!(e.kind, BadKind::Crc);
        assert_eq!(e.millis, Some(23125));
        assert!(e.message.contains("crc=57 NO"), "{e}");
    }

    #[test]
    fn junk_is_invalid() {
        for text in [
            "",
            "72 01 : crc=57 YES\n",
            "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 t=\n",
            "72 01 4b 46 7f ff 0e 10 57 : crc=57 MAYBE\nx t=1\n",
            "00 00 00 00 00 00 00 00 00 : crc=00 YES\n00 00 00 00 00 00 00 00 00 t=0\n",
            "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=127937\n",
        ] {
            let e = parse_w1_slave(text).unwrap_err();
            assert_eq!(e.kind, BadKind::Invalid, "{text:?}: {e}");
        }
        assert_eq!(parse_temperature("23125\n"), Ok(23125));
        assert_eq!(parse_temperature("-55000"), Ok(-55000));
        assert_eq!(parse_temperature("hot").unwrap_err().kind, BadKind::Invalid);
    }

    #[test]
    fn ids_are_checked() {
        assert_eq!(
            check_sensor_id("28-0316A2794BFF").unwrap(),
            "28-0316a2794bff"
        );
        assert!(check_sensor_id("3a-0000001d2e3f")
            .unwrap_err()
            .contains("family 3a"));
        assert!(check_sensor_id("boiler").is_err());
        assert!(check_sensor_id("28-0316a2794bf").is_err());
        assert!(check_sensor_id("28_0316a2794bff").is_err());
        assert!(is_temperature_sensor("10-000802b4ba0e"));
        assert!(!is_temperature_sensor("w1_bus_master1"));
        assert!(
            !is_temperature_sensor("28-0316A2794BFF"),
            "the kernel writes lower case"
        );
        assert!(!is_temperature_sensor("3a-0000001d2e3f"));
    }
}
