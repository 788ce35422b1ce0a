//! Just enough MQTT (3.1.1 and 5) for the broker front: framing (fixed header and
//! remaining length), the fields of CONNECT, PUBLISH, SUBSCRIBE, UNSUBSCRIBE, SUBACK and
//! CONNACK that the front decides on, and the few packets the front answers itself.
//!
//! Parsers borrow from the read buffer (nothing is copied to be forwarded) and never
//! panic on any input: every length is checked (see the proptest cases in the tests).

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBSCRIBE: u8 = 10;
pub const UNSUBACK: u8 = 11;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// The largest remaining length MQTT can encode (4 bytes of 7 bits).
pub const MAX_REMAINING: usize = 268_435_455;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("malformed remaining length")]
    Length,
    #[error("packet of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed {0} packet")]
    Malformed(&'static str),
}

/// One packet's place in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Packet type (the high nibble of the first byte).
    pub kind: u8,
    /// The low nibble of the first byte.
    pub flags: u8,
    /// Fixed header length (1 + the remaining length's bytes).
    pub header: usize,
    /// Whole packet length, fixed header included.
    pub len: usize,
}

/// What [`frame`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A whole packet.
    Packet(Frame),
    /// Not enough bytes yet; the packet's total length when already known.
    Partial(Option<usize>),
}

/// Find the packet at the start of `buf`; a packet longer than `max` bytes is an error
/// (found as soon as its header is in, before its body is buffered).
pub fn frame(buf: &[u8], max: usize) -> Result<Framing, PacketError> {
    let Some(&first) = buf.first() else {
        return Ok(Framing::Partial(None));
    };
    let mut remaining = 0usize;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(Framing::Partial(None));
        };
        remaining |= usize::from(b & 0x7f) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if i > 4 {
            return Err(PacketError::Length);
        }
    }
    let len = i + remaining;
    if len > max {
        return Err(PacketError::TooLarge(len));
    }
    let f = Frame {
        kind: first >> 4,
        flags: first & 0x0f,
        header: i,
        len,
    };
    if buf.len() < len {
        Ok(Framing::Partial(Some(len)))
    } else {
        Ok(Framing::Packet(f))
    }
}

/// Append an MQTT variable byte integer.
pub fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// A fixed header followed by `body`.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// A bounds-checked reader over a packet body.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, pos: 0, what }
    }
    fn err(&self) -> PacketError {
        PacketError::Malformed(self.what)
    }
    fn u8(&mut self) -> Result<u8, PacketError> {
        let b = *self.buf.get(self.pos).ok_or(self.err())?;
        self.pos += 1;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, PacketError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], PacketError> {
        let end = self.pos.checked_add(n).ok_or(self.err())?;
        let b = self.buf.get(self.pos..end).ok_or(self.err())?;
        self.pos = end;
        Ok(b)
    }
    fn binary(&mut self) -> Result<&'a [u8], PacketError> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }
    fn string(&mut self) -> Result<&'a str, PacketError> {
        let b = self.binary()?;
        std::str::from_utf8(b).map_err(|_| self.err())
    }
    fn varint(&mut self) -> Result<usize, PacketError> {
        let mut n = 0usize;
        for i in 0..4 {
            let b = self.u8()?;
            n |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(self.err())
    }
    /// A v5 property section: its raw bytes (length prefix excluded).
    fn properties(&mut self) -> Result<&'a [u8], PacketError> {
        let n = self.varint()?;
        self.bytes(n)
    }
    fn rest(&mut self) -> &'a [u8] {
        let r = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        r
    }
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// Walk a v5 property section; `f` sees each property's id, its value for integer
/// properties (two-byte ones and the subscription identifier), and where it lies in
/// `props`.
fn walk_properties(
    props: &[u8],
    what: &'static str,
    mut f: impl FnMut(u8, Option<u32>, std::ops::Range<usize>),
) -> Result<(), PacketError> {
    let mut r = Reader::new(props, what);
    while !r.done() {
        let start = r.pos;
        let id = r.varint()?;
        let id = u8::try_from(id).map_err(|_| r.err())?;
        let value = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => {
                r.u8()?;
                None
            }
            0x13 | 0x21 | 0x22 | 0x23 => Some(u32::from(r.u16()?)),
            0x02 | 0x11 | 0x18 | 0x27 => {
                r.bytes(4)?;
                None
            }
            0x0b => Some(u32::try_from(r.varint()?).map_err(|_| r.err())?),
            0x03 | 0x08 | 0x12 | 0x15 | 0x1a | 0x1c | 0x1f => {
                r.string()?;
                None
            }
            0x09 | 0x16 => {
                r.binary()?;
                None
            }
            0x26 => {
                r.string()?;
                r.string()?;
                None
            }
            _ => return Err(r.err()),
        };
        f(id, value, start..r.pos);
    }
    Ok(())
}

