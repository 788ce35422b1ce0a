//! Logging: the `log` facade to the journal when systemd started us (JOURNAL_STREAM
//! names our stderr), to stderr otherwise; and rumqttd's `tracing` events forwarded into
//! it without their spans (through tracing's own `log` bridge each span becomes an
//! ERROR record: thousands of lines for a few thousand publishes).
//!
//! In the journal a record's key-values become fields: the daemon writes
//! `log::warn!(device = name, point; "…")`, so `journalctl -u sensorgate DEVICE=boiler`
//! (and `POINT=`, `PLUGIN=`) select them. Records logged inside [`device_scope`] (a
//! device's adapter, plugin code included) get `DEVICE=` and `PLUGIN=` added when they
//! do not name a device themselves. On stderr the message text alone is printed (it
//! names the device already).

use std::io::Write;
use std::str::FromStr;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The level from `--log-level`, else `RUST_LOG` when it is a plain level, else info.
pub fn level(cli: Option<&str>) -> LevelFilter {
    let from_env = std::env::var("RUST_LOG").ok();
    cli.or(from_env.as_deref())
        .and_then(|s| LevelFilter::from_str(s.trim()).ok())
        .unwrap_or(LevelFilter::Info)
}

/// Install the logger once, at start.
pub fn init(level: LevelFilter) {
    let journal = systemd_journal_logger::connected_to_journal()
        .then(|| systemd_journal_logger::JournalLog::new().ok())
        .flatten();
    let installed = match journal {
        Some(j) => log::set_boxed_logger(Box::new(Journal(
            j.with_syslog_identifier("sensorgate".to_string()),
        )))
        .is_ok(),
        None => log::set_boxed_logger(Box::new(Stderr)).is_ok(),
    };
    if installed {
        log::set_max_level(level);
    }
    let _ = tracing::subscriber::set_global_default(ForwardEvents);
}

/// The device (name, plugin) whose adapter runs in the current task.
#[derive(Clone)]
struct Scope {
    device: std::sync::Arc<str>,
    plugin: String,
}

tokio::task_local! {
    static SCOPE: Scope;
}

/// Run `fut` (a device's adapter) so that the journal records it logs carry
/// `DEVICE=device` and `PLUGIN=plugin` (tasks it spawns do not inherit them).
pub async fn device_scope<F: std::future::Future>(
    device: std::sync::Arc<str>,
    plugin: &str,
    fut: F,
) -> F::Output {
    let scope = Scope {
        device,
        plugin: plugin.to_string(),
    };
    SCOPE.scope(scope, fut).await
}

/// A record's own key-values, then the scope's DEVICE and PLUGIN unless it has them.
struct WithScope<'a> {
    own: &'a dyn log::kv::Source,
    scope: &'a Scope,
}

impl log::kv::Source for WithScope<'_> {
    fn visit<'kvs>(
        &'kvs self,
        visitor: &mut dyn log::kv::VisitSource<'kvs>,
    ) -> Result<(), log::kv::Error> {
        self.own.visit(visitor)?;
        if self.own.get(log::kv::Key::from("device")).is_none() {
            visitor.visit_pair(
                log::kv::Key::from("device"),
                log::kv::Value::from(&*self.scope.device),
            )?;
        }
        if self.own.get(log::kv::Key::from("plugin")).is_none() {
            visitor.visit_pair(
                log::kv::Key::from("plugin"),
                log::kv::Value::from(self.scope.plugin.as_str()),
            )?;
        }
        Ok(())
    }
}

/// The journal logger, with the device scope added to each record.
struct Journal(systemd_journal_logger::JournalLog);

impl Log for Journal {
    fn enabled(&self, m: &Metadata) -> bool {
        self.0.enabled(m)
    }

    fn log(&self, r: &Record) {
        let scoped = SCOPE.try_with(|scope| {
            let kvs = WithScope {
                own: r.key_values(),
                scope,
            };
            self.0.log(&r.to_builder().key_values(&kvs).build());
        });
        if scoped.is_err() {
            self.0.log(r);
        }
    }

