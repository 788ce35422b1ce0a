//! From bytes to readings, with no I/O: [`Framer`] cuts the byte stream into lines,
//! [`Decoder`] turns one line into readings by the device's format. Both are plain
//! structs so that tests and the benchmark drive them directly.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use sensorgate_api::{Quality, Reading, Value};

use crate::config::{Format, Point, Separator, SerialConfig};

/// What [`Framer::push`] finds in the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One line, without its delimiter and trailing `\r`.
    Line(Vec<u8>),
    /// A line longer than `max_line_length`: discarded up to the next delimiter (reported
    /// once, when the limit is passed).
    TooLong,
}

/// Cuts a byte stream into lines at `delimiter`, with a bound on a line's length.
#[derive(Debug, Clone)]
pub struct Framer {
    delimiter: Vec<u8>,
    max_line_length: usize,
    /// Bytes of the line not yet ended.
    buf: Vec<u8>,
    /// In a line that was too long: drop bytes until the next delimiter.
    discarding: bool,
}

impl Framer {
    pub fn new(delimiter: &[u8], max_line_length: usize) -> Framer {
        Framer {
            delimiter: delimiter.to_vec(),
            max_line_length,
            buf: Vec::with_capacity(max_line_length.min(4096) + delimiter.len()),
            discarding: false,
        }
    }

    /// Bytes of an unfinished line held now.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Forget an unfinished line (before a query, so that stale bytes do not spoil the
    /// answer).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    /// Take `data` in and append every line it ends (and every line found too long) to
    /// `out`, in order.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Frame>) {
        let dlen = self.delimiter.len();
        // Where a delimiter may start: it may have begun in the bytes held before.
        let mut scan = self.buf.len().saturating_sub(dlen - 1);
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(at) = find(&self.buf[scan..], &self.delimiter) {
            let end = scan + at;
            if self.discarding {
                self.discarding = false;
            } else {
                let mut line = &self.buf[start..end];
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                if line.len() > self.max_line_length {
                    out.push(Frame::TooLong);
                } else {
                    out.push(Frame::Line(line.to_vec()));
                }
            }
            start = end + dlen;
            scan = start;
        }
        self.buf.drain(..start);
        // Room for the line, its `\r`, and the start of a delimiter not yet complete.
        let limit = self.max_line_length + 1 + (dlen - 1);
        if self.buf.len() > limit {
            if !self.discarding {
                self.discarding = true;
                out.push(Frame::TooLong);
            }
            // Keep only what may be the start of the delimiter.
            let keep = dlen - 1;
            let cut = self.buf.len() - keep;
            self.buf.drain(..cut);
        } else if self.discarding {
            let keep = (dlen - 1).min(self.buf.len());
            let cut = self.buf.len() - keep;
            self.buf.drain(..cut);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    match needle {
        [b] => hay.iter().position(|c| c == b),
        _ => hay.windows(needle.len()).position(|w| w == needle),
    }
}

/// Why a line gave no readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    NotUtf8,
    Json(String),
    NotAnObject,
    /// kv: a pair without `=` or `:`.
    NoPair(String),
    /// csv: the number of fields is not the number of `columns`.
    Fields {
        found: usize,
        columns: usize,
    },
    NoMatch,
    /// The line parsed but held no value to publish.
    Empty,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::NotUtf8 => f.write_str("not UTF-8 text"),
            Malformed::Json(e) => write!(f, "not JSON: {e}"),
            Malformed::NotAnObject => f.write_str("not a JSON object"),
            Malformed::NoPair(p) => write!(f, "{p:?} is not key=value or key:value"),
            Malformed::Fields { found, columns } => {
                write!(f, "{found} fields where `columns` names {columns}")
            }
            Malformed::NoMatch => f.write_str("does not match `regex`"),
            Malformed::Empty => f.write_str("no value in the line"),
        }
    }
}

/// What one decoded line gave besides its readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Readings appended.
    pub readings: usize,
    /// Keys skipped: a name that is no point name even lower-cased, or a value that is no
    /// scalar (JSON null or array).
    pub skipped_keys: usize,
}