/// v5 property id: topic alias.
pub const TOPIC_ALIAS: u8 = 0x23;
/// v5 property id: will delay interval (a will property only).
pub const WILL_DELAY: u8 = 0x18;
/// v5 property id: subscription identifier.
pub const SUBSCRIPTION_ID: u8 = 0x0b;

/// `props` without the properties whose id is in `drop`.
pub fn without_properties(props: &[u8], drop: &[u8]) -> Result<Vec<u8>, PacketError> {
    let mut out = Vec::with_capacity(props.len());
    walk_properties(props, "properties", |id, _, span| {
        if !drop.contains(&id) {
            out.extend_from_slice(&props[span]);
        }
    })?;
    Ok(out)
}

/// The subscription identifier among a SUBSCRIBE's properties.
pub fn subscription_id(props: &[u8]) -> Result<Option<u32>, PacketError> {
    let mut id = None;
    walk_properties(props, "SUBSCRIBE", |p, v, _| {
        if p == SUBSCRIPTION_ID {
            id = v;
        }
    })?;
    Ok(id)
}

/// The fields of a CONNECT the front decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect<'a> {
    /// 4 = MQTT 3.1.1, 5 = MQTT 5 (3 = MQTT 3.1, which the front refuses).
    pub level: u8,
    pub keep_alive: u16,
    /// Where the two keepalive bytes are, from the packet's start.
    pub keep_alive_at: usize,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// 3.1.1 clean session / MQTT 5 clean start.
    pub clean: bool,
    /// MQTT 5 session expiry interval (s; 0 when absent).
    pub session_expiry: u32,
    /// MQTT 5 receive maximum: QoS 1 and 2 deliveries the client takes unacknowledged
    /// (65 535 when absent).
    pub receive_maximum: u16,
    /// MQTT 5 CONNECT properties.
    pub properties: &'a [u8],
    pub will: Option<Will<'a>>,
}

/// A CONNECT's last will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will<'a> {
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 will properties.
    pub properties: &'a [u8],
    pub topic: &'a str,
    pub payload: &'a [u8],
}

/// v5 property id: session expiry interval.
const SESSION_EXPIRY: u8 = 0x11;
/// v5 property id: receive maximum.
const RECEIVE_MAXIMUM: u8 = 0x21;

/// Parse a whole CONNECT packet (fixed header included). Only the protocol name and
/// level are read for a level other than 4 or 5 (everything else is then empty).
pub fn parse_connect<'a>(pkt: &'a [u8], f: &Frame) -> Result<Connect<'a>, PacketError> {
    let mut r = Reader::new(pkt.get(f.header..f.len).unwrap_or(&[]), "CONNECT");
    let name = r.string()?;
    let level = r.u8()?;
    if !matches!((name, level), ("MQTT", 4) | ("MQTT", 5)) {
        if matches!(name, "MQTT" | "MQIsdp") {
            return Ok(Connect {
                level,
                keep_alive: 0,
                keep_alive_at: 0,
                client_id: "",
                username: None,
                password: None,
                clean: true,
                session_expiry: 0,
                receive_maximum: u16::MAX,
                properties: &[],
                will: None,
            });
        }
        return Err(r.err());
    }
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(r.err());
    }
    let keep_alive_at = f.header + r.pos;
    let keep_alive = r.u16()?;
    let mut properties = &[][..];
    let mut session_expiry = 0;
    let mut receive_maximum = u16::MAX;
    if level == 5 {
        properties = r.properties()?;
        walk_properties(properties, "CONNECT", |id, v, span| {
            if id == RECEIVE_MAXIMUM {
                receive_maximum = v.and_then(|v| u16::try_from(v).ok()).unwrap_or(u16::MAX);
            }
            if id == SESSION_EXPIRY {
                if let Some(b) = properties.get(span.start + 1..span.end) {
                    session_expiry = b.iter().fold(0u32, |n, &x| (n << 8) | u32::from(x));
                }
            }
        })?;
    }
    let client_id = r.string()?;
    let will = if flags & 0x04 != 0 {
        let properties = if level == 5 { r.properties()? } else { &[] };
        let topic = r.string()?;
        let payload = r.binary()?;
        let qos = (flags >> 3) & 0x03;
        if qos == 3 {
            return Err(r.err());
        }
        Some(Will {
            qos,
            retain: flags & 0x20 != 0,
            properties,
            topic,
            payload,
        })
    } else {
        None
    };
    let username = if flags & 0x80 != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        level,
        keep_alive,
        keep_alive_at,
        client_id,
        username,
        password,
        clean: flags & 0x02 != 0,
        session_expiry,
        receive_maximum,
        properties,
        will,
    })
}

