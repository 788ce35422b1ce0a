//! Bad exec configs: every problem reported at once, each with its key path.

use std::path::Path;
use std::time::Duration;

use sensorgate_api::testing::spec;
use sensorgate_api::{ConfigError, Plugin};
use sensorgate_exec::{ExecConfig, Mode, PLUGIN};

fn errors(table: &str) -> Vec<ConfigError> {
    sensorgate_api::testing::build_errors(&PLUGIN, table)
}

fn at<'a>(errs: &'a [ConfigError], path: &str) -> &'a ConfigError {
    errs.iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no error at {path}: {errs:?}"))
}

#[test]
fn a_shell_string_is_refused_with_the_list_it_meant() {
    let e = errors("command = \"python3 /opt/dht22.py --pin 4\"");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].path, "command");
    assert!(e[0].message.contains("must be a list"), "{}", e[0]);
    assert!(
        e[0].message
            .contains(r#"command = ["python3", "/opt/dht22.py", "--pin", "4"]"#),
        "{}",
        e[0]
    );
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let e = errors(
        r#"
command = ["python3", 4]
env = { PIN = 4, OK = "yes", "A=B" = "x" }
mode = "sometimes"
stop_timeout = "soon"
restart_delay = "0s"
colour = "red"
"#,
    );
    assert!(
        at(&e, "command[1]").message.contains("expected a string"),
        "{e:?}"
    );
    assert!(
        at(&e, "env.PIN").message.contains("must be a string"),
        "{e:?}"
    );
    assert!(at(&e, "env.A=B")
        .message
        .contains("cannot be an environment variable name"));
    assert!(at(&e, "mode").message.contains("`stream`"), "{e:?}");
    assert!(at(&e, "stop_timeout").message.contains("not a duration"));
    assert!(at(&e, "restart_delay").message.contains("more than 0"));
    assert!(at(&e, "colour").message.contains("unknown key `colour`"));
    assert_eq!(e.len(), 7, "{e:?}");
}

#[test]
fn missing_or_empty_commands_and_misplaced_timeouts() {
    let e = errors("mode = \"poll\"");
    assert!(at(&e, "command").message.contains("missing"));
    let e = errors("command = []");
    assert!(at(&e, "command").message.contains("must name a program"));
    let e = errors("command = [\"\"]");
    assert!(at(&e, "command[0]").message.contains("must not be empty"));
    let e = errors("command = [\"x\"]\ntimeout = \"5s\"");
    assert!(at(&e, "timeout")
        .message
        .contains("only for mode = \"poll\""));
    let e = errors("command = [\"x\"]\nmode = \"poll\"\ntimeout = 5");
    assert!(at(&e, "timeout").message.contains("duration string"));
    let e = errors("command = [\"x\"]\nenv = \"A=1\"");
    assert!(at(&e, "env").message.contains("table of strings"));
    let e = errors("command = [\"x\"]\nworking_dir = 3");
    assert!(at(&e, "working_dir").message.contains("string"), "{e:?}");
    let e = errors("command = [\"x\"]\n[[point]]\nname = \"t\"");
    assert!(at(&e, "point").message.contains("unknown key"));
}

#[test]
fn defaults_and_a_full_config() {
    let s = spec("exec", "d", "command = [\"sensor\"]", Path::new("/x"));
    let c = ExecConfig::from_spec(&s).expect("builds");
    assert_eq!(c.mode, Mode::Stream);
    assert_eq!(c.timeout, Duration::from_secs(10));
    assert_eq!(c.stop_timeout, Duration::from_secs(5));
    assert_eq!(c.restart_delay, Duration::from_secs(1));
    assert!(c.env.is_empty() && c.working_dir.is_none());

    let s = spec(
        "exec",
        "d",
        r#"
command = ["python3", "read it.py"]
env = { PIN = "4" }
working_dir = "/opt/sensors"
mode = "poll"
timeout = "3s"
stop_timeout = "1s"
restart_delay = "2s"
"#,
        Path::new("/x"),
    );
    let c = ExecConfig::from_spec(&s).expect("builds");
    assert_eq!(c.mode, Mode::Poll);
    assert_eq!(c.timeout, Duration::from_secs(3));
    assert_eq!(c.env.get("PIN").map(String::as_str), Some("4"));
    assert_eq!(c.command_line(), "python3 \"read it.py\"");
    let a = PLUGIN.build(&s).expect("builds");
    assert!(a.points().is_empty(), "the program names its points");
    let d = a.describe();
    assert!(
        d.iter().any(|l| l == "command: python3 \"read it.py\""),
        "{d:?}"
    );
    assert!(d.iter().any(|l| l.starts_with("mode: poll")), "{d:?}");
}
