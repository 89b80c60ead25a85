//! Server-sent events as OpenAI streams them: `data: <json>\n\n` per chunk, `data: [DONE]\n\n` at the end.

use bytes::{Bytes, BytesMut};

/// Frames one event.
pub fn event(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

/// Frames one event holding `value` as JSON.
pub fn json_event<T: serde::Serialize>(value: &T) -> Bytes {
    event(&serde_json::to_vec(value).unwrap_or_default())
}

/// The event that ends an OpenAI stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// An SSE comment line: clients ignore it; rulegate uses it to report the verdict of a
/// stream whose headers left before the verdict was known.
pub fn comment(text: &str) -> Bytes {
    Bytes::from(format!(": {}\n\n", text.replace(['\n', '\r'], " ")))
}

/// Splits an upstream byte stream into the `data` payloads of its events. Tolerates `\r\n`,
/// several `data:` lines per event (joined with newlines), comments and other fields.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already searched for a line end: a long line arriving in small reads
    /// is scanned once, not once per read.
    scanned: usize,
    data: Vec<u8>,
    has_data: bool,
}

/// Most bytes an event may take before the stream is treated as broken.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

impl Decoder {
    /// Feeds bytes; returns the complete events' payloads. Linear in the bytes fed, however
    /// they are cut: each byte is searched once, and consumed lines leave in one move.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.buffer[self.scanned..].iter().position(|&b| b == b'\n') {
            let end = self.scanned + offset;
            self.scanned = end + 1;
            let mut line = &self.buffer[start..end];
            start = end + 1;
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            if line.is_empty() {
                if self.has_data {
                    events.push(std::mem::take(&mut self.data));
                    self.has_data = false;
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(rest);
                self.has_data = true;
            }
            // Comments (`:`) and other fields (`event:`, `id:`, `retry:`) carry nothing we use.
        }
        self.buffer.drain(..start);
        self.scanned = self.buffer.len();
        if self.buffer.len() + self.data.len() > MAX_EVENT_BYTES {
            return Err(format!("an upstream event exceeded {MAX_EVENT_BYTES} bytes"));
        }
        Ok(events)
    }

    /// The last event if the stream ended without its blank line.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        if !self.buffer.is_empty() {
            let rest = std::mem::take(&mut self.buffer);
            self.scanned = 0;
            // The rest holds no line end; a `\r` left there ends the event on the `\n` added.
            let _ = self.push(&rest);
            if let Ok(mut events) = self.push(b"\n")
                && let Some(event) = events.pop()
            {
                return Some(event);
            }
        }
        self.has_data.then(|| {
            self.has_data = false;
            std::mem::take(&mut self.data)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_ending_in_a_lone_carriage_return_keeps_its_last_event() {
        let mut d = Decoder::default();
        assert!(d.push(b"data: {\"a\":1}\r\n\r").unwrap().is_empty());
        assert_eq!(d.finish(), Some(b"{\"a\":1}".to_vec()));
        assert_eq!(d.finish(), None);
    }

    #[test]
    fn events_split_across_reads() {
        let mut d = Decoder::default();
        assert!(d.push(b"data: {\"a\"").unwrap().is_empty());
        let ev = d.push(b":1}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n").unwrap();
        assert_eq!(ev, vec![b"{\"a\":1}".to_vec(), b"[DONE]".to_vec()]);
    }

    #[test]
    fn multi_line_data_and_unterminated_end() {
        let mut d = Decoder::default();
        assert_eq!(d.push(b"event: x\ndata: a\ndata: b\n\n").unwrap(), vec![b"a\nb".to_vec()]);
        assert!(d.push(b"data: tail").unwrap().is_empty());
        assert_eq!(d.finish(), Some(b"tail".to_vec()));
        assert_eq!(d.finish(), None);
    }

    #[test]
    fn framing() {
        assert_eq!(&event(b"{}")[..], b"data: {}\n\n");
        assert_eq!(&comment("a\nb")[..], b": a b\n\n");
    }
}
