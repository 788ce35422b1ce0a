//! The `sensorgate` command: parse the command line, set up logging, load the config,
//! hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sensorgate::config::{Config, DEFAULT_PATH};
use sensorgate::{app, broker, buffer, logging, tail};

#[derive(Parser)]
#[command(
    name = "sensorgate",
    version,
    about = "IoT edge gateway: MQTT broker, device plugins, cloud bridge"
)]
struct Cli {
    /// error, warn, info, debug or trace (default: $RUST_LOG, else info).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground (SIGTERM/SIGINT stop it cleanly).
    Run {
        #[arg(long, short, default_value = DEFAULT_PATH, env = "SENSORGATE_CONFIG")]
        config: PathBuf,
    },
    /// Load and check the whole configuration; print its devices and points.
    Check {
        #[arg(long, short, default_value = DEFAULT_PATH, env = "SENSORGATE_CONFIG")]
        config: PathBuf,
    },
    /// Print the messages on the local broker (default filter: <topic_prefix>/#).
    Tail {
        #[arg(long, short, default_value = DEFAULT_PATH, env = "SENSORGATE_CONFIG")]
        config: PathBuf,
        /// Topic filter to subscribe to.
        filter: Option<String>,
        /// Exit after this many messages.
        #[arg(long, short = 'n')]
        count: Option<u64>,
        /// Exit after this long, e.g. "10s" (non-zero if nothing arrived).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Log in as this user (a broker with a password_file); the password comes from
        /// the environment variable SENSORGATE_PASSWORD.
        #[arg(long, short = 'u', env = "SENSORGATE_USERNAME")]
        username: Option<String>,
    },
    /// The offline buffer (messages waiting for the upstream): stats or purge.
    Buffer {
        #[command(subcommand)]
        cmd: BufferCmd,
    },
    /// One-shot Modbus wiring checks: read registers, scan for unit ids.
    #[cfg(feature = "plugin-modbus")]
    Modbus(sensorgate_modbus::cli::ModbusArgs),
}

#[derive(Subcommand)]
enum BufferCmd {
    /// How many messages wait, their size, the oldest one's age, what was dropped.
    Stats {
        #[arg(long, short, default_value = DEFAULT_PATH, env = "SENSORGATE_CONFIG")]
        config: PathBuf,
    },
    /// Delete every waiting message (they are never sent).
    Purge {
        #[arg(long, short, default_value = DEFAULT_PATH, env = "SENSORGATE_CONFIG")]
        config: PathBuf,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    sensorgate_api::config::parse_duration(s)
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// glibc gives every thread that allocates an arena of its own (up to 8 per core), and
/// freed memory stays in each: with tokio's workers, rumqttd's runtime and router and the
/// broker's threads, peak RSS under load was 27 MiB; with two arenas 23 MiB at the same
/// throughput (one arena cost a fifth of it). `MALLOC_ARENA_MAX` in the environment
/// still wins (glibc reads it first).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a glibc tunable; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    logging::init(logging::level(cli.log_level.as_deref()));
    match real_main(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn real_main(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Run { config } => {
            let cfg = load(&config)?;
            log::info!(
                "sensorgate {} starting with {}",
                env!("CARGO_PKG_VERSION"),
                config.display()
            );
            let rt = runtime()?;
            let result = rt.block_on(app::run(cfg));
            // A plugin stuck in a blocking-pool task (a read that never returns) must not
            // keep the process from exiting: dropping the runtime would wait for it.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            result?;
            Ok(())
        }
        Cmd::Check { config } => {
            let cfg = load(&config)?;
            print_check(&cfg);
            Ok(())
        }
        Cmd::Tail {
            config,
            filter,
            count,
            timeout,
            username,
        } => {
            let cfg = load(&config)?;
            let listen = cfg
                .broker
                .listen_addr()
                .context("broker.listen is not an address")?;
            let t = tail::Tail {
                addr: broker::client_addr(listen),
                filter: filter.unwrap_or_else(|| format!("{}/#", cfg.gateway.topic_prefix)),
                count,
                timeout,
                credentials: username.map(|u| {
                    let password = std::env::var("SENSORGATE_PASSWORD").unwrap_or_default();
                    (u, password)
                }),
            };
            runtime()?.block_on(tail::run(t))?;
            Ok(())
        }
        Cmd::Buffer { cmd } => buffer_command(cmd),
        #[cfg(feature = "plugin-modbus")]
        Cmd::Modbus(args) => Ok(runtime()?.block_on(sensorgate_modbus::cli::run(args))?),
    }
}

fn buffer_command(cmd: BufferCmd) -> anyhow::Result<()> {
    match cmd {
        BufferCmd::Stats { config } => {
            let cfg = load(&config)?;
            let dir = cfg.gateway.state_dir;
            let path = dir.join(buffer::FILE_NAME);
            match runtime()?.block_on(buffer::stats_of(&dir))? {
                None => println!("buffer {}: empty (no buffer file yet)", path.display()),
                Some(s) => {
                    let age = s
                        .oldest_ms
                        .map(|t| {
                            let ms = (buffer::now_ms() - t).max(0) as u64;
                            let d = Duration::from_secs(ms / 1000);
                            format!(", oldest {} old", humantime::format_duration(d))
                        })
                        .unwrap_or_default();
                    println!(
                        "buffer {}: {} message(s), {}{age}",
                        path.display(),
                        s.count,
                        bytesize::ByteSize(s.bytes.max(0) as u64)
                    );
                    println!(
                        "dropped: {} oldest to make room (max_bytes), {} new refused (on_full / too large), {} expired (max_age)",
                        s.dropped_full, s.dropped_rejected, s.dropped_expired
                    );
                }
            }
            Ok(())
        }
        BufferCmd::Purge { config } => {
            let cfg = load(&config)?;
            let n = runtime()?.block_on(buffer::purge(&cfg.gateway.state_dir))?;
            println!("buffer purged: {n} message(s) deleted");
            Ok(())
        }
    }
}

fn print_check(cfg: &Config) {
    let files: Vec<String> = cfg.files.iter().map(|f| f.display().to_string()).collect();
    println!("configuration OK: {}", files.join(", "));
    println!(
        "gateway {}: topics under {}/, state in {}",
        cfg.gateway.id,
        cfg.gateway.topic_prefix,
        cfg.gateway.state_dir.display()
    );
    let v5 = cfg
        .broker
        .listen_v5_addr()
        .map(|a| format!(", MQTT 5 on {a}"))
        .unwrap_or_default();
    println!("broker: MQTT 3.1.1 on {}{v5}", cfg.broker.listen);
    if let Some(u) = &cfg.upstream {
        println!("upstream: {} ({} route(s))", u.url, u.route.len());
    }
    let points: usize = cfg.devices.iter().map(|d| d.points.len()).sum();
    println!("{} device(s), {} point(s):", cfg.devices.len(), points);
    for d in &cfg.devices {
        println!(
            "  device {} (plugin {}, every {}) from {}",
            d.spec.name,
            d.spec.plugin,
            humantime::format_duration(d.spec.poll_interval),
            d.file.display()
        );
        for line in &d.describe {
            println!("    {line}");
        }
        for p in &d.points {
            let unit = p
                .unit
                .as_deref()
                .map(|u| format!(" [{u}]"))
                .unwrap_or_default();
            let rw = if p.writable { " (writable)" } else { "" };
            println!(
                "    {}{unit}{rw}: {} -> {}",
                p.name,
                p.source,
                cfg.point_topic(&d.spec.name, &p.name)
            );
        }
    }
}
