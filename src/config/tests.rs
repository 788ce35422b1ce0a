use super::*;

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new(main: &str) -> Dir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("sensorgate.toml"), main).expect("write");
        Dir { dir }
    }

    fn add(&self, name: &str, text: &str) -> &Dir {
        let d = self.dir.path().join("conf.d");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(name), text).expect("write");
        self
    }

    fn main(&self) -> PathBuf {
        self.dir.path().join("sensorgate.toml")
    }

    fn load(&self, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with_env(&self.main(), env.into_iter())
    }

    fn errors(&self, env: &[(&str, &str)]) -> Vec<LocatedError> {
        match self.load(env) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.0,
        }
    }
}

const SIM: &str = r#"
[[device]]
name = "demo"
plugin = "sim"
[[device.point]]
name = "count"
signal = "counter"
"#;

#[test]
fn an_empty_file_gives_the_defaults() {
    let d = Dir::new("");
    let c = d.load(&[]).expect("valid");
    assert_eq!(c.broker.listen, "127.0.0.1:1883");
    assert_eq!(c.gateway.topic_prefix, "sensorgate");
    assert_eq!(c.broker.max_payload_size, 256 * 1024);
    assert_eq!(c.buffer.max_bytes, 64 * 1024 * 1024);
    assert_eq!(c.buffer.durability, Durability::Always);
    assert!(c.upstream.is_none());
    assert!(!c.gateway.id.is_empty());
    assert!(c.devices.is_empty());
}

#[test]
fn sizes_and_durations_are_human_strings() {
    let d = Dir::new(
        "[broker]\nmax_payload_size = \"1 KiB\"\nmax_keepalive = \"90s\"\n[buffer]\nmax_age = \"7d\"\n",
    );
    let c = d.load(&[]).expect("valid");
    assert_eq!(c.broker.max_payload_size, 1024);
    assert_eq!(c.broker.max_keepalive, Duration::from_secs(90));
    assert_eq!(c.buffer.max_age, Duration::from_secs(7 * 86400));

    let d = Dir::new("[broker]\nmax_payload_size = \"lots\"\n[buffer]\nmax_age = \"soon\"\n");
    let e = d.errors(&[]);
    assert_eq!(e.len(), 2, "one error per section: {e:?}");
    assert_eq!(e[0].path, "broker.max_payload_size");
    assert!(e[0].message.contains("not a size"), "{}", e[0]);
    assert_eq!(e[1].path, "buffer.max_age");
    assert!(e[1].message.contains("not a duration"), "{}", e[1]);
}

#[test]
fn conf_d_files_add_devices_in_name_order() {
    let d = Dir::new(SIM);
    d.add(
        "20-b.toml",
        "[[device]]\nname = \"b\"\nplugin = \"sim\"\n[[device.point]]\nname = \"x\"\nsignal = \"counter\"\n",
    )
    .add(
        "10-a.toml",
        "[gateway]\ntopic_prefix = \"site\"\n[[device]]\nname = \"a\"\nplugin = \"sim\"\n[[device.point]]\nname = \"x\"\nsignal = \"counter\"\n",
    )
    .add("notes.txt", "not toml at all [");
    let c = d.load(&[]).expect("valid");
    let names: Vec<&str> = c.devices.iter().map(|d| &*d.spec.name).collect();
    assert_eq!(names, ["demo", "a", "b"]);
    assert_eq!(c.gateway.topic_prefix, "site");
    assert!(c.devices[2].file.ends_with("conf.d/20-b.toml"));
    assert_eq!(c.files.len(), 3);
}