/// Where a key of a line goes.
enum Target {
    /// A listed point (index into `points`).
    Listed(usize),
    /// An unlisted key, published under this name.
    Free(Arc<str>),
    /// An unlisted key while `only_listed` is set.
    Unlisted,
    /// A key that makes no point name.
    Bad,
}

/// The most key names remembered (so that an unlisted key does not allocate its name
/// for every line); a device printing ever new keys stops filling it there.
const NAME_CACHE: usize = 256;

/// Turns one line into readings by the device's format and points.
#[derive(Debug, Clone)]
pub struct Decoder {
    format: Format,
    sink: Sink,
}

/// Where the keys of a line go: the points, and the names of unlisted keys.
#[derive(Debug, Clone)]
struct Sink {
    device: Arc<str>,
    points: Vec<Point>,
    by_key: HashMap<String, usize>,
    only_listed: bool,
    names: HashMap<String, Arc<str>>,
    ts: SystemTime,
    skipped_keys: usize,
}

impl Decoder {
    pub fn new(device: Arc<str>, config: &SerialConfig) -> Decoder {
        let by_key = config
            .points
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key.clone(), i))
            .collect();
        Decoder {
            format: config.format.clone(),
            sink: Sink {
                device,
                points: config.points.clone(),
                by_key,
                only_listed: config.only_listed,
                names: HashMap::new(),
                ts: SystemTime::UNIX_EPOCH,
                skipped_keys: 0,
            },
        }
    }

    /// Decode `line`, read at `ts`, appending its readings to `out`. A line that gives no
    /// reading is [`Malformed`] (and `out` is left as it was).
    pub fn decode(
        &mut self,
        line: &[u8],
        ts: SystemTime,
        out: &mut Vec<Reading>,
    ) -> Result<Decoded, Malformed> {
        let text = std::str::from_utf8(line).map_err(|_| Malformed::NotUtf8)?;
        let before = out.len();
        let sink = &mut self.sink;
        sink.ts = ts;
        sink.skipped_keys = 0;
        let result = match &self.format {
            Format::Auto { separator } => {
                if text.trim_start().starts_with('{') {
                    json(sink, text, out)
                } else {
                    kv(sink, text, separator, out)
                }
            }
            Format::Json => json(sink, text, out),
            Format::Kv { separator } => kv(sink, text, separator, out),
            Format::Csv { separator, columns } => csv(sink, text, separator, columns, out),
            Format::Regex(re) => regex(sink, re, text, out),
        };
        if let Err(e) = result {
            out.truncate(before);
            return Err(e);
        }
        let d = Decoded {
            readings: out.len() - before,
            skipped_keys: sink.skipped_keys,
        };
        if d.readings == 0 {
            return Err(Malformed::Empty);
        }
        Ok(d)
    }
}

fn json(sink: &mut Sink, text: &str, out: &mut Vec<Reading>) -> Result<(), Malformed> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Malformed::Json(e.to_string()))?;
    let serde_json::Value::Object(map) = v else {
        return Err(Malformed::NotAnObject);
    };
    json_object(sink, "", map, out);
    Ok(())
}

/// Every key of `map` a point; a nested object's keys are joined to its own with `_`.
fn json_object(
    sink: &mut Sink,
    prefix: &str,
    map: serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<Reading>,
) {
    for (k, v) in map {
        let key = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}_{k}")
        };
        let value = match v {
            serde_json::Value::Object(inner) => {
                json_object(sink, &key, inner, out);
                continue;
            }
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::String(s) => Value::Text(s),
            serde_json::Value::Number(n) => match Value::from_json(&serde_json::Value::Number(n)) {
                Some(v) => v,
                None => {
                    sink.skipped_keys += 1;
                    continue;
                }
            },
            serde_json::Value::Null | serde_json::Value::Array(_) => {
                sink.skipped_keys += 1;
                continue;
            }
        };
        sink.emit(&key, value, out);
    }
}

