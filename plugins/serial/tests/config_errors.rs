//! Configuration mistakes are refused with the key path that holds them, all at once.

use sensorgate_api::testing::spec;
use sensorgate_api::{ConfigError, Plugin};
use sensorgate_serial::PLUGIN;

fn errors(table: &str) -> Vec<ConfigError> {
    sensorgate_api::testing::build_errors(&PLUGIN, table)
}

fn paths(errs: &[ConfigError]) -> Vec<&str> {
    errs.iter().map(|e| e.path.as_str()).collect()
}

fn has(errs: &[ConfigError], path: &str, words: &str) {
    assert!(
        errs.iter()
            .any(|e| e.path == path && e.message.contains(words)),
        "no error at {path:?} saying {words:?}: {errs:?}"
    );
}

#[test]
fn line_settings_are_checked_all_at_once() {
    let e = errors(
        r#"
port = "/dev/ttyUSB0"
baud = 0
parity = "X"
data_bits = 9
stop_bits = 3
delimiter = ""
max_line_length = 0
"#,
    );
    assert_eq!(
        paths(&e),
        [
            "baud",
            "parity",
            "data_bits",
            "stop_bits",
            "delimiter",
            "max_line_length"
        ]
    );
    has(&e, "parity", "\"X\" is not a parity");
}

#[test]
fn the_port_is_required() {
    let e = errors("format = \"kv\"\n");
    has(&e, "port", "missing");
}

#[test]
fn regex_format_needs_a_regex_with_named_groups() {
    has(
        &errors("port = \"/dev/ttyS0\"\nformat = \"regex\"\n"),
        "regex",
        "missing",
    );
    has(
        &errors("port = \"/dev/ttyS0\"\nformat = \"regex\"\nregex = 'T=([0-9]+)'\n"),
        "regex",
        "no named group",
    );
    has(
        &errors("port = \"/dev/ttyS0\"\nformat = \"regex\"\nregex = 'T=(?P<t>[0-9]+'\n"),
        "regex",
        "does not compile",
    );
    has(
        &errors("port = \"/dev/ttyS0\"\nformat = \"regex\"\nregex = 'T=(?P<Temp>[0-9]+)'\n"),
        "regex",
        "group name",
    );
}

#[test]
fn csv_needs_columns_that_are_point_names() {
    has(
        &errors("port = \"/dev/ttyS0\"\nformat = \"csv\"\n"),
        "columns",
        "missing",
    );
    let e = errors(
        "port = \"/dev/ttyS0\"\nformat = \"csv\"\ncolumns = [\"temp\", \"Hum\", \"temp\"]\n",
    );
    has(&e, "columns[1]", "\"Hum\"");
    has(&e, "columns[2]", "duplicate");
}

#[test]
fn keys_of_another_format_and_unknown_keys_are_refused() {
    let e =
        errors("port = \"/dev/ttyS0\"\nformat = \"json\"\ncolumns = [\"a\"]\nseparator = \";\"\n");
    has(&e, "columns", "only for format \"csv\"");
    has(&e, "separator", "only for format");
    has(
        &errors("port = \"/dev/ttyS0\"\nformat = \"xml\"\n"),
        "format",
        "\"xml\" is not a format",
    );
    let e = errors("port = \"/dev/ttyS0\"\nbaudrate = 9600\n");
    assert!(e[0].message.contains("baudrate"), "{e:?}");
    has(
        &errors("port = \"/dev/ttyS0\"\ntimeout = \"2s\"\n"),
        "timeout",
        "set `send`",
    );
    has(
        &errors("port = \"/dev/ttyS0\"\nsend = \"READ\\n\"\ntimeout = \"soon\"\n"),
        "timeout",
        "not a duration",
    );
}

#[test]
fn points_are_checked_each_with_its_path() {
    let e = errors(
        r#"
port = "/dev/ttyS0"
format = "csv"
columns = ["t", "h"]
[[point]]
name = "Temp"
key = "t"
[[point]]
name = "hum"
key = "x"
[[point]]
name = "h"
scale = "ten"
[[point]]
name = "t2"
key = "t"
colour = "red"
"#,
    );
    has(&e, "point[0].name", "\"Temp\"");
    has(&e, "point[1].key", "\"x\" is not one of `columns`");
    has(&e, "point[2].scale", "");
    has(&e, "point[3].colour", "unknown field");
}

#[test]
fn a_good_config_builds_and_lists_its_points() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let table = r#"
port = "/dev/ttyUSB0"
format = "csv"
columns = ["_", "temp", "hum"]
[[point]]
name = "temperature"
key = "temp"
unit = "°C"
device_class = "temperature"
state_class = "measurement"
scale = 0.1
"#;
    let adapter = PLUGIN
        .build(&spec("serial", "station", table, dir.path()))
        .expect("builds");
    let points = adapter.points();
    let names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["temperature", "hum"]);
    assert_eq!(points[0].unit.as_deref(), Some("°C"));
    assert_eq!(points[0].device_class.as_deref(), Some("temperature"));
    assert_eq!(points[0].state_class.as_deref(), Some("measurement"));
    assert!(points.iter().all(|p| !p.writable));
    let d = adapter.describe();
    assert_eq!(d[0], "port /dev/ttyUSB0 9600 8N1");
}

#[test]
fn messages_read_well() {
    for t in [
        "port = \"/dev/ttyS0\"\nbaudrate = 9600\n",
        "port = \"/dev/ttyS0\"\nformat = \"regex\"\nregex = 'T=(?P<t>[0-9]+'\n",
        "port = \"/dev/ttyS0\"\nonly_listed = true\n",
        "port = \"/dev/ttyS0\"\nbaud = \"fast\"\n",
    ] {
        for e in errors(t) {
            eprintln!("{e}");
            assert!(!e.message.contains('\n'), "one line: {e}");
        }
    }
}