#[test]
fn an_error_names_the_file_and_full_key_path() {
    let d = Dir::new(SIM);
    d.add(
        "10-x.toml",
        "[[device]]\nname = \"x\"\nplugin = \"sim\"\n[[device.point]]\nname = \"ok\"\nsignal = \"counter\"\n[[device.point]]\nname = \"bad\"\nsignal = \"sawtooth\"\n",
    );
    let e = d.errors(&[]);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].path, "device[1].point[1].signal");
    let shown = e[0].to_string();
    assert!(
        shown.contains("conf.d/10-x.toml: device[1].point[1].signal: unknown variant"),
        "{shown}"
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let d = Dir::new(
        r#"
colour = "blue"
[gateway]
topic_prefix = "a/#"
[broker]
listen = "localhost"
[[device]]
name = "Bad Name"
plugin = "sim"
[[device]]
name = "two"
plugin = "nonesuch"
[[device]]
name = "three"
plugin = "sim"
poll_interval = "often"
[[device.point]]
name = "c"
signal = "counter"
"#,
    );
    let e = d.errors(&[]);
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "colour",
        "gateway.topic_prefix",
        "broker.listen",
        "device[0].name",
        "device[1].plugin",
        "device[2].poll_interval",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
}

#[test]
fn unknown_keys_are_errors() {
    let d = Dir::new("[broker]\nlisten = \"127.0.0.1:1883\"\nlistne_v5 = \"\"\n");
    let e = d.errors(&[]);
    assert_eq!(e[0].path, "broker.listne_v5");
    assert!(
        e[0].message.contains("unknown field `listne_v5`"),
        "{}",
        e[0]
    );
    assert!(e[0].to_string().contains("sensorgate.toml"), "{}", e[0]);
}

#[test]
fn environment_variables_override_single_keys() {
    let d = Dir::new("[gateway]\nid = \"from-file\"\n");
    let c = d
        .load(&[
            ("SENSORGATE__BROKER__LISTEN", "127.0.0.1:1999"),
            ("SENSORGATE__GATEWAY__ID", "007"),
            ("SENSORGATE__BROKER__MAX_CONNECTIONS", "5"),
            ("OTHER", "x"),
        ])
        .expect("valid");
    assert_eq!(c.broker.listen, "127.0.0.1:1999");
    assert_eq!(
        c.gateway.id, "007",
        "a string key keeps the text it was given"
    );
    assert_eq!(c.broker.max_connections, 5);

    let e = d.errors(&[("SENSORGATE__BROKER__MAX_CONNECTIONS", "many")]);
    assert_eq!(e[0].path, "broker.max_connections");
    assert_eq!(
        e[0].source,
        Source::Env("SENSORGATE__BROKER__MAX_CONNECTIONS".into())
    );
}

#[test]
fn a_network_listener_needs_auth_or_an_explicit_allow_anonymous() {
    let d = Dir::new("[broker]\nlisten = \"0.0.0.0:1883\"\n");
    let e = d.errors(&[]);
    assert_eq!(e[0].path, "broker.allow_anonymous");
    let d = Dir::new("[broker]\nlisten = \"0.0.0.0:1883\"\nallow_anonymous = true\n");
    assert!(d.load(&[]).is_ok());
}

#[test]
fn syntax_errors_name_the_file_and_line() {
    let d = Dir::new("[broker\nlisten = 1\n");
    let e = d.errors(&[]);
    let shown = e[0].to_string();
    assert!(shown.contains("sensorgate.toml"), "{shown}");
    assert!(shown.contains("line 1"), "{shown}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let e = Config::load_with_env(
        Path::new("/nonexistent/sensorgate.toml"),
        std::iter::empty(),
    )
    .expect_err("missing");
    assert!(
        e.to_string()
            .contains("/nonexistent/sensorgate.toml: cannot read"),
        "{e}"
    );
}

#[test]
fn device_names_are_unique_and_plugins_known() {
    let d = Dir::new(&format!("{SIM}{SIM}"));
    let e = d.errors(&[]);
    assert_eq!(e[0].path, "device[1].name");
    assert!(e[0].message.contains("unique"));

    let d = Dir::new("[[device]]\nname = \"m\"\nplugin = \"zigbee\"\n");
    let e = d.errors(&[]);
    assert_eq!(e[0].path, "device[0].plugin");
    assert!(e[0].message.contains("unknown plugin"), "{}", e[0]);
    // A first-party plugin left out of a build is named as such.
    assert!(crate::plugins::unknown_message("onewire").contains("onewire"));
}

