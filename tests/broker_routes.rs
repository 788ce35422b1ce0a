//! The two routes a message takes through the embedded broker: QoS 0 subscriptions, and
//! QoS 1 ones of clean sessions, are the front's own (delivered from the publisher's
//! task); a persistent session's QoS 1 subscriptions, QoS 2 and `$share` ones are
//! rumqttd's router's.
//! A raw MQTT client, written here byte by byte, checks what a client sees where the
//! two meet: a filter moving between QoS 0 and 1, a SUBSCRIBE that mixes them, UNSUBSCRIBE,
//! no-local, subscription ids, topic aliases, and a persistent session's QoS 0
//! subscription.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Setup;

const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(500);

/// One packet as read: first byte and body.
#[derive(Debug, Clone, PartialEq)]
struct Packet {
    first: u8,
    body: Vec<u8>,
}

impl Packet {
    fn kind(&self) -> u8 {
        self.first >> 4
    }
}

/// A PUBLISH as delivered.
#[derive(Debug, Clone, PartialEq)]
struct Delivery {
    topic: String,
    qos: u8,
    retain: bool,
    pkid: u16,
    sub_id: Option<u32>,
    payload: String,
}

fn varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

struct Raw {
    s: TcpStream,
    level: u8,
    next_pkid: u16,
    /// Packets read while looking for another kind.
    pending: Vec<Packet>,
}

