use super::*;
use proptest::prelude::*;

fn whole(pkt: &[u8]) -> Frame {
    match frame(pkt, MAX_REMAINING) {
        Ok(Framing::Packet(f)) => f,
        other => panic!("not a whole packet: {other:?}"),
    }
}

fn connect(
    level: u8,
    keep_alive: u16,
    id: &str,
    user: Option<&str>,
    pass: Option<&[u8]>,
) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level];
    let mut flags = 0x02;
    if user.is_some() {
        flags |= 0x80;
    }
    if pass.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        body.extend_from_slice(&[5, 0x11, 0, 0, 0, 10]); // session expiry
    }
    for s in [Some(id.as_bytes()), user.map(str::as_bytes), pass]
        .into_iter()
        .flatten()
    {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s);
    }
    packet(0x10, &body)
}

#[test]
fn frames_need_the_whole_packet_and_respect_the_limit() {
    assert_eq!(frame(&[], 100), Ok(Framing::Partial(None)));
    assert_eq!(frame(&[0x30], 100), Ok(Framing::Partial(None)));
    assert_eq!(frame(&[0x30, 0x80], 100), Ok(Framing::Partial(None)));
    assert_eq!(frame(&[0x30, 3, 0], 100), Ok(Framing::Partial(Some(5))));
    assert_eq!(
        frame(&[0x30, 0x80, 0x01], 100),
        Err(PacketError::TooLarge(131))
    );
    assert_eq!(
        frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 1], usize::MAX),
        Err(PacketError::Length)
    );
    let f = whole(&[0xc0, 0]);
    assert_eq!((f.kind, f.header, f.len), (PINGREQ, 2, 2));
}

#[test]
fn connect_fields_both_levels() {
    for level in [4, 5] {
        let pkt = connect(level, 60, "dev1", Some("alice"), Some(b"secret"));
        let c = parse_connect(&pkt, &whole(&pkt)).expect("connect");
        assert_eq!(c.level, level);
        assert_eq!(c.keep_alive, 60);
        assert_eq!(&pkt[c.keep_alive_at..c.keep_alive_at + 2], &[0, 60]);
        assert_eq!(c.client_id, "dev1");
        assert_eq!(c.username, Some("alice"));
        assert_eq!(c.password, Some(&b"secret"[..]));
    }
    let pkt = connect(4, 0, "", None, None);
    let c = parse_connect(&pkt, &whole(&pkt)).expect("connect");
    assert_eq!((c.username, c.password, c.keep_alive), (None, None, 0));
    assert!(c.clean && c.will.is_none());
    let pkt = connect(5, 0, "x", None, None);
    let c = parse_connect(&pkt, &whole(&pkt)).expect("connect");
    assert_eq!((c.session_expiry, c.receive_maximum), (10, u16::MAX));
}

#[test]
fn connect_will_and_the_brokers_copy_without_it() {
    // v5, persistent (clean start 0), will QoS 1 retained, will property (delay 0),
    // topic "w", payload "bye", username "u".
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        5,
        0x80 | 0x20 | 0x08 | 0x04,
        0,
        30,
    ];
    body.extend_from_slice(&[11, 0x11, 0xff, 0xff, 0xff, 0xff, 0x21, 0, 7, 0x22, 0, 10]);
    body.extend_from_slice(&[0, 2, b'i', b'd']);
    body.extend_from_slice(&[5, 0x18, 0, 0, 0, 0]);
    body.extend_from_slice(&[0, 1, b'w', 0, 3, b'b', b'y', b'e']);
    body.extend_from_slice(&[0, 1, b'u']);
    let pkt = packet(0x10, &body);
    let c = parse_connect(&pkt, &whole(&pkt)).expect("connect");
    assert!(!c.clean);
    assert_eq!((c.session_expiry, c.receive_maximum), (u32::MAX, 7));
    let will = c.will.clone().expect("will");
    assert_eq!((will.qos, will.retain, will.topic), (1, true, "w"));
    assert_eq!(
        (will.payload, will.properties),
        (&b"bye"[..], &[0x18, 0, 0, 0, 0][..])
    );
    assert_eq!(
        (c.keep_alive, c.client_id, c.username),
        (30, "id", Some("u"))
    );
}

