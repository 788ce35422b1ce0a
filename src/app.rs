//! Wiring: start everything in order, run until SIGTERM/SIGINT, then stop in order.
//!
//! Start: state dir, outbox, broker, bridge, gateway status `online`, command router,
//! one supervised task per device. Stop: cancel the one token; adapters finish their
//! current step; the publisher drains what they handed over (into the outbox and the
//! broker); the bridge gives in-flight messages a short deadline and says `offline`
//! upstream; every device and the gateway go `offline` locally; wait until the broker has
//! routed that, then return (rumqttd cannot be stopped: its threads end with the process).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sd_notify::NotifyState;

use sensorgate_api::{AdapterContext, AdapterError, Backoff, Command};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bridge::{Bridge, BridgeError, Owned};
use crate::broker::{self, BrokerError, BrokerHandle, Message};
use crate::buffer::{BufferError, Outbox};
use crate::config::{Config, Device};
use crate::homeassistant::Discovery;
use crate::publish::{self, availability, HomeAssistant, Topics};

/// How long adapters get to finish after the stop signal.
const ADAPTER_STOP_DEADLINE: Duration = Duration::from_secs(5);
/// How long the last `offline` messages get to reach subscribers.
const FLUSH_DEADLINE: Duration = Duration::from_secs(2);
/// Readings and availability events waiting for the publisher.
const EVENT_QUEUE: usize = 1024;
/// `/set` commands waiting for one device.
const COMMAND_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Buffer(#[from] BufferError),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error("cannot create state_dir {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
}

/// Run the daemon until a stop signal.
pub async fn run(config: Config) -> Result<(), AppError> {
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AppError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM: stopping"),
            r = tokio::signal::ctrl_c() => match r {
                Ok(()) => log::info!("SIGINT: stopping"),
                Err(e) => log::warn!("cannot listen for SIGINT: {e}"),
            },
        }
        stop.cancel();
    });
    run_until(config, cancel).await
}