/// The fields of a PUBLISH the front decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    /// Empty when a v5 topic alias stands for it.
    pub topic: &'a str,
    pub qos: u8,
    pub pkid: u16,
    pub topic_alias: Option<u16>,
    /// The v5 property section (empty on 3.1.1).
    pub properties: &'a [u8],
    pub payload: &'a [u8],
}

/// Parse a whole PUBLISH packet of protocol `level`.
pub fn parse_publish<'a>(pkt: &'a [u8], f: &Frame, level: u8) -> Result<Publish<'a>, PacketError> {
    let mut r = Reader::new(pkt.get(f.header..f.len).unwrap_or(&[]), "PUBLISH");
    let qos = (f.flags >> 1) & 0x03;
    if qos == 3 {
        return Err(r.err());
    }
    let topic = r.string()?;
    let pkid = if qos > 0 { r.u16()? } else { 0 };
    let mut topic_alias = None;
    let mut properties = &[][..];
    if level == 5 {
        properties = r.properties()?;
        walk_properties(properties, "PUBLISH", |id, v, _| {
            if id == TOPIC_ALIAS {
                topic_alias = v.and_then(|v| u16::try_from(v).ok());
            }
        })?;
    }
    Ok(Publish {
        topic,
        qos,
        pkid,
        topic_alias,
        properties,
        payload: r.rest(),
    })
}

/// A SUBSCRIBE or UNSUBSCRIBE: packet id, v5 properties, and each filter with its
/// options byte (0 for UNSUBSCRIBE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub pkid: u16,
    pub properties: Option<&'a [u8]>,
    pub filters: Vec<(&'a str, u8)>,
}

/// Parse a whole SUBSCRIBE (`unsubscribe` false) or UNSUBSCRIBE packet.
pub fn parse_subscribe<'a>(
    pkt: &'a [u8],
    f: &Frame,
    level: u8,
    unsubscribe: bool,
) -> Result<Subscribe<'a>, PacketError> {
    let what = if unsubscribe {
        "UNSUBSCRIBE"
    } else {
        "SUBSCRIBE"
    };
    let mut r = Reader::new(pkt.get(f.header..f.len).unwrap_or(&[]), what);
    let pkid = r.u16()?;
    let properties = if level == 5 {
        Some(r.properties()?)
    } else {
        None
    };
    let mut filters = Vec::new();
    while !r.done() {
        let filter = r.string()?;
        let options = if unsubscribe { 0 } else { r.u8()? };
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(r.err());
    }
    Ok(Subscribe {
        pkid,
        properties,
        filters,
    })
}

/// Build a SUBSCRIBE with `filters` (and the original's packet id and properties).
pub fn subscribe(pkid: u16, properties: Option<&[u8]>, filters: &[(&str, u8)]) -> Vec<u8> {
    filters_packet(0x82, pkid, properties, filters, true)
}

/// Build an UNSUBSCRIBE of `filters` (the options bytes are ignored) with the
/// original's packet id and properties.
pub fn unsubscribe(pkid: u16, properties: Option<&[u8]>, filters: &[(&str, u8)]) -> Vec<u8> {
    filters_packet(0xa2, pkid, properties, filters, false)
}

/// A SUBSCRIBE or UNSUBSCRIBE (`options`: each filter followed by its options byte).
fn filters_packet(
    first: u8,
    pkid: u16,
    properties: Option<&[u8]>,
    filters: &[(&str, u8)],
    options: bool,
) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if let Some(p) = properties {
        put_varint(&mut body, p.len());
        body.extend_from_slice(p);
    }
    for (filter, o) in filters {
        body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
        body.extend_from_slice(filter.as_bytes());
        if options {
            body.push(*o);
        }
    }
    packet(first, &body)
}

/// A SUBACK: packet id, v5 properties, one return / reason code per filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck<'a> {
    pub pkid: u16,
    pub properties: Option<&'a [u8]>,
    pub codes: &'a [u8],
}

pub fn parse_suback<'a>(pkt: &'a [u8], f: &Frame, level: u8) -> Result<SubAck<'a>, PacketError> {
    let mut r = Reader::new(pkt.get(f.header..f.len).unwrap_or(&[]), "SUBACK");
    let pkid = r.u16()?;
    let properties = if level == 5 {
        Some(r.properties()?)
    } else {
        None
    };
    Ok(SubAck {
        pkid,
        properties,
        codes: r.rest(),
    })
}