#[test]
fn publish_fields_and_topic_alias() {
    // v5, QoS 1, topic "a/b", pkid 7, topic alias 3, payload "xyz".
    let body = [
        0, 3, b'a', b'/', b'b', 0, 7, 3, 0x23, 0, 3, b'x', b'y', b'z',
    ];
    let pkt = packet(0x32, &body);
    let p = parse_publish(&pkt, &whole(&pkt), 5).expect("publish");
    assert_eq!(
        p,
        Publish {
            topic: "a/b",
            qos: 1,
            pkid: 7,
            topic_alias: Some(3),
            properties: &[0x23, 0, 3],
            payload: b"xyz",
        }
    );
    let pkt = packet(0x30, &[0, 1, b't', 1, 2]);
    let p = parse_publish(&pkt, &whole(&pkt), 4).expect("publish");
    assert_eq!((p.topic, p.qos, p.payload), ("t", 0, &[1u8, 2][..]));
}

#[test]
fn built_publish_parses_back_and_properties_can_be_dropped() {
    // v5 properties: content type "j", topic alias 9, user property ("k", "v").
    let props = [0x03, 0, 1, b'j', 0x23, 0, 9, 0x26, 0, 1, b'k', 0, 1, b'v'];
    let kept = without_properties(&props, &[TOPIC_ALIAS]).expect("walk");
    assert_eq!(kept, [0x03, 0, 1, b'j', 0x26, 0, 1, b'k', 0, 1, b'v']);
    let pkt = publish(5, "a/b", 1, 300, true, &kept, Some(200), b"xyz");
    let f = whole(&pkt);
    assert_eq!(f.flags, 0b0011);
    let p = parse_publish(&pkt, &f, 5).expect("publish");
    assert_eq!(
        (p.topic, p.qos, p.pkid, p.payload),
        ("a/b", 1, 300, &b"xyz"[..])
    );
    assert_eq!(p.topic_alias, None);
    assert_eq!(subscription_id(p.properties).expect("walk"), Some(200));
    let pkt = publish(4, "t", 0, 0, false, &kept, Some(1), b"");
    assert_eq!(pkt, [0x30, 3, 0, 1, b't']);
}

#[test]
fn subscribe_round_trip_and_suback() {
    let pkt = subscribe(9, Some(&[0x0b, 5]), &[("a/#", 1), ("b", 0)]);
    let s = parse_subscribe(&pkt, &whole(&pkt), 5, false).expect("subscribe");
    assert_eq!(s.pkid, 9);
    assert_eq!(s.properties, Some(&[0x0b, 5][..]));
    assert_eq!(s.filters, vec![("a/#", 1), ("b", 0)]);
    let ack = suback(9, 4, None, &[0x80, 1]);
    let a = parse_suback(&ack, &whole(&ack), 4).expect("suback");
    assert_eq!((a.pkid, a.codes), (9, &[0x80, 1][..]));
    let ack = suback(9, 5, None, &[0x87]);
    assert_eq!(ack, vec![0x90, 4, 0, 9, 0, 0x87]);
}

#[test]
fn connack_gets_a_server_keep_alive() {
    let pkt = connack(5, 0);
    let out = connack_with_keepalive(&pkt, &whole(&pkt), 300).expect("connack");
    assert_eq!(out, vec![0x20, 6, 0, 0, 3, 0x13, 0x01, 0x2c]);
}

