//! Register values: the data types, the byte orders, and the pure decode/encode between
//! Modbus registers (16-bit words, in wire order) and reading values.
//!
//! The byte order names the order of the bytes of a value on the wire, `A` being the most
//! significant byte: `ABCD` is big endian (the Modbus default), `CDAB` puts the registers
//! in reverse order, `BADC` swaps the two bytes inside each register, `DCBA` does both
//! (little endian). The same rule holds over the 4 registers of a 64-bit value (`CDAB`
//! reverses all four). A 16-bit value only sees the byte swap.

use std::fmt;

use sensorgate_api::Value;
use serde::de::{self, Deserializer};
use serde::Deserialize;

/// `type = "…"` of a point: how its registers (or bit) become a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    String,
}

impl DataType {
    /// The registers a value of this type takes; `length` is a string's.
    pub fn registers(self, length: u16) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String => length,
        }
    }

    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::String => "string",
        }
    }

    /// Numbers: the types that take `scale`, `offset`, `min` and `max`.
    pub fn is_numeric(self) -> bool {
        !matches!(self, DataType::Bool | DataType::String)
    }

    fn is_float(self) -> bool {
        matches!(self, DataType::F32 | DataType::F64)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `byte_order = "…"`: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ByteOrder {
    #[default]
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

impl ByteOrder {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            ByteOrder::Abcd => "ABCD",
            ByteOrder::Cdab => "CDAB",
            ByteOrder::Badc => "BADC",
            ByteOrder::Dcba => "DCBA",
        }
    }

    /// Registers in reverse order.
    fn word_swap(self) -> bool {
        matches!(self, ByteOrder::Cdab | ByteOrder::Dcba)
    }

    /// The two bytes of each register swapped.
    fn byte_swap(self) -> bool {
        matches!(self, ByteOrder::Badc | ByteOrder::Dcba)
    }

    /// Parse `ABCD`, `CDAB`, `BADC`, `DCBA` (any case), or the 64-bit spellings
    /// `ABCDEFGH`, `GHEFCDAB`, `BADCFEHG`, `HGFEDCBA`.
    pub fn parse(s: &str) -> Option<ByteOrder> {
        match s.trim().to_ascii_uppercase().as_str() {
            "ABCD" | "ABCDEFGH" => Some(ByteOrder::Abcd),
            "CDAB" | "GHEFCDAB" => Some(ByteOrder::Cdab),
            "BADC" | "BADCFEHG" => Some(ByteOrder::Badc),
            "DCBA" | "HGFEDCBA" => Some(ByteOrder::Dcba),
            _ => None,
        }
    }
}

impl fmt::Display for ByteOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ByteOrder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ByteOrder::parse(&s).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown byte order {s:?}, expected one of `ABCD`, `CDAB`, `BADC`, `DCBA`"
            ))
        })
    }
}

/// Registers in wire order to the value's bytes, most significant first.
pub fn to_bytes(words: &[u16], order: ByteOrder) -> Vec<u8> {
    let mut out = Vec::with_capacity(words.len() * 2);
    let mut push = |w: &u16| {
        let [hi, lo] = w.to_be_bytes();
        if order.byte_swap() {
            out.extend([lo, hi]);
        } else {
            out.extend([hi, lo]);
        }
    };
    if order.word_swap() {
        words.iter().rev().for_each(&mut push);
    } else {
        words.iter().for_each(&mut push);
    }
    out
}

/// [`to_bytes`] of at most 4 registers, without allocating: the bytes are `.0[..len]`.
fn to_array(words: &[u16], order: ByteOrder) -> ([u8; 8], usize) {
    let mut out = [0u8; 8];
    let n = words.len().min(4);
    for k in 0..n {
        let w = if order.word_swap() {
            words[n - 1 - k]
        } else {
            words[k]
        };
        let [hi, lo] = w.to_be_bytes();
        let pair = if order.byte_swap() {
            [lo, hi]
        } else {
            [hi, lo]
        };
        out[2 * k..2 * k + 2].copy_from_slice(&pair);
    }
    (out, 2 * n)
}