    fn flush(&self) {
        self.0.flush()
    }
}

/// `2026-11-22T02:46:03.123Z INFO  sensorgate::app: message`
struct Stderr;

impl Log for Stderr {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{ts} {:<5} {}: {}", r.level(), r.target(), r.args());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// rumqttd's levels are not ours: it logs a client that simply goes away as an ERROR
/// (`router-drop`) or a WARN (`no-connection id … is already gone`). Here ERROR means
/// data lost or an operator must act, so its ERRORs become INFO (still visible by
/// default: a refused connection is one), the rest DEBUG and below.
fn map_level(l: &tracing::Level) -> Level {
    match *l {
        tracing::Level::ERROR => Level::Info,
        tracing::Level::WARN | tracing::Level::INFO => Level::Debug,
        _ => Level::Trace,
    }
}

/// rumqttd ERRORs that every ordinary client disconnect produces.
const NOISE: &[&str] = &["no-connection id", "router-drop", "Disconnected"];

/// A tracing subscriber that forwards events (not spans) to `log`.
struct ForwardEvents;

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl tracing::Subscriber for ForwardEvents {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        m.is_event() && map_level(m.level()) <= log::max_level()
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(match log::max_level() {
            LevelFilter::Off => tracing::level_filters::LevelFilter::OFF,
            LevelFilter::Error => tracing::level_filters::LevelFilter::OFF,
            LevelFilter::Warn => tracing::level_filters::LevelFilter::OFF,
            LevelFilter::Info => tracing::level_filters::LevelFilter::ERROR,
            LevelFilter::Debug => tracing::level_filters::LevelFilter::INFO,
            LevelFilter::Trace => tracing::level_filters::LevelFilter::TRACE,
        })
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let m = event.metadata();
        let level = map_level(m.level());
        if level > log::max_level() {
            return;
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let level = if NOISE.iter().any(|n| fields.0.starts_with(n)) {
            Level::Debug
        } else {
            level
        };
        if level > log::max_level() {
            return;
        }
        log::logger().log(
            &Record::builder()
                .level(level)
                .target(m.target())
                .module_path(m.module_path())
                .file(m.file())
                .line(m.line())
                .args(format_args!("{}", fields.0))
                .build(),
        );
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::kv::{Key, Source, Value, VisitSource};

    /// The key-values a journal record would carry, as (KEY, value) text.
    fn fields(source: &dyn Source) -> Vec<(String, String)> {
        struct Collect(Vec<(String, String)>);
        impl<'kvs> VisitSource<'kvs> for Collect {
            fn visit_pair(
                &mut self,
                key: Key<'kvs>,
                value: Value<'kvs>,
            ) -> Result<(), log::kv::Error> {
                self.0.push((key.to_string(), value.to_string()));
                Ok(())
            }
        }
        let mut c = Collect(Vec::new());
        source.visit(&mut c).expect("visit");
        c.0
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_scope_adds_device_and_plugin_unless_the_record_names_them() {
        let scope = Scope {
            device: "boiler".into(),
            plugin: "modbus".to_string(),
        };
        let own = [("point", "flow")];
        let with = WithScope {
            own: &own,
            scope: &scope,
        };
        assert_eq!(
            fields(&with),
            pairs(&[
                ("point", "flow"),
                ("device", "boiler"),
                ("plugin", "modbus")
            ])
        );

        let own = [("device", "pump")];
        let with = WithScope {
            own: &own,
            scope: &scope,
        };
        assert_eq!(
            fields(&with),
            pairs(&[("device", "pump"), ("plugin", "modbus")])
        );
    }

    #[test]
    fn device_scope_is_seen_inside_and_not_outside() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let inside = rt.block_on(device_scope("boiler".into(), "sim", async {
            SCOPE.try_with(|s| (s.device.to_string(), s.plugin.clone()))
        }));
        assert_eq!(inside.ok(), Some(("boiler".to_string(), "sim".to_string())));
        assert!(SCOPE.try_with(|_| ()).is_err());
    }
}