fn kv(
    sink: &mut Sink,
    text: &str,
    sep: &Separator,
    out: &mut Vec<Reading>,
) -> Result<(), Malformed> {
    for pair in split(text, sep) {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        // The first `=` or `:` splits, so a value may hold the other (`time=12:30`).
        let Some(at) = pair.find(['=', ':']) else {
            return Err(Malformed::NoPair(truncate(pair, 40).to_string()));
        };
        let (k, v) = (pair[..at].trim(), &pair[at + 1..]);
        if let Some(value) = parse_scalar(v) {
            sink.emit(k, value, out);
        }
    }
    Ok(())
}

fn csv(
    sink: &mut Sink,
    text: &str,
    sep: &Separator,
    columns: &[Option<Arc<str>>],
    out: &mut Vec<Reading>,
) -> Result<(), Malformed> {
    let found = split(text, sep).count();
    if found != columns.len() {
        return Err(Malformed::Fields {
            found,
            columns: columns.len(),
        });
    }
    for (field, col) in split(text, sep).zip(columns) {
        let Some(col) = col else { continue };
        if let Some(value) = parse_scalar(field) {
            sink.emit(col, value, out);
        }
    }
    Ok(())
}

fn regex(
    sink: &mut Sink,
    re: &regex::Regex,
    text: &str,
    out: &mut Vec<Reading>,
) -> Result<(), Malformed> {
    let caps = re.captures(text).ok_or(Malformed::NoMatch)?;
    for name in re.capture_names().flatten() {
        if let Some(value) = caps.name(name).and_then(|m| parse_scalar(m.as_str())) {
            sink.emit(name, value, out);
        }
    }
    Ok(())
}

impl Sink {
    /// One key's value, as a reading of the point it goes to (or skipped).
    fn emit(&mut self, key: &str, value: Value, out: &mut Vec<Reading>) {
        let (point, unit, scale) = match self.target(key) {
            Target::Listed(i) => {
                let p = &self.points[i];
                (p.name.clone(), p.unit.clone(), p.scale)
            }
            Target::Free(name) => (name, None, None),
            Target::Unlisted => return,
            Target::Bad => {
                self.skipped_keys += 1;
                return;
            }
        };
        let (value, quality) = match scale {
            None => (value, Quality::Good),
            Some((s, o)) => match value.as_f64() {
                Some(raw) => (Value::Float(raw * s + o), Quality::Good),
                None => {
                    let q = Quality::Bad(format!("{value:?} is not a number: cannot scale it"));
                    (value, q)
                }
            },
        };
        let quality = if value.is_publishable() {
            quality
        } else {
            Quality::Bad(format!("{value} is not a finite number"))
        };
        out.push(Reading {
            device: self.device.clone(),
            point,
            value,
            unit,
            ts: self.ts,
            quality,
        });
    }

    fn target(&mut self, key: &str) -> Target {
        if let Some(&i) = self.by_key.get(key) {
            return Target::Listed(i);
        }
        if let Some(name) = self.names.get(key) {
            return Target::Free(name.clone());
        }
        let name = normalize(key);
        if name.is_empty() {
            return Target::Bad;
        }
        if let Some(&i) = self.by_key.get(&name) {
            return Target::Listed(i);
        }
        if self.only_listed {
            return Target::Unlisted;
        }
        let name: Arc<str> = name.into();
        if self.names.len() < NAME_CACHE {
            self.names.insert(key.to_string(), name.clone());
        }
        Target::Free(name)
    }
}

/// A key of a line as a point name: ASCII lower-cased, every character other than
/// `a-z`, `0-9`, `_` and `-` turned into `_`, leading and trailing `_` trimmed
/// (`"Temp Out"` → `temp_out`, `"T(°C)"` → `t_c`). Empty when nothing is left.
pub fn normalize(key: &str) -> String {
    let mut s = String::with_capacity(key.len());
    for c in key.trim().chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
            s.push(c);
        } else if !s.ends_with('_') {
            s.push('_');
        }
    }
    s.trim_matches('_').to_string()
}

