//! Bad Modbus configs: each error has the key path of the problem, all come back at once,
//! and none panics.

use sensorgate_api::ConfigError;

mod common;
use common::errors;

fn one_error(table: &str) -> ConfigError {
    let mut e = errors(table);
    assert_eq!(e.len(), 1, "expected one error, got {e:?}");
    e.remove(0)
}

const TCP: &str = "address = \"127.0.0.1:502\"\n";

fn with_point(point: &str) -> String {
    format!("{TCP}[[point]]\nname = \"a\"\naddress = 0\n{point}")
}

#[test]
fn unknown_keys_are_named() {
    let e = errors(&format!(
        "{TCP}colour = 1\nspeed = 2\ntimeout = 3\n[[point]]\nname = \"a\"\naddress = 0\n"
    ));
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["colour", "speed", "timeout"],
        "all device keys at once: {e:?}"
    );
    let e = one_error(&format!(
        "{TCP}colour = 1\n[[point]]\nname = \"a\"\naddress = 0\n"
    ));
    assert_eq!(e.path, "colour");
    assert!(e.message.contains("unknown field `colour`"), "{e}");
    let e = one_error(&with_point("colour = 1\n"));
    assert_eq!(e.path, "point[0].colour");
}

#[test]
fn a_bad_type_lists_the_good_ones() {
    let e = one_error(&with_point("type = \"float\"\n"));
    assert_eq!(e.path, "point[0].type");
    assert!(
        e.message.contains("`f32`") && e.message.contains("`string`"),
        "{e}"
    );
    let e = one_error(&with_point("byte_order = \"ABDC\"\n"));
    assert_eq!(e.path, "point[0].byte_order");
    assert!(e.message.contains("CDAB"), "{e}");
    let e = one_error(&with_point("table = \"holdings\"\n"));
    assert_eq!(e.path, "point[0].table");
}

#[test]
fn every_problem_comes_back_at_once() {
    let table = format!(
        "{TCP}timeout = \"soon\"\n\
         [[point]]\nname = \"Bad Name\"\naddress = 0\n\
         [[point]]\nname = \"b\"\naddress = 1\ntype = \"f32\"\nbit = 3\n\
         [[point]]\nname = \"c\"\naddress = 2\ntable = \"input\"\nwritable = true\n\
         [[point]]\nname = \"b\"\naddress = 70000\n\
         [[point]]\nname = \"s\"\naddress = 9\ntype = \"string\"\n"
    );
    let e = errors(&table);
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "timeout",
            "point[0].name",
            "point[1].bit",
            "point[2].writable",
            "point[3].name",
            "point[3].address",
            "point[4].length"
        ],
        "{e:#?}"
    );
    assert!(e[0].message.contains("not a duration"), "{}", e[0]);
    assert!(e[4].message.contains("duplicate"), "{}", e[4]);
}

#[test]
fn transport_keys_must_match_the_transport() {
    let e = errors("port = \"/dev/ttyUSB0\"\naddress = \"1.2.3.4\"\nbaud = 0\nstop_bits = 3\n[[point]]\nname = \"a\"\naddress = 0\n");
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["address", "baud", "stop_bits"], "{e:#?}");

    let e = one_error("transport = \"tcp\"\nbaud = 9600\naddress = \"h:1\"\n[[point]]\nname = \"a\"\naddress = 0\n");
    assert_eq!(e.path, "baud");
    assert!(e.message.contains("only for transport \"rtu\""), "{e}");

    let e = one_error("transport = \"tcp\"\n[[point]]\nname = \"a\"\naddress = 0\n");
    assert_eq!(e.path, "address");
    assert!(e.message.contains("missing"), "{e}");

    let e = one_error("transport = \"rtu\"\n[[point]]\nname = \"a\"\naddress = 0\n");
    assert_eq!(e.path, "port");

    let e = one_error("transport = \"udp\"\n[[point]]\nname = \"a\"\naddress = 0\n");
    assert_eq!(e.path, "transport");
    assert!(e.message.contains("rtu-over-tcp"), "{e}");

    let e = one_error("port = \"/dev/ttyUSB0\"\nunit = 0\n[[point]]\nname = \"a\"\naddress = 0\n");
    assert_eq!(e.path, "unit");
    let e = one_error(&format!(
        "{TCP}unit = 256\n[[point]]\nname = \"a\"\naddress = 0\n"
    ));
    assert_eq!(e.path, "unit");
    let e = one_error(
        "port = \"/dev/ttyUSB0\"\nparity = \"X\"\n[[point]]\nname = \"a\"\naddress = 0\n",
    );
    assert_eq!(e.path, "parity");
    assert!(e.message.contains("\"N\", \"E\" or \"O\""), "{e}");
}

