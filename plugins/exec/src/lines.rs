//! Lines from a pipe with a bound on their length, so that a program that never prints a
//! newline cannot make the daemon's memory grow.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// What one read gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A whole line, without its `\n` (nor a `\r` before it).
    Text(String),
    /// A line longer than the limit: its bytes were dropped as they came.
    TooLong(usize),
    /// A line that is not UTF-8.
    NotUtf8,
}

/// Reads lines of at most `max` bytes. Cancel-safe: a partly read line is kept in the
/// reader, so `next` can sit in a `select!` and be dropped at any await.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: BufReader<R>,
    buf: Vec<u8>,
    max: usize,
    /// The current line passed `max`: its bytes are counted, not kept.
    dropped: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max: usize) -> LineReader<R> {
        LineReader {
            inner: BufReader::new(inner),
            buf: Vec::new(),
            max,
            dropped: 0,
        }
    }

    /// The next line; `None` at the end of the stream. A last line without `\n` counts.
    pub async fn next(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let avail = self.inner.fill_buf().await?;
            if avail.is_empty() {
                if self.buf.is_empty() && self.dropped == 0 {
                    return Ok(None);
                }
                return Ok(Some(self.take()));
            }
            let (chunk, done) = match avail.iter().position(|b| *b == b'\n') {
                Some(i) => (&avail[..i], i + 1),
                None => (avail, avail.len()),
            };
            let newline = done > chunk.len();
            if self.dropped > 0 || self.buf.len() + chunk.len() > self.max {
                self.dropped += self.buf.len() + chunk.len();
                self.buf = Vec::new();
            } else {
                self.buf.extend_from_slice(chunk);
            }
            self.inner.consume(done);
            if newline {
                return Ok(Some(self.take()));
            }
        }
    }

    fn take(&mut self) -> Line {
        if self.dropped > 0 {
            let n = self.dropped;
            self.dropped = 0;
            return Line::TooLong(n);
        }
        let mut bytes = std::mem::take(&mut self.buf);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        match String::from_utf8(bytes) {
            Ok(s) => Line::Text(s),
            Err(_) => Line::NotUtf8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_bounded_and_the_last_one_counts() {
        let data: &[u8] = b"one\r\ntwo\n0123456789abc\nthree\n\xff\xfe\nlast";
        let mut r = LineReader::new(data, 10);
        let mut got = Vec::new();
        while let Some(l) = r.next().await.unwrap() {
            got.push(l);
        }
        assert_eq!(
            got,
            [
                Line::Text("one".into()),
                Line::Text("two".into()),
                Line::TooLong(13),
                Line::Text("three".into()),
                Line::NotUtf8,
                Line::Text("last".into()),
            ]
        );
    }

    #[tokio::test]
    async fn a_long_line_across_reads_is_dropped_as_it_comes() {
        let (mut w, rd) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for _ in 0..100 {
                w.write_all(&[b'x'; 50]).await.unwrap();
            }
            w.write_all(b"\nok\n").await.unwrap();
        });
        let mut r = LineReader::new(rd, 100);
        assert_eq!(r.next().await.unwrap(), Some(Line::TooLong(5000)));
        assert_eq!(r.next().await.unwrap(), Some(Line::Text("ok".into())));
        assert!(r.buf.capacity() <= 200, "the dropped line was not kept");
        writer.await.unwrap();
        assert_eq!(r.next().await.unwrap(), None);
    }
}