/// Run the daemon until `cancel` fires.
pub async fn run_until(config: Config, cancel: CancellationToken) -> Result<(), AppError> {
    let state_dir = config.gateway.state_dir.clone();
    std::fs::create_dir_all(&state_dir).map_err(|source| AppError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    let topics = Topics::new(&config.gateway.topic_prefix);
    let mut internal = vec![topics.set_filter(), topics.status()];
    let ha_status = config
        .homeassistant
        .enabled
        .then(|| Discovery::status_topic(&config.homeassistant));
    internal.extend(ha_status.clone());
    let systemd = std::env::var_os("NOTIFY_SOCKET").is_some();
    if systemd {
        internal.push(topics.availability("+"));
    }
    let outbox = match &config.upstream {
        Some(up) => {
            internal.extend(Bridge::local_filters(up));
            Some(Outbox::open(&state_dir, &config.buffer).await?)
        }
        None => None,
    };
    let status_outbox = outbox.clone();
    let broker = broker::start(&config.broker, &internal, &state_dir).await?;
    log::info!(
        "broker listening on {}{}{} (MQTT 3.1.1 and 5 on each)",
        config.broker.listen,
        config
            .broker
            .listen_v5_addr()
            .map(|a| format!(", {a}"))
            .unwrap_or_default(),
        if config.broker.listen_tls.is_empty() {
            String::new()
        } else {
            format!(", {} (TLS)", config.broker.listen_tls)
        }
    );
    let topics = Topics::new(&config.gateway.topic_prefix);
    broker
        .publish(vec![Message::new(
            topics.status(),
            availability(true),
            true,
        )])
        .await?;

    let bridge = match (&config.upstream, outbox) {
        (Some(up), Some(outbox)) => {
            let owned = Owned {
                prefix: topics.prefix().to_string(),
                devices: config
                    .devices
                    .iter()
                    .map(|d| d.spec.name.to_string())
                    .collect(),
            };
            log::info!("bridge to {} ({} route(s))", up.url, up.route.len());
            if up.route.is_empty() {
                log::warn!("[upstream] has no [[upstream.route]]: nothing is bridged");
            }
            if config.buffer.durability == crate::config::Durability::Offline {
                log::info!(
                    "buffer.durability = \"offline\": messages bound upstream wait in \
                     memory while the uplink is up, on disk while it is down"
                );
            }
            Some(Bridge::start(
                up,
                &config.gateway,
                outbox,
                broker.clone(),
                owned,
            )?)
        }
        _ => None,
    };

    let ha = match &ha_status {
        Some(status) => {
            log::info!(
                "Home Assistant discovery under {}/ (birth messages on {status})",
                config.homeassistant.discovery_prefix
            );
            Some(HomeAssistant::new(
                Discovery::new(&config),
                broker.subscribe(std::slice::from_ref(status))?,
            ))
        }
        None => None,
    };
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let publisher = tokio::spawn(publish::run(
        topics.clone(),
        broker.clone(),
        bridge.as_ref().map(Bridge::uplink),
        events_rx,
        ha,
    ));

    let mut command_senders = HashMap::new();
    let mut adapters = JoinSet::new();
    if config.devices.is_empty() {
        log::warn!("no [[device]] configured: the broker runs, but nothing is polled");
    }
    for device in config.devices {
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        command_senders.insert(device.spec.name.to_string(), cmd_tx);
        let ctx = AdapterContext::new(
            device.spec.name.clone(),
            device.spec.poll_interval,
            device.spec.state_dir.clone(),
            cancel.child_token(),
            events_tx.clone(),
            cmd_rx,
        );
        adapters.spawn(supervise(device, ctx));
    }
    let device_names: Vec<String> = command_senders.keys().cloned().collect();
    drop(events_tx);

    let commands = broker.subscribe(&[topics.set_filter()])?;
    let router = tokio::spawn(route_commands(topics.clone(), commands, command_senders));
    log::info!(
        "gateway {} running: {} device(s), readings on {}/<device>/<point>",
        config.gateway.id,
        device_names.len(),
        topics.prefix()
    );

    if systemd {
        let availability = broker.subscribe(&[topics.availability("+")])?;
        Systemd::new(&topics, &device_names, availability, status_outbox)
            .run_until(&cancel)
            .await;
    } else {
        cancel.cancelled().await;
    }

    // Ordered stop.
    router.abort();
    let drained = tokio::time::timeout(ADAPTER_STOP_DEADLINE, async {
        while adapters.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log::warn!(
            "{} device(s) did not stop within {} s; stopping anyway",
            adapters.len(),
            ADAPTER_STOP_DEADLINE.as_secs()
        );
        adapters.abort_all();
        while adapters.join_next().await.is_some() {}
    }
    match publisher.await {
        Ok(Ok(stats)) => log::info!(
            "published {} readings ({} bad ones not published)",
            stats.published,
            stats.skipped
        ),
        Ok(Err(e)) => log::error!("publisher stopped: {e}"),
        Err(e) => log::error!("publisher failed: {e}"),
    }
    if let Some(b) = bridge {
        b.stop().await;
    }
    go_offline(&broker, &topics, &device_names).await
}

/// Publish `offline` for every device and the gateway, and wait (bounded) until the
/// broker has routed the last of them.
async fn go_offline(
    broker: &BrokerHandle,
    topics: &Topics,
    devices: &[String],
) -> Result<(), AppError> {
    let mut echo = broker.subscribe(&[topics.status()])?;
    let mut last = devices
        .iter()
        .map(|d| Message::new(topics.availability(d), availability(false), true))
        .collect::<Vec<_>>();
    last.push(Message::new(topics.status(), availability(false), true));
    broker.publish(last).await?;
    let seen = tokio::time::timeout(FLUSH_DEADLINE, async {
        while let Some(m) = echo.recv().await {
            if m.payload.as_ref() == availability(false).as_bytes() {
                return true;
            }
        }
        false
    })
    .await;
    if !matches!(seen, Ok(true)) {
        log::warn!("could not confirm that the final offline status was routed");
    }
    // The router has it; give the network writers of other clients a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    broker.save_retained().await;
    log::info!("stopped");
    Ok(())
}

/// Run one device: build its adapter, run it, and on failure mark it offline and start
/// it again with back-off, until the daemon stops. The rest of the gateway never waits
/// on a device.
async fn supervise(device: Device, mut ctx: AdapterContext) {
    let name = device.spec.name.clone();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    if let Err(e) = std::fs::create_dir_all(&device.spec.state_dir) {
        log::warn!(
            device = &*name, plugin = device.spec.plugin.as_str();
            "device {name}: cannot create its state folder {}: {e}",
            device.spec.state_dir.display()
        );
    }
    loop {
        let result = match device.plugin.build(&device.spec) {
            Ok(mut adapter) => {
                let plugin = device.spec.plugin.as_str();
                crate::logging::device_scope(name.clone(), plugin, adapter.run(&mut ctx)).await
            }
            Err(errs) => Err(AdapterError::Fatal(
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        };
        match result {
            Ok(()) | Err(AdapterError::Cancelled) => return,
            Err(e) => {
                if ctx.cancel.is_cancelled() {
                    return;
                }
                let delay = backoff.next_delay();
                log::warn!(
                    device = &*name, plugin = device.spec.plugin.as_str();
                    "device {name} ({}) failed: {e}; starting it again in {}",
                    device.spec.plugin,
                    humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
                );
                if ctx.set_online(false).await.is_err() || ctx.sleep(delay).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Hand `<prefix>/<device>/<point>/set` messages to their device.
async fn route_commands(
    topics: Topics,
    mut rx: mpsc::Receiver<Message>,
    devices: HashMap<String, mpsc::Sender<Command>>,
) {
    while let Some(msg) = rx.recv().await {
        let Some((device, point)) = topics.parse_set(&msg.topic) else {
            continue;
        };
        let Some(tx) = devices.get(device) else {
            log::warn!(device, point; "write to {} ignored: no device {device:?}", msg.topic);
            continue;
        };
        let text = String::from_utf8_lossy(&msg.payload);
        let value = serde_json::from_str(text.trim())
            .unwrap_or_else(|_| serde_json::Value::String(text.trim().to_string()));
        let cmd = Command {
            point: point.to_string(),
            value,
        };
        if tx.try_send(cmd).is_err() {
            log::warn!(device, point; "write to {} dropped: device {device} is busy", msg.topic);
        }
    }
}

/// How often `systemctl status` gets a fresh STATUS= line when no watchdog asks for more.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// systemd's notify protocol (`Type=notify`, only when `NOTIFY_SOCKET` is set): READY=1
/// once the broker listens and every device task has started; WATCHDOG=1 from this main
/// loop at half of `WatchdogSec=`, but only while the outbox answers (a hung daemon is
/// restarted); STATUS= with the devices online and the buffer depth.
struct Systemd {
    prefix: String,
    /// Every configured device, and whether its last availability said `online`.
    online: BTreeMap<String, bool>,
    /// `<prefix>/+/availability` from the broker.
    availability: mpsc::Receiver<Message>,
    /// The upstream outbox (its depth); none without `[upstream]`.
    outbox: Option<Outbox>,
    status: String,
}

impl Systemd {
    fn new(
        topics: &Topics,
        devices: &[String],
        availability: mpsc::Receiver<Message>,
        outbox: Option<Outbox>,
    ) -> Systemd {
        Systemd {
            prefix: format!("{}/", topics.prefix()),
            online: devices.iter().map(|d| (d.clone(), false)).collect(),
            availability,
            outbox,
            status: String::new(),
        }
    }

    fn notify(states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(false, states) {
            log::debug!("systemd notify failed: {e}");
        }
    }

    /// Note a `<prefix>/<device>/availability` message of a configured device.
    fn seen(&mut self, m: &Message) {
        let device = m
            .topic
            .strip_prefix(&self.prefix)
            .and_then(|t| t.strip_suffix("/availability"));
        if let Some(online) = device.and_then(|d| self.online.get_mut(d)) {
            *online = m.payload.as_ref() == availability(true).as_bytes();
        }
    }

    /// The STATUS= text; `None` when the outbox did not answer in time.
    async fn status(&self, limit: Duration) -> Option<String> {
        let up = self.online.values().filter(|o| **o).count();
        let devices = format!("{up}/{} device(s) online", self.online.len());
        let Some(outbox) = &self.outbox else {
            return Some(format!("{devices}, no upstream"));
        };
        match tokio::time::timeout(limit, outbox.stats()).await {
            Ok(Ok(s)) => Some(format!(
                "{devices}, buffer {} message(s), {}",
                s.count,
                bytesize::ByteSize(s.bytes.max(0) as u64)
            )),
            Ok(Err(e)) => Some(format!("{devices}, buffer unreadable: {e}")),
            Err(_) => None,
        }
    }

    async fn run_until(mut self, cancel: &CancellationToken) {
        let mut usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| Duration::from_micros(usec / 2))
            .filter(|d| !d.is_zero());
        let period = watchdog.map_or(STATUS_INTERVAL, |w| w.min(STATUS_INTERVAL));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ready = false;
        let mut listening = true;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                m = self.availability.recv(), if listening => match m {
                    Some(m) => self.seen(&m),
                    None => listening = false,
                },
                _ = tick.tick() => {
                    let Some(status) = self.status(period).await else {
                        log::warn!(
                            "the buffer did not answer within {} ms; no watchdog ping",
                            period.as_millis()
                        );
                        continue;
                    };
                    let mut states = vec![NotifyState::Status(&status)];
                    if !ready {
                        states.push(NotifyState::Ready);
                    }
                    if watchdog.is_some() {
                        states.push(NotifyState::Watchdog);
                    }
                    if ready && status == self.status && watchdog.is_none() {
                        continue;
                    }
                    Self::notify(&states);
                    ready = true;
                    self.status = status;
                }
            }
        }
        Self::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}