#[test]
fn keys_that_do_not_fit_the_point_are_errors() {
    let e = one_error(&with_point("table = \"coil\"\ntype = \"u16\"\n"));
    assert_eq!(e.path, "point[0].type");
    let e = one_error(&with_point("table = \"coil\"\nscale = 2.0\n"));
    assert_eq!(e.path, "point[0].scale");
    let e = one_error(&with_point("length = 2\n"));
    assert_eq!(e.path, "point[0].length");
    let e = one_error(&with_point("type = \"string\"\nlength = 4\nscale = 2.0\n"));
    assert_eq!(e.path, "point[0].scale");
    let e = one_error(&with_point(
        "type = \"string\"\nlength = 4\nbyte_order = \"CDAB\"\n",
    ));
    assert_eq!(e.path, "point[0].byte_order");
    let e = one_error(&with_point("bit = 16\n"));
    assert_eq!(e.path, "point[0].bit");
    let e = one_error(&with_point("scale = 0.0\n"));
    assert_eq!(e.path, "point[0].scale");
    let e = one_error(&with_point("min = 10\nmax = 1\n"));
    assert_eq!(e.path, "point[0].min");
    let e = one_error(&with_point("poll_interval = \"0s\"\n"));
    assert_eq!(e.path, "point[0].poll_interval");
    let e = one_error(&with_point("table = \"discrete\"\nwritable = true\n"));
    assert_eq!(e.path, "point[0].writable");
    let e = one_error(&with_point("type = \"string\"\nlength = 126\n"));
    assert_eq!(e.path, "point[0].length");
    let e = one_error(&format!(
        "{TCP}max_registers_per_read = 2\n[[point]]\nname = \"a\"\naddress = 0\ntype = \"f64\"\n"
    ));
    assert_eq!(e.path, "point[0].type");
    let e = one_error(&format!(
        "{TCP}[[point]]\nname = \"a\"\naddress = 65535\ntype = \"u32\"\n"
    ));
    assert_eq!(e.path, "point[0].address");
    assert!(e.message.contains("65535"), "{e}");
}

#[test]
fn limits_are_checked() {
    let e = one_error(&format!(
        "{TCP}max_registers_per_read = 126\n[[point]]\nname = \"a\"\naddress = 0\n"
    ));
    assert_eq!(e.path, "max_registers_per_read");
    let e = one_error(&format!(
        "{TCP}max_bits_per_read = 0\n[[point]]\nname = \"a\"\naddress = 0\n"
    ));
    assert_eq!(e.path, "max_bits_per_read");
    let e = one_error(&format!(
        "{TCP}timeout = \"0s\"\n[[point]]\nname = \"a\"\naddress = 0\n"
    ));
    assert_eq!(e.path, "timeout");
}

#[test]
fn a_device_needs_points() {
    let e = one_error(TCP);
    assert_eq!(e.path, "point");
    let e = one_error(&format!("{TCP}point = 3\n"));
    assert_eq!(e.path, "point");
    let e = one_error(&format!("{TCP}[[point]]\naddress = 0\n"));
    assert_eq!(e.path, "point[0]");
    assert!(e.message.contains("missing field `name`"), "{e}");
}

#[test]
fn good_configs_build_with_their_defaults() {
    use sensorgate_api::Plugin;
    let spec = common::spec(
        "d",
        std::time::Duration::from_secs(5),
        "port = \"/dev/ttyUSB0\"\nbaud = 19200\nparity = \"even\"\nbyte_order = \"CDAB\"\n\
         [[point]]\nname = \"a\"\naddress = 0\ntype = \"f32\"\n",
    );
    let cfg = sensorgate_modbus::ModbusConfig::from_spec(&spec).expect("builds");
    assert_eq!(cfg.unit, 1);
    assert_eq!(cfg.timeout, std::time::Duration::from_secs(1));
    assert_eq!(cfg.max_gap, 10);
    assert_eq!(cfg.max_registers_per_read, 125);
    assert_eq!(cfg.max_bits_per_read, 2000);
    assert_eq!(cfg.transport.to_string(), "rtu /dev/ttyUSB0 19200 8E1");
    assert_eq!(
        cfg.points[0].format.order.name(),
        "CDAB",
        "the device's default"
    );
    let adapter = sensorgate_modbus::PLUGIN.build(&spec).expect("builds");
    assert_eq!(adapter.points()[0].source, "holding 0..1 f32 CDAB");
}
