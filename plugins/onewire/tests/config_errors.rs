//! Bad onewire configs: each error has the key path of the problem, and all come back at
//! once.

use sensorgate_api::testing as common;
use sensorgate_api::{ConfigError, Plugin};
use sensorgate_onewire::PLUGIN;

fn errors(table: &str) -> Vec<ConfigError> {
    sensorgate_api::testing::build_errors(&PLUGIN, table)
}

fn one_error(table: &str) -> ConfigError {
    sensorgate_api::testing::build_error(&PLUGIN, table)
}

fn builds(table: &str) {
    let dir = tempfile::TempDir::new().expect("temp dir");
    if let Err(e) = PLUGIN.build(&common::spec("onewire", "d", table, dir.path())) {
        panic!("does not build: {e:?}\n{table}");
    }
}

#[test]
fn defaults_build_without_a_bus() {
    builds("");
    builds("point = []\n");
    builds("root = \"/nonexistent/w1\"\n[[point]]\nname = \"28-0316a2794bff\"\n");
    // Ids are taken in either case; the kernel's folders are lower case.
    builds("[[point]]\nname = \"boiler\"\nsensor = \"28-0316A2794BFF\"\n");
}

#[test]
fn unknown_keys_are_named() {
    let e = one_error("interval = \"5s\"\n");
    assert_eq!(e.path, "interval");
    assert!(e.message.contains("unknown field `interval`"), "{e}");
    assert!(!e.message.contains('\n'), "{:?}", e.message);

    let e = one_error("[[point]]\nname = \"28-0316a2794bff\"\nscale = 2\n");
    assert_eq!(e.path, "point[0].scale");
    assert!(e.message.contains("unknown field `scale`"), "{e}");
}

#[test]
fn sensor_ids_are_checked() {
    let e = one_error("[[point]]\nname = \"boiler\"\nsensor = \"28-xyz\"\n");
    assert_eq!(e.path, "point[0].sensor");
    assert!(e.message.contains("not a 1-wire sensor id"), "{e}");

    let e = one_error("[[point]]\nname = \"door\"\nsensor = \"3a-0000001d2e3f\"\n");
    assert_eq!(e.path, "point[0].sensor");
    assert!(e.message.contains("family 3a"), "{e}");

    // A name that is no sensor id needs `sensor`.
    let e = one_error("[[point]]\nname = \"boiler_flow\"\n");
    assert_eq!(e.path, "point[0].sensor");
    assert!(e.message.contains("missing"), "{e}");
}

#[test]
fn names_and_sensors_are_unique() {
    let e = one_error(
        "[[point]]\nname = \"a\"\nsensor = \"28-0316a2794bff\"\n\
         [[point]]\nname = \"a\"\nsensor = \"28-3c01d607d1a2\"\n",
    );
    assert_eq!(e.path, "point[1].name");
    assert!(
        e.message.contains("duplicate") && e.message.contains("point[0]"),
        "{e}"
    );

    let e = one_error(
        "[[point]]\nname = \"28-0316a2794bff\"\n\
         [[point]]\nname = \"b\"\nsensor = \"28-0316a2794bff\"\n",
    );
    assert_eq!(e.path, "point[1].sensor");
    assert!(e.message.contains("already read by point[0]"), "{e}");
}

#[test]
fn values_are_checked() {
    let e = one_error("[[point]]\nname = \"28-0316a2794bff\"\nunit = \"%\"\n");
    assert_eq!(e.path, "point[0].unit");
    assert!(e.message.contains("°F"), "{e}");
    let e = one_error("[[point]]\nname = \"28-0316a2794bff\"\noffset = nan\n");
    assert_eq!(e.path, "point[0].offset");
    let e = one_error("[[point]]\nname = \"28-0316a2794bff\"\noffset = \"0.5\"\n");
    assert_eq!(e.path, "point[0].offset");
    let e = one_error("timeout = \"0s\"\n");
    assert_eq!(e.path, "timeout");
    let e = one_error("timeout = \"soon\"\n");
    assert_eq!(e.path, "timeout");
    assert!(e.message.contains("not a duration"), "{e}");
    let e = one_error("offline_after = 0\n");
    assert_eq!(e.path, "offline_after");
    let e = one_error("root = \"\"\n");
    assert_eq!(e.path, "root");
    let e = one_error("point = [3]\n");
    assert_eq!(e.path, "point[0]");
    assert!(e.message.contains("table"), "{e}");
}

#[test]
fn every_error_comes_back_at_once() {
    let e = errors(
        r#"
        rot = "/sys/bus/w1/devices"
        timeout = "0s"
        offline_after = 0

        [[point]]
        name = "Boiler Flow"
        sensor = "28-0316a2794bff"

        [[point]]
        name = "return"

        [[point]]
        name = "ok"
        sensor = "28-3c01d607d1a2"
        colour = "red"

        [[point]]
        name = "ok"
        sensor = "28-3c01d607d1a2"
        unit = "F"
        offset = inf
        "#,
    );
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "rot",
            "timeout",
            "offline_after",
            "point[0].name",
            "point[1].sensor",
            "point[2].colour",
            "point[3].name",
            "point[3].offset",
        ],
        "{e:#?}"
    );
}