/// The value's bytes, most significant first, to registers in wire order: the inverse of
/// [`to_bytes`]. An odd trailing byte is padded with 0.
pub fn from_bytes(bytes: &[u8], order: ByteOrder) -> Vec<u16> {
    let mut words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let (hi, lo) = (c[0], c.get(1).copied().unwrap_or(0));
            if order.byte_swap() {
                u16::from_be_bytes([lo, hi])
            } else {
                u16::from_be_bytes([hi, lo])
            }
        })
        .collect();
    if order.word_swap() {
        words.reverse();
    }
    words
}

/// How one point's registers become a value, and back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Format {
    pub ty: DataType,
    pub order: ByteOrder,
    /// A bit of a register (0 = least significant): the value is that bit, a bool.
    pub bit: Option<u8>,
    /// Registers of a `string`; unused by other types.
    pub length: u16,
    /// `value = raw * scale + offset`; `None` = 1.
    pub scale: Option<f64>,
    /// `None` = 0.
    pub offset: Option<f64>,
}

impl Format {
    /// A plain format of `ty`: ABCD, no bit, no scale.
    pub fn plain(ty: DataType) -> Format {
        Format {
            ty,
            order: ByteOrder::Abcd,
            bit: None,
            length: 1,
            scale: None,
            offset: None,
        }
    }

    /// Registers (or bits, on a bit table) the value takes.
    pub fn registers(&self) -> u16 {
        if self.bit.is_some() {
            1
        } else {
            self.ty.registers(self.length)
        }
    }

    fn scaled(&self) -> bool {
        self.scale.is_some_and(|s| s != 1.0) || self.offset.is_some_and(|o| o != 0.0)
    }
}

/// Why registers could not become a value, or a value registers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("expected {expected} register(s), got {got}")]
    Length { expected: usize, got: usize },
    #[error("{0} is not a finite number")]
    NotFinite(String),
    #[error("{value} does not fit in a {ty} (raw {raw})")]
    OutOfRange {
        value: String,
        ty: DataType,
        raw: String,
    },
    #[error("{0}")]
    Type(String),
}

/// Decode a point's registers (in wire order) into its value, scale and offset applied.
pub fn decode(format: &Format, words: &[u16]) -> Result<Value, ValueError> {
    let need = format.registers() as usize;
    if words.len() != need {
        return Err(ValueError::Length {
            expected: need,
            got: words.len(),
        });
    }
    if format.ty == DataType::String && format.bit.is_none() {
        let bytes = to_bytes(words, format.order);
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..end]);
        return Ok(Value::Text(text.trim_end().to_string()));
    }
    // Every other type takes at most 4 registers: its bytes stay on the stack.
    let (array, len) = to_array(words, format.order);
    let bytes = &array[..len];
    if let Some(bit) = format.bit {
        let w = u16::from_be_bytes([bytes[0], bytes[1]]);
        return Ok(Value::Bool(w >> bit & 1 == 1));
    }
    let raw = match format.ty {
        DataType::Bool => return Ok(Value::Bool(words[0] != 0)),
        DataType::String => return Err(ValueError::Type("a string of a bit".into())),
        DataType::U16 => Raw::Int(u16::from_be_bytes(arr(bytes)) as i64),
        DataType::I16 => Raw::Int(i16::from_be_bytes(arr(bytes)) as i64),
        DataType::U32 => Raw::Int(u32::from_be_bytes(arr(bytes)) as i64),
        DataType::I32 => Raw::Int(i32::from_be_bytes(arr(bytes)) as i64),
        DataType::U64 => {
            let u = u64::from_be_bytes(arr(bytes));
            match i64::try_from(u) {
                Ok(i) => Raw::Int(i),
                Err(_) => Raw::UInt(u),
            }
        }
        DataType::I64 => Raw::Int(i64::from_be_bytes(arr(bytes))),
        // Through the shortest decimal form: f32 21.3 is 21.3, not 21.299999237060547.
        DataType::F32 => Raw::Float(f32_shortest(f32::from_be_bytes(arr(bytes)))),
        DataType::F64 => Raw::Float(f64::from_be_bytes(arr(bytes))),
    };
    if !format.scaled() {
        return Ok(match raw {
            Raw::Int(i) => Value::Int(i),
            Raw::UInt(u) => Value::UInt(u),
            Raw::Float(f) => Value::Float(f),
        });
    }
    let scale = format.scale.unwrap_or(1.0);
    let offset = format.offset.unwrap_or(0.0);
    let x = match raw {
        Raw::Int(i) => i as f64,
        Raw::UInt(u) => u as f64,
        Raw::Float(f) => f,
    };
    let y = x * scale + offset;
    // An integer times a scale with d decimals has at most d decimals: round off the
    // binary noise (215 * 0.1 is 21.5, not 21.500000000000004).
    let y = match (raw, decimals(scale), decimals(offset)) {
        (Raw::Int(_) | Raw::UInt(_), Some(a), Some(b)) => round_to(y, a.max(b)),
        _ => y,
    };
    Ok(Value::Float(y + 0.0))
}