#[test]
fn a_single_device_table_is_explained() {
    let d = Dir::new("[device]\nname = \"x\"\n");
    let e = d.errors(&[]);
    assert!(e[0].message.contains("[[device]]"), "{}", e[0]);
}

#[test]
fn a_point_may_not_take_the_availability_topic() {
    let d = Dir::new(&SIM.replace("\"count\"", "\"availability\""));
    let e = d.errors(&[]);
    assert_eq!(e[0].path, "device[0].point[0].name");
    assert!(e[0].message.contains("reserved"), "{}", e[0]);
}

#[test]
fn upstream_protocol_is_v4_or_v5() {
    let d = Dir::new("[upstream]\nurl = \"mqtt://h\"\nprotocol = \"v6\"\n");
    let e = d.errors(&[]);
    assert_eq!(e[0].path, "upstream.protocol", "{}", e[0]);
    let d = Dir::new("[upstream]\nurl = \"mqtt://h\"\nprotocol = \"v5\"\n");
    assert!(d.load(&[]).is_ok());
}

#[test]
fn upstream_keys_are_checked() {
    let d = Dir::new(
        r#"
[upstream]
url = "http://example.com"
protocol = "v5"
cert_file = "/x.pem"
[[upstream.route]]
filter = "a/#/b"
local_prefix = "x/+"
"#,
    );
    let paths: Vec<String> = d.errors(&[]).into_iter().map(|e| e.path).collect();
    for want in [
        "upstream.url",
        "upstream.key_file",
        "upstream.route[0].filter",
        "upstream.route[0].local_prefix",
    ] {
        assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
    }
}

#[test]
fn broker_files_are_checked_with_file_and_key() {
    let d = Dir::new("");
    let dir = d.dir.path();
    let missing = dir.join("nope.passwd");
    let bad_acl = dir.join("bad.acl");
    std::fs::write(&bad_acl, "topic sometimes a/b\n").expect("write");
    std::fs::write(
        d.main(),
        format!(
            "[broker]\npassword_file = \"{}\"\nacl_file = \"{}\"\n",
            missing.display(),
            bad_acl.display()
        ),
    )
    .expect("write");
    let e = d.errors(&[]);
    assert_eq!(e[0].path, "broker.password_file");
    assert!(e[0].message.contains("nope.passwd"), "{}", e[0]);
    assert_eq!(e[1].path, "broker.acl_file");
    assert!(e[1].message.contains("bad.acl:1"), "{}", e[1]);
}

#[test]
fn the_tls_listener_needs_a_readable_certificate_and_key() {
    let d = Dir::new("[broker]\nlisten_tls = \"127.0.0.1:8883\"\n");
    let e = d.errors(&[]);
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["broker.cert_file", "broker.key_file"]);

    let cert = d.dir.path().join("missing.pem");
    std::fs::write(
        d.main(),
        format!(
            "[broker]\nlisten_tls = \"127.0.0.1:8883\"\ncert_file = \"{0}\"\nkey_file = \"{0}\"\n",
            cert.display()
        ),
    )
    .expect("write");
    let e = d.errors(&[]);
    assert_eq!(e[0].path, "broker.cert_file");
    assert!(e[0].message.contains("missing.pem"), "{}", e[0]);

    let d = Dir::new("[broker]\ncert_file = \"c.pem\"\n");
    let e = d.errors(&[]);
    assert_eq!(e[0].path, "broker.cert_file");
    assert!(e[0].message.contains("listen_tls"), "{}", e[0]);

    let d = Dir::new(
        "[broker]\nlisten_tls = \"127.0.0.1:1883\"\ncert_file = \"c\"\nkey_file = \"k\"\n",
    );
    let e = d.errors(&[]);
    assert!(e
        .iter()
        .any(|e| e.path == "broker.listen_tls" && e.message.contains("broker.listen")));
}

#[test]
fn a_network_tls_listener_needs_auth_or_an_explicit_allow_anonymous() {
    let d = Dir::new("[broker]\nlisten_tls = \"0.0.0.0:8883\"\n");
    let e = d.errors(&[]);
    assert!(
        e.iter().any(|e| e.path == "broker.allow_anonymous"),
        "{e:?}"
    );
}
