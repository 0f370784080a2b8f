//! A minimal incremental Server-Sent Events parser (the `text/event-stream`
//! format both providers stream in).
//!
//! Why our own: the format is a few lines of spec (WHATWG HTML §9.2.6) and
//! both providers only use `event:` and `data:` fields; a dependency would
//! buy nothing. Bytes arrive in arbitrary chunks, so the parser buffers up to
//! the next line end and only hands out an event at its blank line: an event
//! cut by the end of the stream is never dispatched (the spec's rule, and
//! what lets callers tell a cut stream from a finished one).

use bytes::BytesMut;

/// Longest line we buffer; a provider never sends one this long, a broken or
/// hostile server must not make us buffer without bound.
const MAX_LINE: usize = 4 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, empty when absent (the spec's default `message`).
    pub(crate) event: String,
    /// The `data:` lines joined with `\n`.
    pub(crate) data: String,
}

/// Why the stream cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SseError {
    LineTooLong,
    NotUtf8,
}

/// Incremental parser state.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: BytesMut,
    event: String,
    data: Vec<String>,
    /// A `\r` ended the last line: a following `\n` belongs to it.
    after_cr: bool,
}

// === impl SseParser ===

impl SseParser {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk; returns the events it completed, in order.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        for &byte in chunk {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = self.buf.split();
                    let line = std::str::from_utf8(&line).map_err(|_| SseError::NotUtf8)?;
                    if let Some(event) = self.line(line) {
                        events.push(event);
                    }
                }
                _ => {
                    if self.buf.len() >= MAX_LINE {
                        return Err(SseError::LineTooLong);
                    }
                    self.buf.extend_from_slice(&[byte]);
                }
            }
        }
        Ok(events)
    }

    /// Handles one complete line; a blank line dispatches the pending event.
    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if self.data.is_empty() && self.event.is_empty() {
                return None;
            }
            let event = SseEvent {
                event: std::mem::take(&mut self.event),
                data: std::mem::take(&mut self.data).join("\n"),
            };
            return Some(event);
        }
        if line.starts_with(':') {
            return None; // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => self.data.push(value.to_owned()),
            _ => {} // `id`, `retry` and unknown fields mean nothing to us
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn parse_in_pieces(input: &str, piece: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in input.as_bytes().chunks(piece) {
            out.extend(parser.push(chunk).unwrap());
        }
        out
    }

    #[test]
    fn events_survive_any_chunking() {
        let input = "event: ping\ndata: {\"type\": \"ping\"}\n\n: keep-alive\n\ndata: a\ndata: b\r\n\r\nevent: x\rdata: y\r\r";
        for piece in 1..input.len() {
            let events = parse_in_pieces(input, piece);
            assert_eq!(events.len(), 3, "piece size {piece}");
            assert_eq!(events[0].event, "ping");
            assert_eq!(events[0].data, "{\"type\": \"ping\"}");
            assert_eq!(events[1].event, "");
            assert_eq!(events[1].data, "a\nb");
            assert_eq!(events[2].event, "x");
            assert_eq!(events[2].data, "y");
        }
    }

    #[test]
    fn an_event_cut_before_its_blank_line_is_not_dispatched() {
        let events = parse_in_pieces("data: [DONE]\n", 4);
        assert!(events.is_empty());
    }

    #[test]
    fn data_without_space_and_field_without_colon() {
        let events = parse_in_pieces("data:x\ndata\n\n", 3);
        assert_eq!(events[0].data, "x\n");
    }
}