proptest! {
    // Whatever the bytes, framing and parsing return a value or an error, never panic,
    // and a whole frame lies inside the buffer.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), level in 4u8..=5) {
        if let Ok(Framing::Packet(f)) = frame(&bytes, 1 << 20) {
            prop_assert!(f.len <= bytes.len());
            let pkt = &bytes[..f.len];
            let _ = parse_connect(pkt, &f);
            let _ = parse_publish(pkt, &f, level);
            let _ = parse_subscribe(pkt, &f, level, false);
            let _ = parse_subscribe(pkt, &f, level, true);
            let _ = parse_suback(pkt, &f, level);
            let _ = connack_with_keepalive(pkt, &f, 10);
            let _ = ack_pkid(pkt, &f);
        }
    }

    // Valid CONNECTs with any fields parse back to those fields.
    #[test]
    fn connect_round_trip(level in 4u8..=5, ka in any::<u16>(), id in "[a-z0-9]{0,30}",
                          user in proptest::option::of("[ -~]{0,40}"),
                          pass in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))) {
        let pkt = connect(level, ka, &id, user.as_deref(), pass.as_deref());
        let c = parse_connect(&pkt, &whole(&pkt)).expect("connect");
        prop_assert_eq!(c.keep_alive, ka);
        prop_assert_eq!(c.client_id, id.as_str());
        prop_assert_eq!(c.username, user.as_deref());
        prop_assert_eq!(c.password, pass.as_deref());
        prop_assert_eq!(c.level, level);
    }

    // A stream of packets cut anywhere frames into the same packets.
    #[test]
    fn framing_a_stream(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 1..8), cut in 0usize..4000) {
        let mut stream = Vec::new();
        for p in &payloads {
            let mut body = vec![0, 1, b't'];
            body.extend_from_slice(p);
            stream.extend(packet(0x30, &body));
        }
        let cut = cut.min(stream.len());
        let mut pos = 0;
        let mut seen = 0;
        while let Ok(Framing::Packet(f)) = frame(&stream[pos..cut], MAX_REMAINING) {
            let p = parse_publish(&stream[pos..pos + f.len], &f, 4).expect("publish");
            prop_assert_eq!(p.payload.len(), payloads[seen].len());
            pos += f.len;
            seen += 1;
        }
        prop_assert!(seen <= payloads.len());
        if cut == stream.len() {
            prop_assert_eq!(seen, payloads.len());
        }
    }
}

proptest! {
    /// What put_publish appends is one whole PUBLISH that reads back as written (the
    /// remaining length is computed before the fields are written).
    #[test]
    fn put_publish_reads_back(
        level in prop_oneof![Just(4u8), Just(5u8)],
        qos in 0u8..2,
        pkid in 1u16..,
        topic in "[a-z/]{1,40}",
        // No properties, or a payload format indicator.
        props in prop_oneof![Just(vec![]), Just(vec![0x01u8, 1])],
        sub_id in proptest::option::of(prop_oneof![1u32..128, 128u32..20_000, 2_097_152u32..268_435_455]),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut out = vec![0xaa];
        put_publish(&mut out, level, &topic, qos, pkid, false, &props, sub_id, &payload);
        let pkt = &out[1..];
        let f = whole(pkt);
        prop_assert_eq!(f.len, pkt.len());
        prop_assert_eq!(pkt, &publish(level, &topic, qos, pkid, false, &props, sub_id, &payload)[..]);
        let p = parse_publish(pkt, &f, level).expect("publish");
        prop_assert_eq!((p.topic, p.qos, p.payload), (topic.as_str(), qos, &payload[..]));
        if qos > 0 {
            prop_assert_eq!(p.pkid, pkid);
        }
        if level == 5 {
            let id = subscription_id(p.properties).expect("properties");
            prop_assert_eq!(id, sub_id);
        }
    }
}

#[test]
fn unsuback_per_level() {
    assert_eq!(unsuback(0x0102, 4, &[0x11]), vec![0xb0, 2, 1, 2]);
    assert_eq!(
        unsuback(0x0102, 5, &[0, 0x11]),
        vec![0xb0, 5, 1, 2, 0, 0, 0x11]
    );
}

#[test]
fn unsubscribe_reads_back() {
    for (level, props) in [(4, None), (5, Some(&[0x26, 0, 1, b'k', 0, 1, b'v'][..]))] {
        let pkt = unsubscribe(9, props, &[("a/#", 0), ("b", 0)]);
        let u = parse_subscribe(&pkt, &whole(&pkt), level, true).expect("unsubscribe");
        assert_eq!(u.pkid, 9);
        assert_eq!(u.properties, props);
        assert_eq!(u.filters, vec![("a/#", 0), ("b", 0)]);
    }
}