impl Raw {
    /// Connect with `id` (`persistent`: clean session off / session expiry 1 h).
    fn connect(addr: SocketAddr, level: u8, id: &str, persistent: bool) -> (Raw, bool) {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(QUIET)).expect("timeout");
        let mut body = Vec::new();
        string(&mut body, "MQTT");
        body.push(level);
        body.push(if persistent { 0x00 } else { 0x02 });
        body.extend_from_slice(&30u16.to_be_bytes());
        if level == 5 {
            if persistent {
                body.extend_from_slice(&[5, 0x11, 0, 0, 0x0e, 0x10]);
            } else {
                body.push(0);
            }
        }
        string(&mut body, id);
        let mut raw = Raw {
            s,
            level,
            next_pkid: 1,
            pending: Vec::new(),
        };
        raw.send(&packet(0x10, &body));
        let ack = raw.expect(2);
        assert_eq!(ack.body[1], 0, "CONNACK refused: {ack:?}");
        let present = ack.body[0] & 1 == 1;
        (raw, present)
    }

    fn send(&mut self, pkt: &[u8]) {
        self.s.write_all(pkt).expect("write");
    }

    fn pkid(&mut self) -> u16 {
        let id = self.next_pkid;
        self.next_pkid += 1;
        id
    }

    /// The next packet, or None when nothing comes within `limit`.
    fn read(&mut self, limit: Duration) -> Option<Packet> {
        if !self.pending.is_empty() {
            return Some(self.pending.remove(0));
        }
        let deadline = Instant::now() + limit;
        let mut first = [0u8; 1];
        loop {
            match self.s.read(&mut first) {
                Ok(0) => panic!("the broker closed the connection"),
                Ok(_) => break,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let mut b = [0u8; 1];
            self.read_exact(&mut b);
            len |= usize::from(b[0] & 0x7f) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        self.read_exact(&mut body);
        Some(Packet {
            first: first[0],
            body,
        })
    }

    fn read_exact(&mut self, buf: &mut [u8]) {
        let deadline = Instant::now() + WAIT;
        let mut got = 0;
        while got < buf.len() {
            match self.s.read(&mut buf[got..]) {
                Ok(0) => panic!("the broker closed the connection mid-packet"),
                Ok(n) => got += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    assert!(Instant::now() < deadline, "a packet stopped half-way");
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next packet of `kind` (others are kept for later reads).
    fn expect(&mut self, kind: u8) -> Packet {
        let deadline = Instant::now() + WAIT;
        let mut others = Vec::new();
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left) {
                Some(p) if p.kind() == kind => break p,
                Some(p) => others.push(p),
                None => panic!("no packet of kind {kind} within {WAIT:?}; got {others:?}"),
            }
        };
        others.append(&mut self.pending);
        self.pending = others;
        found
    }

    /// SUBSCRIBE to `filters` (filter, options byte); the SUBACK's codes.
    fn subscribe(&mut self, filters: &[(&str, u8)], sub_id: Option<u32>) -> Vec<u8> {
        let pkid = self.pkid();
        let mut body = pkid.to_be_bytes().to_vec();
        if self.level == 5 {
            let mut props = Vec::new();
            if let Some(id) = sub_id {
                props.push(0x0b);
                varint(&mut props, id as usize);
            }
            varint(&mut body, props.len());
            body.extend_from_slice(&props);
        }
        for (f, o) in filters {
            string(&mut body, f);
            body.push(*o);
        }
        self.send(&packet(0x82, &body));
        let ack = self.expect(9);
        assert_eq!(
            ack.body[..2],
            pkid.to_be_bytes(),
            "SUBACK for another packet id"
        );
        let skip = if self.level == 5 {
            3 + usize::from(ack.body[2])
        } else {
            2
        };
        ack.body[skip..].to_vec()
    }

    /// UNSUBSCRIBE from `filters`: every UNSUBACK that comes (v5: with its codes).
    fn unsubscribe(&mut self, filters: &[&str]) -> Vec<Vec<u8>> {
        let pkid = self.pkid();
        let mut body = pkid.to_be_bytes().to_vec();
        if self.level == 5 {
            body.push(0);
        }
        for f in filters {
            string(&mut body, f);
        }
        self.send(&packet(0xa2, &body));
        let mut acks = Vec::new();
        while let Some(p) = self.read(QUIET) {
            if p.kind() == 11 {
                assert_eq!(p.body[..2], pkid.to_be_bytes());
                let skip = if self.level == 5 { 3 } else { 2 };
                acks.push(p.body.get(skip..).unwrap_or(&[]).to_vec());
            } else {
                self.pending.push(p);
            }
        }
        acks
    }

    /// PUBLISH (QoS 0 or 1; `alias`: a v5 topic alias, with an empty topic to use one).
    fn publish(&mut self, topic: &str, qos: u8, alias: Option<u16>, payload: &str) {
        let mut body = Vec::new();
        string(&mut body, topic);
        if qos > 0 {
            let id = self.pkid();
            body.extend_from_slice(&id.to_be_bytes());
        }
        if self.level == 5 {
            match alias {
                Some(a) => {
                    body.push(3);
                    body.push(0x23);
                    body.extend_from_slice(&a.to_be_bytes());
                }
                None => body.push(0),
            }
        }
        body.extend_from_slice(payload.as_bytes());
        self.send(&packet(0x30 | (qos << 1), &body));
        if qos > 0 {
            self.expect(4);
        }
    }

    /// Deliveries until one with payload `last` (acknowledging QoS 1), then whatever
    /// else comes within [`QUIET`].
    fn deliveries_until(&mut self, last: &str) -> Vec<Delivery> {
        let mut got = Vec::new();
        let deadline = Instant::now() + WAIT;
        let mut seen_last = false;
        loop {
            let left = if seen_last {
                QUIET
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            let Some(p) = self.read(left) else {
                assert!(seen_last, "{last:?} never came; got {got:?}");
                return got;
            };
            if p.kind() != 3 {
                continue;
            }
            let d = self.delivery(&p);
            if d.qos == 1 {
                let ack = [&[0x40u8, 2][..], &d.pkid.to_be_bytes()].concat();
                self.send(&ack);
            }
            seen_last |= d.payload == last;
            got.push(d);
        }
    }

    fn delivery(&self, p: &Packet) -> Delivery {
        let b = &p.body;
        let tlen = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let topic = String::from_utf8(b[2..2 + tlen].to_vec()).expect("topic");
        let mut at = 2 + tlen;
        let qos = (p.first >> 1) & 3;
        let mut pkid = 0;
        if qos > 0 {
            pkid = u16::from_be_bytes([b[at], b[at + 1]]);
            at += 2;
        }
        let mut sub_id = None;
        if self.level == 5 {
            let plen = usize::from(b[at]);
            assert!(plen < 128, "long properties");
            let props = &b[at + 1..at + 1 + plen];
            if let Some(i) = props.iter().position(|&x| x == 0x0b) {
                sub_id = Some(u32::from(props[i + 1] & 0x7f));
            }
            at += 1 + plen;
        }
        Delivery {
            topic,
            qos,
            retain: p.first & 1 == 1,
            pkid,
            sub_id,
            payload: String::from_utf8_lossy(&b[at..]).into_owned(),
        }
    }

    fn disconnect(mut self) {
        let pkt: &[u8] = if self.level == 5 {
            &[0xe0, 1, 0]
        } else {
            &[0xe0, 0]
        };
        self.send(pkt);
    }
}

fn payloads(d: &[Delivery]) -> Vec<&str> {
    d.iter().map(|d| d.payload.as_str()).collect()
}

#[test]
fn unsubscribe_gets_one_unsuback_with_a_code_per_filter() {
    let s = Setup::new("");
    let _d = s.start();
    for level in [4, 5] {
        // A persistent session: its QoS 1 subscriptions are the router's.
        let (mut sub, _) = Raw::connect(s.addr(), level, &format!("u{level}"), true);
        let (mut publisher, _) = Raw::connect(s.addr(), level, &format!("p{level}"), false);
        // QoS 0 (the front's), QoS 1 of a persistent session and a shared one (the
        // router's), one never subscribed.
        let filters = [
            ("u/zero", 0),
            ("u/one", 1),
            ("$share/g/u/shared", 0),
            ("u/end", 0),
        ];
        assert_eq!(sub.subscribe(&filters, None), [0, 1, 0, 0]);
        let acks = sub.unsubscribe(&["u/zero", "u/one", "$share/g/u/shared", "u/never"]);
        let expected = if level == 5 {
            vec![0, 0, 0, 0x11]
        } else {
            vec![]
        };
        assert_eq!(acks, vec![expected], "MQTT level {level}");
        for topic in ["u/zero", "u/one", "u/shared", "u/never", "u/end"] {
            publisher.publish(topic, 0, None, topic);
        }
        let got = sub.deliveries_until("u/end");
        assert_eq!(payloads(&got), ["u/end"], "MQTT level {level}");
        sub.disconnect();
        publisher.disconnect();
    }
}

#[test]
fn a_filter_moving_between_qos_0_and_1_delivers_each_message_once() {
    let s = Setup::new("");
    let _d = s.start();
    let (mut publisher, _) = Raw::connect(s.addr(), 4, "mover-pub", false);
    // Clean: QoS 0 and 1 are both the front's. Persistent: QoS 1 is the router's, so
    // the filter moves between the two routes.
    for persistent in [false, true] {
        let id = format!("mover-{persistent}");
        let (mut sub, _) = Raw::connect(s.addr(), 4, &id, persistent);
        for (n, qos) in [0, 1, 0, 1].into_iter().enumerate() {
            assert_eq!(sub.subscribe(&[("m/#", qos)], None), [qos]);
            let payload = format!("m-{persistent}-{n}");
            publisher.publish("m/1", 1, None, &payload);
            let got = sub.deliveries_until(&payload);
            assert_eq!(payloads(&got), [payload.as_str()], "round {n}: {got:?}");
            assert_eq!(got[0].qos, qos, "round {n} (persistent: {persistent})");
        }
        sub.disconnect();
    }
}

#[test]
fn a_mixed_subscribe_gets_its_codes_and_the_retained_messages_first() {
    let s = Setup::new("");
    let _d = s.start();
    let (mut publisher, _) = Raw::connect(s.addr(), 5, "mix-pub", false);
    set_retained(&mut publisher);
    // Persistent: q/# (QoS 1) is the router's, r/# the front's.
    let (mut sub, _) = Raw::connect(s.addr(), 5, "mix", true);
    let codes = sub.subscribe(&[("r/#", 0), ("q/#", 1), ("bad/#/x", 0)], Some(9));
    assert_eq!(codes, [0, 1, 0x8f]);
    publisher.publish("r/a", 0, None, "live");
    publisher.publish("q/a", 1, None, "live-q");
    let got = sub.deliveries_until("live-q");
    let order: Vec<(&str, bool)> = got.iter().map(|d| (d.payload.as_str(), d.retain)).collect();
    assert_eq!(order[..2], [("old-r", true), ("old-q", true)], "{got:?}");
    assert!(got.iter().all(|d| d.sub_id == Some(9)), "{got:?}");
    let mut live: Vec<&str> = got[2..].iter().map(|d| d.payload.as_str()).collect();
    live.sort();
    assert_eq!(live, ["live", "live-q"]);
}

/// Retained messages on r/a and q/a (a v5 publisher).
fn set_retained(publisher: &mut Raw) {
    for (topic, payload) in [("q/a", "old-q"), ("r/a", "old-r")] {
        let mut body = Vec::new();
        string(&mut body, topic);
        body.push(0);
        body.extend_from_slice(payload.as_bytes());
        publisher.send(&packet(0x31, &body));
    }
    // The broker has them once a message after them went round.
    let (mut probe, _) = Raw::connect(publisher.s.peer_addr().expect("peer"), 4, "probe", false);
    probe.subscribe(&[("probe", 0)], None);
    publisher.publish("probe", 0, None, "probe");
    probe.deliveries_until("probe");
}

#[test]
fn no_local_and_subscription_ids_hold_on_the_fronts_route() {
    let s = Setup::new("");
    let _d = s.start();
    let (mut me, _) = Raw::connect(s.addr(), 5, "nl", false);
    let (mut other, _) = Raw::connect(s.addr(), 5, "nl-other", false);
    // Options: QoS 0, no local.
    assert_eq!(me.subscribe(&[("n/#", 0x04)], Some(42)), [0]);
    me.publish("n/1", 0, None, "mine");
    other.publish("n/1", 0, None, "theirs");
    let got = me.deliveries_until("theirs");
    assert_eq!(payloads(&got), ["theirs"]);
    assert_eq!(got[0].sub_id, Some(42));
}

#[test]
fn a_topic_alias_defined_on_one_route_is_understood_on_the_other() {
    let s = Setup::new("");
    let _d = s.start();
    let (mut zero, _) = Raw::connect(s.addr(), 5, "al-zero", false);
    let (mut publisher, _) = Raw::connect(s.addr(), 5, "al-pub", false);
    assert_eq!(zero.subscribe(&[("al/#", 0)], None), [0]);
    // Only the front's route has a subscriber: the router never sees this one.
    publisher.publish("al/1", 0, Some(1), "first");
    assert_eq!(payloads(&zero.deliveries_until("first")), ["first"]);
    // Persistent: its QoS 1 subscription is the router's.
    let (mut one, _) = Raw::connect(s.addr(), 5, "al-one", true);
    assert_eq!(one.subscribe(&[("al/#", 1)], None), [1]);
    publisher.publish("", 0, Some(1), "second");
    publisher.publish("", 1, Some(1), "third");
    for sub in [&mut zero, &mut one] {
        let got = sub.deliveries_until("third");
        assert_eq!(payloads(&got), ["second", "third"]);
        assert!(got.iter().all(|d| d.topic == "al/1"), "{got:?}");
    }
}

#[test]
fn a_persistent_sessions_qos0_subscription_resumes_and_misses_what_came_offline() {
    let s = Setup::new("");
    let _d = s.start();
    let (mut publisher, _) = Raw::connect(s.addr(), 4, "ps-pub", false);
    for level in [4, 5] {
        let id = format!("ps{level}");
        let (mut sub, present) = Raw::connect(s.addr(), level, &id, true);
        assert!(!present);
        assert_eq!(sub.subscribe(&[("ps/#", 0)], None), [0]);
        sub.disconnect();
        // QoS 0 is not queued for an offline session.
        publisher.publish("ps/1", 1, None, "offline");
        let (mut sub, present) = Raw::connect(s.addr(), level, &id, true);
        assert!(present, "MQTT level {level}");
        publisher.publish("ps/1", 0, None, "online");
        let got = sub.deliveries_until("online");
        assert_eq!(payloads(&got), ["online"], "MQTT level {level}");
        sub.disconnect();
    }
}

#[test]
fn qos_1_on_the_fronts_route_waits_for_the_window_and_loses_nothing() {
    // A window of 3: the fourth delivery waits for an acknowledgement.
    let s = Setup::new("max_inflight = 3\n");
    let _d = s.start();
    let (mut sub, _) = Raw::connect(s.addr(), 5, "w-sub", false);
    let (mut publisher, _) = Raw::connect(s.addr(), 4, "w-pub", false);
    assert_eq!(sub.subscribe(&[("w/#", 1)], Some(5)), [1]);
    for i in 0..5 {
        // PUBACKed by the front (nobody on the router's route).
        publisher.publish("w/1", 1, None, &format!("w{i}"));
    }
    let mut first = Vec::new();
    while let Some(p) = sub.read(QUIET) {
        first.push(sub.delivery(&p));
    }
    assert_eq!(payloads(&first), ["w0", "w1", "w2"]);
    assert!(
        first.iter().all(|d| d.qos == 1 && d.sub_id == Some(5)),
        "{first:?}"
    );
    let mut ids: Vec<u16> = first.iter().map(|d| d.pkid).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "distinct packet ids: {first:?}");
    // Acknowledging the three lets the other two go.
    for d in &first {
        let ack = [&[0x40u8, 2][..], &d.pkid.to_be_bytes()].concat();
        sub.send(&ack);
    }
    let rest = sub.deliveries_until("w4");
    assert_eq!(payloads(&rest), ["w3", "w4"]);
    // QoS 0 still comes after.
    publisher.publish("w/2", 0, None, "after");
    assert_eq!(payloads(&sub.deliveries_until("after")), ["after"]);
}

#[test]
fn an_unsubscribe_right_behind_its_subscribe_leaves_nothing_subscribed() {
    let s = Setup::new("");
    let _d = s.start();
    let (mut publisher, _) = Raw::connect(s.addr(), 4, "z-pub", false);
    for persistent in [false, true] {
        let (mut sub, _) = Raw::connect(s.addr(), 4, &format!("z-{persistent}"), persistent);
        assert_eq!(sub.subscribe(&[("z/end", 0)], None), [0]);
        // SUBSCRIBE z/0 (QoS 0), z/1 (QoS 1) and UNSUBSCRIBE both, in one write: the
        // UNSUBSCRIBE is read before any SUBACK is out.
        let mut body = 7u16.to_be_bytes().to_vec();
        for (f, q) in [("z/0", 0u8), ("z/1", 1)] {
            string(&mut body, f);
            body.push(q);
        }
        let mut both = packet(0x82, &body);
        let mut body = 8u16.to_be_bytes().to_vec();
        string(&mut body, "z/0");
        string(&mut body, "z/1");
        both.extend(packet(0xa2, &body));
        sub.send(&both);
        assert_eq!(sub.expect(9).body, [0, 7, 0, 1]);
        assert_eq!(sub.expect(11).body, [0, 8]);
        publisher.publish("z/0", 1, None, "zero");
        publisher.publish("z/1", 1, None, "one");
        publisher.publish("z/end", 0, None, "end");
        let got = sub.deliveries_until("end");
        assert_eq!(payloads(&got), ["end"], "persistent: {persistent}");
        sub.disconnect();
    }
}
