//! One upstream MQTT client, 3.1.1 or 5 (`upstream.protocol`), behind one small face:
//! the session only needs to publish, subscribe, disconnect and see a handful of events.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as ConnectReturnCodeV5, LastWill as LastWillV5, Packet as PacketV5,
    PubAckReason,
};
use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};

/// What the session needs to know to connect.
pub struct Options<'a> {
    pub v5: bool,
    pub client_id: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub keepalive: Duration,
    pub inflight: u16,
    pub will_topic: &'a str,
    pub credentials: Option<(&'a str, &'a str)>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Requests rumqttc may queue.
    pub capacity: usize,
}

/// MQTT 5: how long the upstream keeps the session (and its QoS 1 subscriptions) after
/// a disconnect, so that downlink commands sent meanwhile are not lost.
const SESSION_EXPIRY_SECS: u32 = 7 * 24 * 3600;
const MAX_PACKET: usize = 16 * 1024 * 1024;

/// What happened on the connection, as far as the session cares.
#[derive(Debug)]
pub enum Happened {
    Connected,
    /// A PUBLISH was written with this packet id (0 for QoS 0).
    Sent(u16),
    /// The PUBACK of this packet id; `refused` holds the reason when an MQTT 5 broker
    /// refused the message (it will never take it).
    Acked {
        pkid: u16,
        refused: Option<String>,
    },
    /// A message from upstream.
    Message {
        topic: String,
        payload: Bytes,
        retain: bool,
    },
    Disconnected,
    Other,
}

pub enum Client {
    V4(AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

pub enum Events {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// A fresh client and its event loop.
pub fn new(o: &Options<'_>) -> (Client, Events) {
    let transport = o
        .tls
        .clone()
        .map(|tls| Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let keepalive = o.keepalive.max(Duration::from_secs(1));
    if o.v5 {
        let mut m = rumqttc::v5::MqttOptions::new(o.client_id, o.host, o.port);
        m.set_keep_alive(keepalive);
        m.set_clean_start(false);
        m.set_session_expiry_interval(Some(SESSION_EXPIRY_SECS));
        m.set_outgoing_inflight_upper_limit(o.inflight);
        m.set_max_packet_size(Some(MAX_PACKET as u32));
        m.set_last_will(LastWillV5::new(
            o.will_topic,
            "offline",
            v5_qos(QoS::AtLeastOnce),
            true,
            None,
        ));
        if let Some((u, p)) = o.credentials {
            m.set_credentials(u, p);
        }
        if let Some(t) = transport {
            m.set_transport(t);
        }
        let (c, e) = rumqttc::v5::AsyncClient::new(m, o.capacity);
        (Client::V5(c), Events::V5(Box::new(e)))
    } else {
        let mut m = MqttOptions::new(o.client_id, o.host, o.port);
        m.set_keep_alive(keepalive);
        m.set_clean_session(false);
        m.set_inflight(o.inflight);
        m.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        m.set_last_will(LastWill::new(
            o.will_topic,
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        if let Some((u, p)) = o.credentials {
            m.set_credentials(u, p);
        }
        if let Some(t) = transport {
            m.set_transport(t);
        }
        let (c, e) = AsyncClient::new(m, o.capacity);
        (Client::V4(c), Events::V4(Box::new(e)))
    }
}

impl Client {
    pub fn publish(
        &self,
        topic: impl Into<String>,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, qos, retain, payload.into())
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_publish(topic, v5_qos(qos), retain, payload.into())
                .map_err(|e| e.to_string()),
        }
    }

    pub fn subscribe(&self, filter: impl Into<String>, qos: QoS) -> Result<(), String> {
        match self {
            Client::V4(c) => c.try_subscribe(filter, qos).map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe(filter, v5_qos(qos))
                .map_err(|e| e.to_string()),
        }
    }

    pub fn disconnect(&self) -> Result<(), String> {
        match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        }
    }
}

/// rumqttc's v5 half has its own `QoS`.
fn v5_qos(q: QoS) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

impl Events {
    /// The next event; an error means the connection is gone (described for the log).
    pub async fn poll(&mut self) -> Result<Happened, String> {
        match self {
            Events::V4(e) => match e.poll().await {
                Ok(ev) => Ok(v4_event(ev)),
                Err(e) => Err(describe_v4(&e)),
            },
            Events::V5(e) => match e.poll().await {
                Ok(ev) => Ok(v5_event(ev)),
                Err(e) => Err(describe_v5(&e)),
            },
        }
    }
}

fn v4_event(ev: Event) -> Happened {
    match ev {
        Event::Incoming(Packet::ConnAck(_)) => Happened::Connected,
        Event::Outgoing(Outgoing::Publish(pkid)) => Happened::Sent(pkid),
        Event::Incoming(Packet::PubAck(a)) => Happened::Acked {
            pkid: a.pkid,
            refused: None,
        },
        Event::Incoming(Packet::Publish(p)) => Happened::Message {
            topic: p.topic,
            payload: p.payload,
            retain: p.retain,
        },
        Event::Outgoing(Outgoing::Disconnect) => Happened::Disconnected,
        _ => Happened::Other,
    }
}

fn v5_event(ev: rumqttc::v5::Event) -> Happened {
    use rumqttc::v5::Event as E;
    match ev {
        E::Incoming(PacketV5::ConnAck(_)) => Happened::Connected,
        E::Outgoing(Outgoing::Publish(pkid)) => Happened::Sent(pkid),
        E::Incoming(PacketV5::PubAck(a)) => Happened::Acked {
            pkid: a.pkid,
            refused: match a.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                other => Some(format!("{other:?}")),
            },
        },
        E::Incoming(PacketV5::Publish(p)) => match String::from_utf8(p.topic.to_vec()) {
            Ok(topic) => Happened::Message {
                topic,
                payload: p.payload,
                retain: p.retain,
            },
            Err(_) => Happened::Other,
        },
        E::Outgoing(Outgoing::Disconnect) => Happened::Disconnected,
        _ => Happened::Other,
    }
}

fn describe_v4(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!("connection refused: {code:?}"),
        other => with_hint(other.to_string()),
    }
}

/// What the operator can do about a TLS failure, added to its text.
fn with_hint(text: String) -> String {
    let hint = if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
        " (the upstream's certificate is not signed by upstream.ca_file, or by a system \
         root when ca_file is empty)"
    } else if text.contains("NotValidForName") {
        " (the certificate does not name the host in upstream.url)"
    } else if text.contains("CertificateRequired") || text.contains("certificate required") {
        " (the upstream wants a client certificate: upstream.cert_file and key_file)"
    } else {
        ""
    };
    text + hint
}

fn describe_v5(e: &rumqttc::v5::ConnectionError) -> String {
    match e {
        rumqttc::v5::ConnectionError::ConnectionRefused(code) => {
            let hint = match code {
                ConnectReturnCodeV5::UnsupportedProtocolVersion => {
                    " (the upstream does not speak MQTT 5: try upstream.protocol = \"v4\")"
                }
                _ => "",
            };
            format!("connection refused: {code:?}{hint}")
        }
        other => with_hint(other.to_string()),
    }
}
