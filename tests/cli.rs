//! The `check` command and config errors, as a user sees them.

mod common;

use common::*;

#[test]
fn check_lists_the_demo_devices_and_points() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/config/sensorgate.toml");
    let (ok, out, err) = sensorgate(&["check", "--config", demo]);
    assert!(ok, "{err}");
    assert!(out.contains("device demo (plugin sim"), "{out}");
    for point in ["temperature", "humidity", "counter", "firmware"] {
        assert!(
            out.contains(&format!("sensorgate/demo/{point}")),
            "{point}: {out}"
        );
    }
}

#[test]
fn bad_configs_exit_non_zero_naming_file_and_key() {
    let s = Setup::new(
        r#"
[[device]]
name = "ok"
plugin = "sim"
[[device.point]]
name = "c"
signal = "counter"

[[device]]
name = "bad"
plugin = "sim"
[[device.point]]
name = "t"
signal = "triangle"
"#,
    );
    std::fs::create_dir_all(s.dir.path().join("conf.d")).expect("mkdir");
    std::fs::write(
        s.dir.path().join("conf.d/50-more.toml"),
        "[broker]\nmax_connections = \"lots\"\n",
    )
    .expect("write");
    let cfg = s.config();
    let cfg = cfg.to_str().expect("utf8");
    for cmd in ["check", "run"] {
        let (ok, _out, err) = sensorgate(&[cmd, "--config", cfg]);
        assert!(!ok, "{cmd} must fail");
        assert!(
            err.contains(&format!(
                "{cfg}: device[1].point[0].signal: unknown variant `triangle`"
            )),
            "{cmd}: {err}"
        );
        assert!(
            err.contains("conf.d/50-more.toml: broker.max_connections"),
            "{cmd}: every error at once: {err}"
        );
    }
}

#[test]
fn a_missing_config_says_so() {
    let (ok, _out, err) = sensorgate(&["check", "--config", "/nonexistent/x.toml"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/x.toml"), "{err}");
}

#[test]
fn version_prints_the_version() {
    let (ok, out, _) = sensorgate(&["--version"]);
    assert!(ok);
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
}