/// Encode a value from MQTT (JSON) into a point's registers, in wire order: the inverse
/// of [`decode`] (raw = (value - offset) / scale, rounded for integer types). Bits of a
/// register are not encoded here: the caller reads, sets the bit and writes the register.
pub fn encode(format: &Format, value: &serde_json::Value) -> Result<Vec<u16>, ValueError> {
    let order = format.order;
    match format.ty {
        DataType::Bool => {
            let b = json_bool(value)?;
            return Ok(vec![u16::from(b)]);
        }
        DataType::String => {
            let s = value
                .as_str()
                .ok_or_else(|| ValueError::Type(format!("{value} is not a string")))?;
            let max = format.length as usize * 2;
            if s.len() > max {
                return Err(ValueError::Type(format!(
                    "{s:?} is {} bytes, the point holds {max}",
                    s.len()
                )));
            }
            let mut bytes = s.as_bytes().to_vec();
            bytes.resize(max, 0);
            return Ok(from_bytes(&bytes, order));
        }
        _ => {}
    }
    if !format.scaled() && !format.ty.is_float() {
        if let Some(i) = json_integer(value) {
            return encode_int(format, i);
        }
    }
    let v = json_number(value)?;
    let scale = format.scale.unwrap_or(1.0);
    let offset = format.offset.unwrap_or(0.0);
    let raw = (v - offset) / scale;
    if !raw.is_finite() {
        return Err(ValueError::NotFinite(raw.to_string()));
    }
    let out_of_range = || ValueError::OutOfRange {
        value: v.to_string(),
        ty: format.ty,
        raw: raw.to_string(),
    };
    if format.ty.is_float() {
        let bytes = match format.ty {
            DataType::F32 => {
                let f = raw as f32;
                if !f.is_finite() {
                    return Err(out_of_range());
                }
                f.to_be_bytes().to_vec()
            }
            _ => raw.to_be_bytes().to_vec(),
        };
        return Ok(from_bytes(&bytes, order));
    }
    let r = raw.round();
    let (lo, hi) = match format.ty {
        DataType::U16 => (0.0, u16::MAX as f64),
        DataType::I16 => (i16::MIN as f64, i16::MAX as f64),
        DataType::U32 => (0.0, u32::MAX as f64),
        DataType::I32 => (i32::MIN as f64, i32::MAX as f64),
        DataType::U64 => (0.0, u64::MAX as f64),
        _ => (i64::MIN as f64, i64::MAX as f64),
    };
    if r < lo || r > hi {
        return Err(out_of_range());
    }
    // `as` saturates; the range check above keeps it exact within f64's precision.
    let bytes = match format.ty {
        DataType::U16 => (r as u16).to_be_bytes().to_vec(),
        DataType::I16 => (r as i16).to_be_bytes().to_vec(),
        DataType::U32 => (r as u32).to_be_bytes().to_vec(),
        DataType::I32 => (r as i32).to_be_bytes().to_vec(),
        DataType::U64 => (r as u64).to_be_bytes().to_vec(),
        _ => (r as i64).to_be_bytes().to_vec(),
    };
    Ok(from_bytes(&bytes, order))
}