/// A field of a kv, csv or regex line as a value: an integer, a float, `true`/`false`,
/// else the text. `None` for an empty field. Surrounding double quotes make it text as is.
pub fn parse_scalar(field: &str) -> Option<Value> {
    let s = field.trim();
    if s.is_empty() {
        return None;
    }
    if let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return Some(Value::Text(inner.to_string()));
    }
    let first = s.as_bytes()[0];
    if first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.') {
        if let Ok(i) = s.parse::<i64>() {
            return Some(Value::Int(i));
        }
        if let Ok(u) = s.parse::<u64>() {
            return Some(Value::UInt(u));
        }
        // Rust also reads "inf" and "NaN" as floats; a device's text stays text.
        if s.bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        {
            if let Ok(f) = s.parse::<f64>() {
                return Some(Value::Float(f));
            }
        }
    }
    if s.eq_ignore_ascii_case("true") {
        return Some(Value::Bool(true));
    }
    if s.eq_ignore_ascii_case("false") {
        return Some(Value::Bool(false));
    }
    Some(Value::Text(s.to_string()))
}

fn split<'a>(text: &'a str, sep: &'a Separator) -> Box<dyn Iterator<Item = &'a str> + 'a> {
    match sep {
        Separator::Whitespace => Box::new(text.split_ascii_whitespace()),
        Separator::Text(t) => Box::new(text.split(t.as_str())),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(f: &mut Framer, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Line(s.as_bytes().to_vec())
    }

    #[test]
    fn lines_across_chunks_and_crlf() {
        let mut f = Framer::new(b"\n", 16);
        let got = frames(&mut f, &[b"a=1\r\nb=", b"2\n\nc", b"=3\r", b"\n"]);
        assert_eq!(got, [line("a=1"), line("b=2"), line(""), line("c=3")]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn multi_byte_delimiter_split_between_chunks() {
        let mut f = Framer::new(b"\r\n", 16);
        let got = frames(&mut f, &[b"x=1\r", b"\ny=2\r\n"]);
        assert_eq!(got, [line("x=1"), line("y=2")]);
        let mut f = Framer::new(b";;", 16);
        let got = frames(&mut f, &[b"a;", b";b;", b";"]);
        assert_eq!(got, [line("a"), line("b")]);
    }

    #[test]
    fn too_long_line_is_dropped_to_the_next_delimiter_once() {
        let mut f = Framer::new(b"\n", 4);
        let got = frames(&mut f, &[b"1234\n12345", b"6789", b"0123\nok\n"]);
        assert_eq!(got, [line("1234"), Frame::TooLong, line("ok")]);
        // Exactly too long, ended in the same chunk.
        let got = frames(&mut f, &[b"12345\nab\n"]);
        assert_eq!(got, [Frame::TooLong, line("ab")]);
        // The `\r` does not count.
        let got = frames(&mut f, &[b"abcd\r", b"\n"]);
        assert_eq!(got, [line("abcd")]);
    }

    #[test]
    fn scalars() {
        assert_eq!(parse_scalar(" 21 "), Some(Value::Int(21)));
        assert_eq!(parse_scalar("-3.5"), Some(Value::Float(-3.5)));
        assert_eq!(parse_scalar("1e3"), Some(Value::Float(1000.0)));
        assert_eq!(
            parse_scalar("18446744073709551615"),
            Some(Value::UInt(u64::MAX))
        );
        assert_eq!(parse_scalar("TRUE"), Some(Value::Bool(true)));
        assert_eq!(parse_scalar("false"), Some(Value::Bool(false)));
        assert_eq!(parse_scalar("nan"), Some(Value::Text("nan".into())));
        assert_eq!(parse_scalar("12:30"), Some(Value::Text("12:30".into())));
        assert_eq!(parse_scalar("\"42\""), Some(Value::Text("42".into())));
        assert_eq!(parse_scalar("  "), None);
    }

    #[test]
    fn key_names() {
        assert_eq!(normalize("Temp Out"), "temp_out");
        assert_eq!(normalize("T(°C)"), "t_c");
        assert_eq!(normalize("wind-speed"), "wind-speed");
        assert_eq!(normalize("?!"), "");
    }
}