/// Build a SUBACK (properties: v5 only; `None` on v5 writes an empty section).
pub fn suback(pkid: u16, level: u8, properties: Option<&[u8]>, codes: &[u8]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if level == 5 {
        let p = properties.unwrap_or(&[]);
        put_varint(&mut body, p.len());
        body.extend_from_slice(p);
    }
    body.extend_from_slice(codes);
    packet(0x90, &body)
}

/// A CONNACK with `code` (3.1.1 return code or v5 reason code), session not present.
pub fn connack(level: u8, code: u8) -> Vec<u8> {
    if level == 5 {
        vec![0x20, 3, 0, code, 0]
    } else {
        vec![0x20, 2, 0, code]
    }
}

/// The broker's v5 CONNACK with a Server Keep Alive property added.
pub fn connack_with_keepalive(
    pkt: &[u8],
    f: &Frame,
    keep_alive: u16,
) -> Result<Vec<u8>, PacketError> {
    let mut r = Reader::new(pkt.get(f.header..f.len).unwrap_or(&[]), "CONNACK");
    let flags = r.u8()?;
    let code = r.u8()?;
    let props = if r.done() { &[][..] } else { r.properties()? };
    let mut p = Vec::with_capacity(props.len() + 3);
    walk_properties(props, "CONNACK", |_, _, _| {})?;
    p.extend_from_slice(props);
    p.push(0x13);
    p.extend_from_slice(&keep_alive.to_be_bytes());
    let mut body = vec![flags, code];
    put_varint(&mut body, p.len());
    body.extend_from_slice(&p);
    Ok(packet(0x20, &body))
}

/// Build a PUBLISH (`properties` and `subscription_id`: v5 only; packet id only for
/// QoS > 0).
#[allow(clippy::too_many_arguments)]
pub fn publish(
    level: u8,
    topic: &str,
    qos: u8,
    pkid: u16,
    retain: bool,
    properties: &[u8],
    subscription_id: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(topic.len() + properties.len() + payload.len() + 16);
    put_publish(
        &mut out,
        level,
        topic,
        qos,
        pkid,
        retain,
        properties,
        subscription_id,
        payload,
    );
    out
}

/// Bytes of `n` as a variable byte integer.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Append a PUBLISH to `out` (as [`publish`] builds it), without a copy in between.
#[allow(clippy::too_many_arguments)]
pub fn put_publish(
    out: &mut Vec<u8>,
    level: u8,
    topic: &str,
    qos: u8,
    pkid: u16,
    retain: bool,
    properties: &[u8],
    subscription_id: Option<u32>,
    payload: &[u8],
) {
    let sub_id = subscription_id.map(|id| id as usize);
    let props = properties.len() + sub_id.map_or(0, |id| 1 + varint_len(id));
    let mut remaining = 2 + topic.len() + payload.len();
    if qos > 0 {
        remaining += 2;
    }
    if level == 5 {
        remaining += varint_len(props) + props;
    }
    out.reserve(remaining + 5);
    out.push((PUBLISH << 4) | (qos << 1) | u8::from(retain));
    put_varint(out, remaining);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        out.extend_from_slice(&pkid.to_be_bytes());
    }
    if level == 5 {
        put_varint(out, props);
        out.extend_from_slice(properties);
        if let Some(id) = sub_id {
            out.push(SUBSCRIPTION_ID);
            put_varint(out, id);
        }
    }
    out.extend_from_slice(payload);
}

/// An UNSUBACK: one v5 reason code per filter (3.1.1 has none).
pub fn unsuback(pkid: u16, level: u8, codes: &[u8]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if level == 5 {
        body.push(0); // no properties
        body.extend_from_slice(codes);
    }
    packet(0xb0, &body)
}

/// A two-byte acknowledgement (PUBACK, PUBREC, PUBREL, PUBCOMP) for `pkid`.
pub fn ack(kind: u8, pkid: u16) -> [u8; 4] {
    let first = (kind << 4) | if kind == PUBREL { 0x02 } else { 0 };
    let [hi, lo] = pkid.to_be_bytes();
    [first, 2, hi, lo]
}

/// The packet id of a PUBACK / PUBREC / PUBREL / PUBCOMP.
pub fn ack_pkid(pkt: &[u8], f: &Frame) -> Option<u16> {
    let b = pkt.get(f.header..f.header + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// A DISCONNECT (normal disconnection) of protocol `level`.
pub fn disconnect(level: u8) -> Vec<u8> {
    if level == 5 {
        vec![0xe0, 1, 0]
    } else {
        vec![0xe0, 0]
    }
}

/// A v5 DISCONNECT with `reason`.
pub fn disconnect_v5(reason: u8) -> [u8; 3] {
    [0xe0, 1, reason]
}

#[cfg(test)]
mod tests;
