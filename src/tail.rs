//! `sensorgate tail`: subscribe to the local broker and print each message.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(
        "the local broker at {addr} refused the login: with broker.password_file set, \
         give --username and SENSORGATE_PASSWORD"
    )]
    NotAuthorized { addr: SocketAddr },
    #[error("cannot reach the local broker at {addr} (is `sensorgate run` running?): {source}")]
    Connect {
        addr: SocketAddr,
        source: rumqttc::ConnectionError,
    },
    #[error("lost the local broker at {addr}: {source}")]
    Lost {
        addr: SocketAddr,
        source: rumqttc::ConnectionError,
    },
    #[error("{0:?} is not a valid topic filter")]
    Filter(String),
    #[error("cannot subscribe: {0}")]
    Client(#[from] rumqttc::ClientError),
    #[error("no message within {0:?}")]
    Timeout(Duration),
}

/// What to print, and when to stop.
pub struct Tail {
    pub addr: SocketAddr,
    pub filter: String,
    /// Stop after this many messages.
    pub count: Option<u64>,
    /// Stop after this long (an error if nothing arrived).
    pub timeout: Option<Duration>,
    /// Username and password, for a broker with a `password_file`.
    pub credentials: Option<(String, String)>,
}

/// Print `topic payload` lines until stopped (Ctrl-C), `count` or `timeout`.
pub async fn run(t: Tail) -> Result<(), TailError> {
    if !crate::topic::valid_filter(&t.filter) {
        return Err(TailError::Filter(t.filter));
    }
    let id = format!("sensorgate-tail-{}", std::process::id());
    let mut opts = MqttOptions::new(id, t.addr.ip().to_string(), t.addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
    if let Some((user, password)) = &t.credentials {
        opts.set_credentials(user, password);
    }
    let (client, mut events) = AsyncClient::new(opts, 16);
    client.subscribe(&t.filter, QoS::AtMostOnce).await?;
    let deadline = t.timeout.map(|d| tokio::time::Instant::now() + d);
    let mut seen: u64 = 0;
    let mut connected = false;
    let mut out = std::io::stdout();
    loop {
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, events.poll()).await.ok(),
                None => Some(events.poll().await),
            }
        };
        let event = tokio::select! {
            e = next => e,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match event {
            None if seen == 0 => return Err(TailError::Timeout(t.timeout.unwrap_or_default())),
            None => return Ok(()),
            Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => connected = true,
            Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let _ = writeln!(out, "{} {}", p.topic, String::from_utf8_lossy(&p.payload));
                let _ = out.flush();
                seen += 1;
                if t.count.is_some_and(|c| seen >= c) {
                    let _ = client.disconnect().await;
                    return Ok(());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::NotAuthorized
                | rumqttc::ConnectReturnCode::BadUserNamePassword,
            ))) => return Err(TailError::NotAuthorized { addr: t.addr }),
            Some(Err(source)) if !connected => {
                return Err(TailError::Connect {
                    addr: t.addr,
                    source,
                })
            }
            Some(Err(source)) => {
                return Err(TailError::Lost {
                    addr: t.addr,
                    source,
                })
            }
        }
    }
}