/// An integer from MQTT exactly (64-bit values do not fit an f64's 53 bits).
fn json_integer(value: &serde_json::Value) -> Option<i128> {
    match value {
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        serde_json::Value::String(s) => s.trim().parse::<i128>().ok(),
        _ => None,
    }
}

/// An exact integer into the registers of an integer type, range checked.
fn encode_int(format: &Format, i: i128) -> Result<Vec<u16>, ValueError> {
    let out_of_range = || ValueError::OutOfRange {
        value: i.to_string(),
        ty: format.ty,
        raw: i.to_string(),
    };
    let bytes = match format.ty {
        DataType::U16 => u16::try_from(i)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::I16 => i16::try_from(i)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::U32 => u32::try_from(i)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::I32 => i32::try_from(i)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        DataType::U64 => u64::try_from(i)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
        _ => i64::try_from(i)
            .map_err(|_| out_of_range())?
            .to_be_bytes()
            .to_vec(),
    };
    Ok(from_bytes(&bytes, format.order))
}

/// A bool from MQTT: `true`/`false`, `1`/`0`, or the strings `"true"`, `"false"`, `"on"`,
/// `"off"`, `"1"`, `"0"` (any case).
pub fn json_bool(value: &serde_json::Value) -> Result<bool, ValueError> {
    let bad = || ValueError::Type(format!("{value} is not a bool: use true/false or 1/0"));
    match value {
        serde_json::Value::Bool(b) => Ok(*b),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(1.0) => Ok(true),
            Some(0.0) => Ok(false),
            _ => Err(bad()),
        },
        serde_json::Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "on" | "1" => Ok(true),
            "false" | "off" | "0" => Ok(false),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// A number from MQTT: a JSON number, or a string holding one.
pub fn json_number(value: &serde_json::Value) -> Result<f64, ValueError> {
    let x = match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match x {
        Some(x) if x.is_finite() => Ok(x),
        Some(x) => Err(ValueError::NotFinite(x.to_string())),
        None => Err(ValueError::Type(format!("{value} is not a number"))),
    }
}

#[derive(Debug, Clone, Copy)]
enum Raw {
    Int(i64),
    UInt(u64),
    Float(f64),
}

fn arr<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = N.min(bytes.len());
    a[..n].copy_from_slice(&bytes[..n]);
    a
}

/// A formatter into a stack buffer: the shortest forms of floats without allocating.
struct StackText {
    buf: [u8; 48],
    len: usize,
}

