//! The `sensorgate` command: parse the command line, set up logging, load the config,
//! hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sensorgate::config::{Config, DEFAULT_PATH};
use sensorgate::{app, broker, logging, tail};

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
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    sensorgate_api::config::parse_duration(s)
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn main() -> ExitCode {
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
            runtime()?.block_on(app::run(cfg))?;
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
            };
            runtime()?.block_on(tail::run(t))?;
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
