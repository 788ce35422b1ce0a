//! Bad sim configs: each error has the key path of the problem, and all come back at once.

use sensorgate_api::ConfigError;
use sensorgate_sim::PLUGIN;

fn errors(table: &str) -> Vec<ConfigError> {
    sensorgate_api::testing::build_errors(&PLUGIN, table)
}

fn one_error(table: &str) -> ConfigError {
    sensorgate_api::testing::build_error(&PLUGIN, table)
}

#[test]
fn unknown_keys_are_named() {
    let e = one_error("[[point]]\nname = \"a\"\nsignal = \"sine\"\ncolour = \"red\"\n");
    assert_eq!(e.path, "point[0].colour");
    assert!(e.message.contains("unknown field `colour`"), "{e}");

    let e = one_error("speed = 3\n[[point]]\nname = \"a\"\nsignal = \"counter\"\n");
    assert_eq!(e.path, "speed");
    assert!(e.message.contains("unknown field `speed`"), "{e}");
}

#[test]
fn a_bad_signal_lists_the_good_ones() {
    let e = one_error("[[point]]\nname = \"a\"\nsignal = \"square\"\n");
    assert_eq!(e.path, "point[0].signal");
    assert!(e.message.contains("unknown variant `square`"), "{e}");
    assert!(e.message.contains("expected one of"), "{e}");
    assert!(
        e.message.contains("`sine`") && e.message.contains("`constant`"),
        "{e}"
    );
}

#[test]
fn a_constant_needs_a_value() {
    let e = one_error("[[point]]\nname = \"a\"\nsignal = \"constant\"\n");
    assert_eq!(e.path, "point[0].value");
    assert!(e.message.contains("constant"), "{e}");

    let e = one_error("[[point]]\nname = \"a\"\nsignal = \"constant\"\nvalue = [1, 2]\n");
    assert_eq!(e.path, "point[0].value");
    assert!(e.message.contains("integer, float, bool or string"), "{e}");
}

#[test]
fn keys_of_another_signal_are_errors() {
    let e = one_error("[[point]]\nname = \"a\"\nsignal = \"sine\"\nvalue = 3\n");
    assert_eq!(e.path, "point[0].value");
    assert!(e.message.contains("\"constant\""), "{e}");
    assert!(e.message.contains("\"sine\""), "{e}");

    let e = one_error("[[point]]\nname = \"a\"\nsignal = \"counter\"\nperiod = \"5s\"\n");
    assert_eq!(e.path, "point[0].period");
    assert!(e.message.contains("\"sine\""), "{e}");

    let e = one_error("[[point]]\nname = \"a\"\nsignal = \"constant\"\nvalue = 1\nmin = 0\n");
    assert_eq!(e.path, "point[0].min");
    assert!(e.message.contains("\"sine\" and \"random\""), "{e}");
}

#[test]
fn names_are_checked_and_unique() {
    let e = one_error("[[point]]\nname = \"Temp/1\"\nsignal = \"counter\"\n");
    assert_eq!(e.path, "point[0].name");

    let e = one_error(
        "[[point]]\nname = \"a\"\nsignal = \"counter\"\n\
         [[point]]\nname = \"b\"\nsignal = \"counter\"\n\
         [[point]]\nname = \"a\"\nsignal = \"sine\"\n",
    );
    assert_eq!(e.path, "point[2].name");
    assert!(
        e.message.contains("duplicate") && e.message.contains("point[0]"),
        "{e}"
    );
}

#[test]
fn numbers_are_checked() {
    let e = one_error("[[point]]\nname = \"a\"\nsignal = \"random\"\nmin = 10\nmax = 5\n");
    assert_eq!(e.path, "point[0].min");
    let e = one_error("[[point]]\nname = \"a\"\nsignal = \"sine\"\nperiod = \"0s\"\n");
    assert_eq!(e.path, "point[0].period");
    let e = one_error("[[point]]\nname = \"a\"\nsignal = \"sine\"\nperiod = \"soon\"\n");
    assert_eq!(e.path, "point[0].period");
    assert!(e.message.contains("not a duration"), "{e}");
    let e = one_error("[[point]]\nname = \"a\"\nsignal = \"sine\"\nmax = nan\n");
    assert_eq!(e.path, "point[0].max");
    let e = one_error("[[point]]\nname = \"a\"\nsignal = \"random\"\ndecimals = 40\n");
    assert_eq!(e.path, "point[0].decimals");
}

#[test]
fn a_device_needs_points() {
    let e = one_error("");
    assert_eq!(e.path, "point");
    let e = one_error("point = []\n");
    assert_eq!(e.path, "point");
}

#[test]
fn every_error_comes_back_at_once() {
    let e = errors(
        r#"
        [[point]]
        name = "ok"
        signal = "sine"
        value = 1

        [[point]]
        name = "b"
        signal = "square"

        [[point]]
        name = "c"
        signal = "constant"

        [[point]]
        name = "ok"
        signal = "counter"
        colour = "red"

        [[point]]
        name = "Bad Name"
        signal = "random"
        "#,
    );
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "point[0].value",
            "point[1].signal",
            "point[2].value",
            "point[3].name",
            "point[3].colour",
            "point[4].name",
        ],
        "{e:#?}"
    );
}

#[test]
fn messages_are_one_clean_line() {
    let e = one_error("[[point]]\nname = \"a\"\nsignal = \"square\"\n");
    assert!(!e.message.contains('\n'), "{:?}", e.message);
    let e = one_error("points = 1\n");
    assert_eq!(e.path, "points");
    assert!(!e.message.contains('\n'), "{:?}", e.message);
    let e = one_error("point = [3]\n");
    assert_eq!(e.path, "point[0]");
    assert!(e.message.contains("table"), "{e}");
}