impl StackText {
    /// `x` written with `{:e}` (the shortest digits that read back as `x`).
    fn exp(x: impl fmt::LowerExp) -> StackText {
        use std::fmt::Write;
        let mut t = StackText {
            buf: [0; 48],
            len: 0,
        };
        // 48 bytes hold any f64 in `{:e}` form ("-2.2250738585072014e-308" is 24).
        let _ = write!(t, "{x:e}");
        t
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Exact powers of ten: every 10^k up to 10^22 is an f64 without rounding.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Integers below this are exact in an f64.
const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53

/// `n / 10^d` for `d` in -22..=22, correctly rounded when `n` is an exact integer: the
/// f64 that the decimal text of `n` shifted by `d` places reads as.
fn shift(n: f64, d: i32) -> f64 {
    if d >= 0 {
        n / POW10[d as usize]
    } else {
        n * POW10[(-d) as usize]
    }
}

/// The f64 of an f32's shortest decimal form: f32 21.3 is 21.3, not 21.299999237060547.
///
/// Without text: the shortest decimal that reads back as `f` has the fewest significant
/// digits k (at most 9) such that `f` rounded to k digits reads back as `f`; for each k
/// that rounding is one multiplication, and the f64 of the decimal one exact division.
/// Formatting remains the fallback (outside the exact ranges).
fn f32_shortest(f: f32) -> f64 {
    let x = f64::from(f);
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let e = x.abs().log10().floor() as i32;
    for k in 1..=9 {
        let d = k - 1 - e; // decimals of a k-digit form
        if !(-22..=22).contains(&d) {
            break;
        }
        let n = shift(x, -d).round();
        if n.abs() >= EXACT {
            break;
        }
        let y = shift(n, d);
        if y as f32 == f {
            return y;
        }
    }
    StackText::exp(f).as_str().parse::<f64>().unwrap_or(x)
}

/// Digits after the decimal point of `x`'s shortest plain decimal form (its `Display`);
/// `None` if that has more than 15 (no rounding then).
///
/// Without text: the fewest decimals d such that `x` rounded to d decimals reads back as
/// `x` (an exact integer divided by an exact power of ten is correctly rounded, as
/// reading the decimal is). Formatting remains the fallback for huge values.
fn decimals(x: f64) -> Option<u32> {
    if !x.is_finite() {
        return Some(0);
    }
    for d in 0..=15 {
        let n = shift(x, -d).round();
        if n.abs() >= EXACT {
            return decimals_by_text(x);
        }
        if shift(n, d) == x {
            return Some(d as u32);
        }
    }
    None
}

/// [`decimals`] through the `{:e}` form.
fn decimals_by_text(x: f64) -> Option<u32> {
    let t = StackText::exp(x);
    // "2.15e1": 2 digits after the point, exponent 1: 1 decimal. "inf", "NaN": 0.
    let Some((mantissa, exp)) = t.as_str().split_once('e') else {
        return Some(0);
    };
    let digits = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i64);
    let d = (digits - exp.parse::<i64>().unwrap_or(0)).max(0);
    (d <= 15).then_some(d as u32)
}

fn round_to(x: f64, decimals: u32) -> f64 {
    let p = 10f64.powi(decimals as i32);
    let r = (x * p).round() / p;
    if r.is_finite() {
        r
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fmt(ty: DataType, order: ByteOrder) -> Format {
        Format {
            order,
            ..Format::plain(ty)
        }
    }

    const ORDERS: [ByteOrder; 4] = [
        ByteOrder::Abcd,
        ByteOrder::Cdab,
        ByteOrder::Badc,
        ByteOrder::Dcba,
    ];

    #[test]
    fn f32_21_5_in_every_byte_order() {
        // 21.5f32 = 0x41AC0000.
        let cases: [(ByteOrder, [u16; 2]); 4] = [
            (ByteOrder::Abcd, [0x41AC, 0x0000]),
            (ByteOrder::Cdab, [0x0000, 0x41AC]),
            (ByteOrder::Badc, [0xAC41, 0x0000]),
            (ByteOrder::Dcba, [0x0000, 0xAC41]),
        ];
        for (order, words) in cases {
            let f = fmt(DataType::F32, order);
            assert_eq!(decode(&f, &words), Ok(Value::Float(21.5)), "{order}");
            assert_eq!(encode(&f, &json!(21.5)).unwrap(), words, "{order}");
        }
    }

    #[test]
    fn u32_0x12345678_in_every_byte_order() {
        let cases: [(ByteOrder, [u16; 2]); 4] = [
            (ByteOrder::Abcd, [0x1234, 0x5678]),
            (ByteOrder::Cdab, [0x5678, 0x1234]),
            (ByteOrder::Badc, [0x3412, 0x7856]),
            (ByteOrder::Dcba, [0x7856, 0x3412]),
        ];
        for (order, words) in cases {
            let f = fmt(DataType::U32, order);
            assert_eq!(decode(&f, &words), Ok(Value::Int(0x1234_5678)), "{order}");
            assert_eq!(encode(&f, &json!(0x1234_5678)).unwrap(), words);
        }
    }

    #[test]
    fn sixty_four_bit_orders_follow_the_same_rule() {
        // 0x0102030405060708
        let v = 0x0102_0304_0506_0708_i64;
        let cases: [(ByteOrder, [u16; 4]); 4] = [
            (ByteOrder::Abcd, [0x0102, 0x0304, 0x0506, 0x0708]),
            (ByteOrder::Cdab, [0x0708, 0x0506, 0x0304, 0x0102]),
            (ByteOrder::Badc, [0x0201, 0x0403, 0x0605, 0x0807]),
            (ByteOrder::Dcba, [0x0807, 0x0605, 0x0403, 0x0201]),
        ];
        for (order, words) in cases {
            for ty in [DataType::I64, DataType::U64] {
                let f = fmt(ty, order);
                assert_eq!(decode(&f, &words), Ok(Value::Int(v)), "{ty} {order}");
                assert_eq!(encode(&f, &json!(v)).unwrap(), words, "{ty} {order}");
            }
        }
        // f64 1.0 = 0x3FF0000000000000
        let f = fmt(DataType::F64, ByteOrder::Cdab);
        assert_eq!(decode(&f, &[0, 0, 0, 0x3FF0]), Ok(Value::Float(1.0)));
        let f = fmt(DataType::F64, ByteOrder::Abcd);
        assert_eq!(decode(&f, &[0x4035, 0x8000, 0, 0]), Ok(Value::Float(21.5)));
        assert_eq!(
            encode(&f, &json!(21.5)).unwrap(),
            vec![0x4035, 0x8000, 0, 0]
        );
    }

    #[test]
    fn sixteen_bit_types_and_signs() {
        let f = fmt(DataType::I16, ByteOrder::Abcd);
        assert_eq!(decode(&f, &[0xFFFE]), Ok(Value::Int(-2)));
        assert_eq!(encode(&f, &json!(-2)).unwrap(), vec![0xFFFE]);
        let f = fmt(DataType::U16, ByteOrder::Abcd);
        assert_eq!(decode(&f, &[0xFFFE]), Ok(Value::Int(65534)));
        // CDAB does nothing to one register, BADC swaps its bytes.
        let f = fmt(DataType::U16, ByteOrder::Cdab);
        assert_eq!(decode(&f, &[0x1234]), Ok(Value::Int(0x1234)));
        let f = fmt(DataType::U16, ByteOrder::Badc);
        assert_eq!(decode(&f, &[0x1234]), Ok(Value::Int(0x3412)));
        let f = fmt(DataType::I32, ByteOrder::Abcd);
        assert_eq!(decode(&f, &[0xFFFF, 0xFFFF]), Ok(Value::Int(-1)));
        let f = fmt(DataType::U64, ByteOrder::Abcd);
        assert_eq!(
            decode(&f, &[0xFFFF; 4]),
            Ok(Value::UInt(u64::MAX)),
            "above i64::MAX stays unsigned"
        );
    }

    #[test]
    fn every_type_and_order_round_trips() {
        let values = [
            (DataType::U16, json!(4242)),
            (DataType::I16, json!(-4242)),
            (DataType::U32, json!(4_000_000_000u64)),
            (DataType::I32, json!(-2_000_000_000)),
            (DataType::U64, json!(9_000_000_000_000u64)),
            (DataType::I64, json!(-9_000_000_000_000i64)),
            (DataType::F32, json!(-1.25)),
            (DataType::F64, json!(1234.5678)),
        ];
        for order in ORDERS {
            for (ty, v) in &values {
                let f = fmt(*ty, order);
                let words = encode(&f, v).unwrap();
                assert_eq!(words.len(), ty.registers(0) as usize);
                let back = decode(&f, &words).unwrap();
                assert_eq!(back.as_f64(), v.as_f64(), "{ty} {order}");
            }
        }
    }

    #[test]
    fn f32_keeps_its_short_decimal_form() {
        let f = fmt(DataType::F32, ByteOrder::Abcd);
        let words = encode(&f, &json!(21.3)).unwrap();
        assert_eq!(decode(&f, &words), Ok(Value::Float(21.3)));
    }

    #[test]
    fn scale_and_offset_round_off_binary_noise() {
        let f = Format {
            scale: Some(0.1),
            ..Format::plain(DataType::I16)
        };
        assert_eq!(decode(&f, &[215]), Ok(Value::Float(21.5)));
        assert_eq!(decode(&f, &[0xFFFF]), Ok(Value::Float(-0.1)));
        assert_eq!(encode(&f, &json!(21.5)).unwrap(), vec![215]);
        assert_eq!(encode(&f, &json!(21.54)).unwrap(), vec![215], "rounded");
        assert_eq!(encode(&f, &json!(-0.1)).unwrap(), vec![0xFFFF]);

        let f = Format {
            scale: Some(0.01),
            offset: Some(-40.0),
            ..Format::plain(DataType::U16)
        };
        assert_eq!(decode(&f, &[6150]), Ok(Value::Float(21.5)));
        assert_eq!(encode(&f, &json!(21.5)).unwrap(), vec![6150]);
        // Scale 1 and offset 0 keep integers integers.
        let f = Format {
            scale: Some(1.0),
            offset: Some(0.0),
            ..Format::plain(DataType::U16)
        };
        assert_eq!(decode(&f, &[7]), Ok(Value::Int(7)));
    }

    #[test]
    fn encode_refuses_what_does_not_fit() {
        let f = Format {
            scale: Some(0.1),
            ..Format::plain(DataType::U16)
        };
        assert!(matches!(
            encode(&f, &json!(-1)),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode(&f, &json!(6553.6)),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(encode(&f, &json!(6553.5)).is_ok());
        assert!(matches!(
            encode(&f, &json!("warm")),
            Err(ValueError::Type(_))
        ));
        assert!(matches!(encode(&f, &json!(null)), Err(ValueError::Type(_))));
        assert_eq!(encode(&f, &json!("12.3")).unwrap(), vec![123]);
        let f = fmt(DataType::F32, ByteOrder::Abcd);
        assert!(matches!(
            encode(&f, &json!(1e300)),
            Err(ValueError::OutOfRange { .. })
        ));
    }

    #[test]
    fn bits_and_bools() {
        let f = Format {
            bit: Some(0),
            ..Format::plain(DataType::Bool)
        };
        assert_eq!(decode(&f, &[0x0001]), Ok(Value::Bool(true)));
        let f = Format {
            bit: Some(15),
            ..Format::plain(DataType::Bool)
        };
        assert_eq!(decode(&f, &[0x8000]), Ok(Value::Bool(true)));
        assert_eq!(decode(&f, &[0x7FFF]), Ok(Value::Bool(false)));
        let f = Format {
            bit: Some(8),
            order: ByteOrder::Badc,
            ..Format::plain(DataType::Bool)
        };
        assert_eq!(
            decode(&f, &[0x0001]),
            Ok(Value::Bool(true)),
            "after the swap"
        );
        let f = Format::plain(DataType::Bool);
        assert_eq!(decode(&f, &[2]), Ok(Value::Bool(true)));
        assert_eq!(decode(&f, &[0]), Ok(Value::Bool(false)));
        for (v, b) in [
            (json!(true), true),
            (json!(0), false),
            (json!(1), true),
            (json!("OFF"), false),
            (json!("on"), true),
        ] {
            assert_eq!(json_bool(&v), Ok(b), "{v}");
        }
        assert!(json_bool(&json!(2)).is_err());
        assert!(json_bool(&json!("maybe")).is_err());
    }

    #[test]
    fn strings_fill_registers_high_byte_first() {
        let f = Format {
            length: 3,
            ..Format::plain(DataType::String)
        };
        let words = encode(&f, &json!("abc")).unwrap();
        assert_eq!(words, vec![0x6162, 0x6300, 0x0000]);
        assert_eq!(decode(&f, &words), Ok(Value::Text("abc".into())));
        assert!(encode(&f, &json!("abcdefg")).is_err(), "7 bytes in 6");
        let f = Format {
            length: 2,
            order: ByteOrder::Badc,
            ..Format::plain(DataType::String)
        };
        assert_eq!(
            decode(&f, &[0x6261, 0x6420]),
            Ok(Value::Text("ab d".into()))
        );
        assert_eq!(
            decode(&f, &[0x6261, 0x2020]),
            Ok(Value::Text("ab".into())),
            "trailing blanks trimmed"
        );
    }

    #[test]
    fn wrong_lengths_are_errors_not_panics() {
        let f = fmt(DataType::F64, ByteOrder::Abcd);
        assert_eq!(
            decode(&f, &[1, 2]),
            Err(ValueError::Length {
                expected: 4,
                got: 2
            })
        );
    }

    /// The old, allocating forms the fast ones replace.
    fn decimals_by_display(x: f64) -> Option<u32> {
        let s = x.to_string();
        let d = s.split_once('.').map_or(0, |(_, frac)| frac.len() as u32);
        (d <= 15).then_some(d)
    }

    /// A fixed pseudo-random sequence (xorshift), for bit patterns.
    fn patterns(n: usize) -> impl Iterator<Item = u64> {
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        (0..n).map(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
    }

    #[test]
    fn decimals_match_the_display_form() {
        let fixed = [
            0.1,
            0.01,
            0.5,
            1.0,
            10.0,
            1e20,
            123.456,
            -0.25,
            1e-15,
            1e-16,
            3.0e-7,
            0.0,
            -40.0,
            0.001,
            2.5e-3,
            1234.5678,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NAN,
        ];
        for x in fixed {
            assert_eq!(decimals(x), decimals_by_display(x), "{x}");
        }
        for bits in patterns(20_000) {
            let x = f64::from_bits(bits);
            assert_eq!(decimals(x), decimals_by_display(x), "{x:e}");
            // Scales as people write them: few digits, any magnitude.
            let y = (bits % 100_000) as f64 / 10f64.powi((bits % 12) as i32);
            assert_eq!(decimals(y), decimals_by_display(y), "{y}");
            assert_eq!(decimals_by_text(x), decimals_by_display(x), "{x:e}");
        }
    }

    #[test]
    fn f32_shortest_matches_the_display_form() {
        let typical = (0..20_000).map(|i| (i as f32 - 10_000.0) * 0.01);
        let random = patterns(200_000).map(|bits| f32::from_bits(bits as u32));
        for f in typical.chain(random) {
            let old = f.to_string().parse::<f64>().unwrap_or(f as f64);
            let new = f32_shortest(f);
            assert!(
                old.to_bits() == new.to_bits() || (old.is_nan() && new.is_nan()),
                "{f:e}: {old} vs {new}"
            );
        }
    }

    #[test]
    fn byte_orders_parse() {
        assert_eq!(ByteOrder::parse("cdab"), Some(ByteOrder::Cdab));
        assert_eq!(ByteOrder::parse("HGFEDCBA"), Some(ByteOrder::Dcba));
        assert_eq!(ByteOrder::parse("ABDC"), None);
    }
}
