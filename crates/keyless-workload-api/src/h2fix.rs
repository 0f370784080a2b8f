//! A connection wrapper that makes `:authority` values `h2` would refuse
//! acceptable, so gRPC clients that name a Unix socket in it can talk to us.
//!
//! Why: grpcio (the C core behind Python's `grpcio`, hence py-spiffe) sends
//! the socket path of a `unix:` target, URL-encoded, as the HTTP/2
//! `:authority` of every request (e.g. `tmp%2Fd%2Fworkload.sock`). The `h2`
//! crate under tonic parses `:authority` with `http::uri::Authority`, which
//! refuses `%` outside userinfo, and resets every such stream with
//! `PROTOCOL_ERROR`. SPIRE (Go) ignores the value. We serve one Unix socket
//! and never look at the authority, so a value `h2` would refuse is replaced
//! by `localhost` before `h2` sees it.
//!
//! How: [`AuthorityFix`] wraps the server side of a connection. Writes (server
//! to client) pass straight through. Reads go through a parser of the
//! client's bytes: the connection preface, then frames. Frames other than
//! HEADERS/CONTINUATION pass through unchanged, byte for byte. A header block
//! (HEADERS plus any CONTINUATION, until END_HEADERS) is decoded with an HPACK
//! decoder that mirrors the client's encoder (its dynamic table, at most
//! 4096 bytes: the SETTINGS_HEADER_TABLE_SIZE `h2` leaves at the protocol
//! default), and re-encoded with literals without indexing, so the dynamic
//! table of `h2`'s own decoder stays empty and can never disagree with ours.
//! It is sent as one HEADERS frame (keeping END_STREAM and PRIORITY, dropping
//! padding), split into CONTINUATION frames above 16,384 bytes (the
//! SETTINGS_MAX_FRAME_SIZE `h2` advertises by default).
//!
//! Invariant: the header *list* `h2` decodes is the one the client sent, in
//! the same order, except an `:authority` value `http::uri::Authority` would
//! refuse, which becomes `localhost`. Only the representation changes
//! (indexing, Huffman coding, never-indexed hints, padding), which carries no
//! meaning for a server. Anything this parser does not understand (no
//! preface, a malformed frame or header block, a block over
//! [`MAX_HEADER_BLOCK`]) switches the connection to pass-through from that
//! point, with the bytes held so far forwarded unchanged: `h2` then reports
//! its own error. (Its HPACK table never saw the client's earlier
//! insertions, so a later block of that connection may then fail to decode:
//! a misbehaving client can lose its connection where `h2` alone might only
//! have reset a stream. A well-formed client never gets there.)

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;
/// SETTINGS_HEADER_TABLE_SIZE as `h2` advertises it (the protocol default;
/// tonic does not change it): the largest dynamic table the client may use.
const HEADER_TABLE_SIZE: usize = 4096;
/// SETTINGS_MAX_FRAME_SIZE as `h2` advertises it (hyper's default, which
/// tonic keeps): the largest frame payload we may hand it.
const MAX_FRAME_SIZE: usize = 16_384;
/// Header blocks larger than this, encoded or decoded, are not rewritten but
/// passed through; `h2` enforces its own (smaller) limits on them.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// How much is read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;
const AUTHORITY: &[u8] = b":authority";
/// What replaces an `:authority` `h2` would refuse.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// The server side of an HTTP/2 connection, with client header blocks
/// rewritten as the module docs describe.
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    /// Rewritten bytes not yet handed to the reader, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Rewriter::new(),
            out: Vec::new(),
            out_pos: 0,
        }
    }

    /// The wrapped connection (for its peer address and credentials).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let pending = this.out.get(this.out_pos..).unwrap_or_default();
            if !pending.is_empty() {
                let (now, _) = pending.split_at(pending.len().min(buf.remaining()));
                buf.put_slice(now);
                this.out_pos += now.len();
                if this.out_pos >= this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.is_pass_through() {
                // Nothing is held back in pass-through: read straight into
                // the caller's buffer.
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream: forward whatever was held back, unchanged,
                // so `h2` sees the truncated frame and decides about it.
                this.rewriter.pass_through(&mut this.out);
            } else {
                this.rewriter.feed(read.filled(), &mut this.out);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// === the parser ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Preface,
    Frames,
    PassThrough,
}

/// A header block being collected (HEADERS, then CONTINUATION frames).
struct Block {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
    /// The frames exactly as received, for pass-through.
    raw: Vec<u8>,
}

/// The client-to-server byte rewriter: bytes in, bytes out, no I/O.
struct Rewriter {
    mode: Mode,
    /// Received and not yet forwarded: a partial preface, or a partial frame
    /// (header, or a whole HEADERS/CONTINUATION frame).
    buf: Vec<u8>,
    /// Payload bytes of a forwarded frame header still to pass through.
    skip: usize,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
}

impl Rewriter {
    fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        // The client may shrink its table with size updates, never grow it
        // past what we advertised; a larger update is a decoding error.
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        decoder.set_max_table_size(HEADER_TABLE_SIZE);
        Self {
            mode: Mode::Preface,
            buf: Vec::new(),
            skip: 0,
            block: None,
            decoder,
        }
    }

    fn is_pass_through(&self) -> bool {
        self.mode == Mode::PassThrough
    }

    /// Gives up on rewriting: forwards everything held back, unchanged and
    /// in order, and from now on every byte as it comes.
    fn pass_through(&mut self, out: &mut Vec<u8>) {
        if self.mode != Mode::PassThrough {
            tracing::debug!("h2 authority fix: switching to pass-through");
        }
        self.mode = Mode::PassThrough;
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        out.append(&mut self.buf);
        self.skip = 0;
    }

    /// Consumes `input`, appending what `h2` should read to `out`.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        loop {
            match self.mode {
                Mode::PassThrough => {
                    out.extend_from_slice(input);
                    return;
                }
                Mode::Preface => {
                    let need = PREFACE.len().saturating_sub(self.buf.len());
                    let (take, rest) = input.split_at(need.min(input.len()));
                    self.buf.extend_from_slice(take);
                    input = rest;
                    if !PREFACE.starts_with(&self.buf) {
                        self.pass_through(out);
                        continue;
                    }
                    if self.buf.len() < PREFACE.len() {
                        return;
                    }
                    out.append(&mut self.buf);
                    self.mode = Mode::Frames;
                }
                Mode::Frames => {
                    if self.skip > 0 {
                        let (take, rest) = input.split_at(self.skip.min(input.len()));
                        out.extend_from_slice(take);
                        self.skip -= take.len();
                        input = rest;
                    }
                    if input.is_empty() {
                        return;
                    }
                    input = self.frame(input, out);
                }
            }
        }
    }

    /// Makes progress on one frame; returns the input not consumed.
    fn frame<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        let input = fill(&mut self.buf, FRAME_HEADER_LEN, input);
        let Some(&[l0, l1, l2, kind, flags, s0, s1, s2, s3]) = self.buf.first_chunk() else {
            return input; // header still incomplete (and `input` is empty)
        };
        let len = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        let stream_id = u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff;
        let header_frame = kind == TYPE_HEADERS || kind == TYPE_CONTINUATION;

        if !header_frame && self.block.is_none() {
            // Not ours: forward the header now, the payload as it comes.
            out.append(&mut self.buf);
            self.skip = len;
            return input;
        }
        let continues_block = match &self.block {
            None => kind == TYPE_HEADERS,
            Some(block) => kind == TYPE_CONTINUATION && stream_id == block.stream_id,
        };
        if !continues_block || stream_id == 0 || len > MAX_HEADER_BLOCK {
            // A protocol error (interleaved frames, CONTINUATION out of
            // place, stream 0) or too big: `h2` judges it.
            self.pass_through(out);
            return input;
        }
        let input = fill(&mut self.buf, FRAME_HEADER_LEN + len, input);
        if self.buf.len() < FRAME_HEADER_LEN + len {
            return input;
        }
        let frame = std::mem::take(&mut self.buf);
        let payload = frame.get(FRAME_HEADER_LEN..).unwrap_or_default();
        match &mut self.block {
            None => {
                let Some((priority, fragment)) = split_headers_payload(flags, payload) else {
                    self.buf = frame;
                    self.pass_through(out);
                    return input;
                };
                self.block = Some(Block {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                    raw: frame,
                });
            }
            Some(block) => {
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(&frame);
                if block.fragment.len() > MAX_HEADER_BLOCK {
                    self.pass_through(out);
                    return input;
                }
            }
        }
        if flags & FLAG_END_HEADERS != 0 {
            self.finish_block(out);
        }
        input
    }

    /// Decodes the complete block, rewrites it and emits it as frames.
    fn finish_block(&mut self, out: &mut Vec<u8>) {
        let Some(block) = self.block.take() else {
            return;
        };
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        // Indexed fields expand (one byte can name a 4 KiB table entry), so
        // the decoded list is bounded too, by its RFC 7541 §4.1 size.
        let mut list_size = 0usize;
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            list_size = list_size.saturating_add(name.len() + value.len() + 32);
            if list_size > MAX_HEADER_BLOCK {
                return;
            }
            let value: &[u8] = if *name == *AUTHORITY && !valid_authority(&value) {
                tracing::debug!(
                    authority = %String::from_utf8_lossy(&value),
                    "h2 authority fix: replacing an :authority h2 would refuse"
                );
                REPLACEMENT_AUTHORITY
            } else {
                &value
            };
            encode_literal(&name, value, &mut encoded);
        });
        if let Err(err) = decoded {
            tracing::debug!(error = %err, "h2 authority fix: header block does not decode");
            self.block = Some(block);
            self.pass_through(out);
            return;
        }
        if list_size > MAX_HEADER_BLOCK {
            self.block = Some(block);
            self.pass_through(out);
            return;
        }
        emit_headers(
            block.stream_id,
            block.end_stream,
            block.priority,
            &encoded,
            out,
        );
    }
}

/// Moves bytes from `input` into `buf` until it holds `want`; returns the
/// rest of `input`.
fn fill<'a>(buf: &mut Vec<u8>, want: usize, input: &'a [u8]) -> &'a [u8] {
    let need = want.saturating_sub(buf.len());
    let (take, rest) = input.split_at(need.min(input.len()));
    buf.extend_from_slice(take);
    rest
}

/// Whether `h2` would accept `value` as `:authority`.
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// The priority fields and header block fragment of a HEADERS payload
/// (RFC 9113 §6.2), or `None` when the padding does not fit.
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; PRIORITY_LEN]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        let (&pad_len, after) = rest.split_first()?;
        pad = usize::from(pad_len);
        rest = after;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let (fields, after) = rest.split_first_chunk::<PRIORITY_LEN>()?;
        priority = Some(*fields);
        rest = after;
    }
    let end = rest.len().checked_sub(pad)?;
    rest.get(..end).map(|fragment| (priority, fragment))
}

/// Emits a header block as HEADERS + CONTINUATION frames of at most
/// [`MAX_FRAME_SIZE`] bytes.
fn emit_headers(
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    block: &[u8],
    out: &mut Vec<u8>,
) {
    let priority_len = priority.map_or(0, |p| p.len());
    let (first, mut rest) = block.split_at(block.len().min(MAX_FRAME_SIZE - priority_len));
    let mut flags = 0;
    if end_stream {
        flags |= FLAG_END_STREAM;
    }
    if priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    frame_header(
        priority_len + first.len(),
        TYPE_HEADERS,
        flags,
        stream_id,
        out,
    );
    if let Some(fields) = priority {
        out.extend_from_slice(&fields);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (part, after) = rest.split_at(rest.len().min(MAX_FRAME_SIZE));
        let flags = if after.is_empty() {
            FLAG_END_HEADERS
        } else {
            0
        };
        frame_header(part.len(), TYPE_CONTINUATION, flags, stream_id, out);
        out.extend_from_slice(part);
        rest = after;
    }
}

/// A frame header; `len` is at most [`MAX_FRAME_SIZE`], well within 24 bits.
fn frame_header(len: usize, kind: u8, flags: u8, stream_id: u32, out: &mut Vec<u8>) {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
}

// === HPACK encoding: literals without indexing only ===

/// A field as "literal header field without indexing, new name" (RFC 7541
/// §6.2.2): it never enters the receiver's dynamic table.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    encode_string(name, out);
    encode_string(value, out);
}

/// A string literal, not Huffman-coded (RFC 7541 §5.2).
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_integer(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

/// An integer with an N-bit prefix (RFC 7541 §5.1); `first` holds the bits
/// of the first octet above the prefix. `prefix_bits` is 1..=8.
fn encode_integer(value: usize, prefix_bits: u32, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | (value & 0xff) as u8);
        return;
    }
    out.push(first | (max & 0xff) as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push((rest & 0x7f) as u8);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;
    use tokio::io::AsyncReadExt;

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    /// Yields its data in chunks of 1 to 7 bytes, returning `Pending` (and
    /// waking at once) every third read, like a slow socket.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        reads: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.reads += 1;
            if this.reads.is_multiple_of(3) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = (this.reads % 7 + 1)
                .min(this.data.len() - this.pos)
                .min(buf.remaining());
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    async fn through_wrapper(data: &[u8]) -> Vec<u8> {
        let mut wrapped = AuthorityFix::new(Trickle {
            data: data.to_vec(),
            pos: 0,
            reads: 0,
        });
        let mut out = Vec::new();
        // Small reads too, so pending output is handed out in pieces.
        let mut buf = [0u8; 5];
        loop {
            let n = wrapped.read(&mut buf).await.unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_header(payload.len(), kind, flags, stream_id, &mut out);
        out.extend_from_slice(payload);
        out
    }

    fn h(name: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
        (name.as_bytes().to_vec(), value.as_bytes().to_vec())
    }

    fn request(authority: &str, path: &str) -> Headers {
        vec![
            h(":method", "POST"),
            h(":scheme", "http"),
            h(":path", path),
            h(":authority", authority),
            h("content-type", "application/grpc"),
            h("te", "trailers"),
            h("workload.spiffe.io", "true"),
            h("grpc-accept-encoding", "identity,deflate,gzip"),
            h(
                "user-agent",
                "grpc-python/1.71.0 grpc-c/46.0.0 (linux; chttp2)",
            ),
        ]
    }

    fn encode(encoder: &mut loona_hpack::Encoder<'_>, headers: &Headers) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    fn with_authority(headers: &Headers, authority: &str) -> Headers {
        headers
            .iter()
            .map(|(n, v)| {
                if n == b":authority" {
                    h(":authority", authority)
                } else {
                    (n.clone(), v.clone())
                }
            })
            .collect()
    }

    /// A frame as read back: type, flags, stream, payload.
    #[derive(Debug, Clone, PartialEq)]
    struct Frame {
        kind: u8,
        flags: u8,
        stream_id: u32,
        payload: Vec<u8>,
    }

    /// Splits the server's input into the preface and frames.
    fn parse(bytes: &[u8]) -> Vec<Frame> {
        assert_eq!(&bytes[..24], PREFACE);
        let mut rest = &bytes[24..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            frames.push(Frame {
                kind: rest[3],
                flags: rest[4],
                stream_id: u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]),
                payload: rest[9..9 + len].to_vec(),
            });
            rest = &rest[9 + len..];
        }
        frames
    }

    /// What a fresh decoder (like `h2`'s) makes of the rewritten stream:
    /// every header list, and every other frame.
    fn decode_output(bytes: &[u8]) -> (Vec<(Frame, Headers)>, Vec<Frame>) {
        let mut decoder = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut others = Vec::new();
        let mut open: Option<(Frame, Vec<u8>)> = None;
        for f in parse(bytes) {
            match f.kind {
                TYPE_HEADERS => {
                    assert!(open.is_none());
                    assert_eq!(f.flags & FLAG_PADDED, 0, "padding is dropped");
                    assert!(f.payload.len() <= MAX_FRAME_SIZE);
                    let skip = if f.flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                    open = Some((f.clone(), f.payload[skip..].to_vec()));
                }
                TYPE_CONTINUATION => {
                    let (first, fragment) = open.as_mut().unwrap();
                    assert_eq!(f.stream_id, first.stream_id);
                    assert!(f.payload.len() <= MAX_FRAME_SIZE);
                    fragment.extend_from_slice(&f.payload);
                    first.flags |= f.flags & FLAG_END_HEADERS;
                }
                _ => {
                    assert!(open.is_none());
                    others.push(f);
                    continue;
                }
            }
            if f.flags & FLAG_END_HEADERS != 0 {
                let (first, fragment) = open.take().unwrap();
                let headers = decoder.decode(&fragment).unwrap();
                // Only literals without indexing: nothing may land in
                // `h2`'s dynamic table.
                let mut literal = Vec::new();
                for (name, value) in &headers {
                    encode_literal(name, value, &mut literal);
                }
                assert_eq!(fragment, literal);
                blocks.push((first, headers));
            }
        }
        assert!(open.is_none());
        (blocks, others)
    }

    #[tokio::test]
    async fn percent_encoded_authority_becomes_localhost_and_nothing_else_changes() {
        let mut encoder = loona_hpack::Encoder::new();
        let first = request("tmp%2Fx%2Fworkload.sock", "/SpiffeWorkloadAPI/FetchJWTSVID");
        let second = request(
            "tmp%2Fx%2Fworkload.sock",
            "/SpiffeWorkloadAPI/FetchX509SVID",
        );
        let third = request("localhost:8080", "/SpiffeWorkloadAPI/FetchX509SVID");
        let block1 = encode(&mut encoder, &first);
        // The encoder indexes: the second block mostly refers to entries the
        // first one added, so our decoder must have kept its table.
        let block2 = encode(&mut encoder, &second);
        assert!(
            loona_hpack::Decoder::new().decode(&block2).is_err(),
            "the second block needs the first one's table"
        );
        let block3 = encode(&mut encoder, &third);

        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let window = frame(0x8, 0, 0, &[0, 0, 0x10, 0]);
        let data1 = frame(0x0, FLAG_END_STREAM, 1, &[0, 0, 0, 0, 3, 1, 2, 3]);
        // Stream 1: HEADERS with padding and priority, then CONTINUATION.
        let (a, b) = block1.split_at(10);
        let mut payload = vec![4u8]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 0, 0x10]); // exclusive, on stream 0, weight 16
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0; 4]);
        let headers1 = frame(TYPE_HEADERS, FLAG_PADDED | FLAG_PRIORITY, 1, &payload);
        let cont1 = frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b);
        // Stream 3: one HEADERS frame ending the stream.
        let headers3 = frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 3, &block2);
        // Stream 5: split in three, the middle CONTINUATION empty.
        let (c, d) = block3.split_at(block3.len() / 2);
        let headers5 = frame(TYPE_HEADERS, FLAG_END_STREAM, 5, c);
        let cont5a = frame(TYPE_CONTINUATION, 0, 5, &[]);
        let cont5b = frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, d);

        let input = [
            PREFACE.as_slice(),
            &settings,
            &window,
            &headers1,
            &cont1,
            &data1,
            &headers3,
            &headers5,
            &cont5a,
            &cont5b,
            &window,
        ]
        .concat();
        let output = through_wrapper(&input).await;
        let (blocks, others) = decode_output(&output);

        // Non-header frames: byte for byte, in order.
        let expected_others: Vec<_> = [&settings, &window, &data1, &window]
            .iter()
            .map(|f| parse(&[PREFACE.as_slice(), f].concat()).remove(0))
            .collect();
        assert_eq!(others, expected_others);
        // The order of all frames is kept.
        let kinds: Vec<_> = parse(&output)
            .iter()
            .map(|f| (f.kind, f.stream_id))
            .collect();
        assert_eq!(
            kinds,
            [(4, 0), (8, 0), (1, 1), (0, 1), (1, 3), (1, 5), (8, 0)]
        );

        assert_eq!(blocks.len(), 3);
        let (f1, h1) = &blocks[0];
        assert_eq!(h1, &with_authority(&first, "localhost"));
        assert_eq!(f1.stream_id, 1);
        assert_eq!(
            f1.flags,
            FLAG_PRIORITY | FLAG_END_HEADERS,
            "end_stream unset"
        );
        assert_eq!(&f1.payload[..5], &[0x80, 0, 0, 0, 0x10], "priority kept");
        let (f3, h3) = &blocks[1];
        assert_eq!(h3, &with_authority(&second, "localhost"));
        assert_eq!(
            (f3.stream_id, f3.flags),
            (3, FLAG_END_HEADERS | FLAG_END_STREAM)
        );
        let (f5, h5) = &blocks[2];
        assert_eq!(h5, &third, "a valid authority is kept");
        assert_eq!(
            (f5.stream_id, f5.flags),
            (5, FLAG_END_HEADERS | FLAG_END_STREAM)
        );
    }

    #[tokio::test]
    async fn large_block_is_split_into_continuation_frames() {
        let big = "x".repeat(40_000);
        let mut headers = request("tmp%2Fx%2Fworkload.sock", "/p");
        headers.push(h("x-big", &big));
        let block = encode(&mut loona_hpack::Encoder::new(), &headers);
        let input = [
            PREFACE.as_slice(),
            &frame(TYPE_HEADERS, 0, 1, &block[..100]),
            &frame(TYPE_CONTINUATION, 0, 1, &block[100..20_000]),
            &frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block[20_000..]),
        ]
        .concat();
        let output = through_wrapper(&input).await;
        let frames = parse(&output);
        assert_eq!(
            frames.iter().map(|f| f.kind).collect::<Vec<_>>(),
            [TYPE_HEADERS, TYPE_CONTINUATION, TYPE_CONTINUATION]
        );
        assert_eq!(frames[0].payload.len(), MAX_FRAME_SIZE);
        let (blocks, _) = decode_output(&output);
        assert_eq!(blocks[0].1, with_authority(&headers, "localhost"));
    }

    async fn assert_unchanged(input: &[u8]) {
        assert_eq!(through_wrapper(input).await, input);
    }

    #[tokio::test]
    async fn what_is_not_understood_passes_through_unchanged() {
        let block = encode(&mut loona_hpack::Encoder::new(), &request("tmp%2Fx", "/p"));
        let settings = frame(0x4, 0, 0, &[]);
        let good = frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block);
        // Not HTTP/2 at all.
        assert_unchanged(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        // An index the tables do not have (then a good request: still raw).
        let bad_index = frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0x80, 0x01]);
        assert_unchanged(&[PREFACE.as_slice(), &settings, &bad_index, &good].concat()).await;
        // Padding longer than the payload.
        let mut padded = vec![200u8];
        padded.extend_from_slice(&block);
        let bad_pad = frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_PADDED, 1, &padded);
        assert_unchanged(&[PREFACE.as_slice(), &bad_pad, &good].concat()).await;
        // A frame between HEADERS and its CONTINUATION.
        let open = frame(TYPE_HEADERS, 0, 1, &block);
        assert_unchanged(&[PREFACE.as_slice(), &open, &settings, &good].concat()).await;
        // CONTINUATION for another stream, and one with nothing before it.
        let other = frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[]);
        assert_unchanged(&[PREFACE.as_slice(), &open, &other].concat()).await;
        assert_unchanged(&[PREFACE.as_slice(), &other, &good].concat()).await;
        // HEADERS on stream 0.
        let zero = frame(TYPE_HEADERS, FLAG_END_HEADERS, 0, &block);
        assert_unchanged(&[PREFACE.as_slice(), &zero, &good].concat()).await;
        // A dynamic table size update above what we advertised.
        let mut grow = vec![0x3f, 0xe1, 0x3f]; // size update to 8192
        grow.extend_from_slice(&block);
        let grow = frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &grow);
        assert_unchanged(&[PREFACE.as_slice(), &grow].concat()).await;
        // A header block over the limit.
        let huge = vec![0u8; MAX_HEADER_BLOCK + 1];
        assert_unchanged(&[PREFACE.as_slice(), &frame(TYPE_HEADERS, 0, 1, &huge)].concat()).await;
        // The connection ends in the middle of a header frame.
        assert_unchanged(&[PREFACE.as_slice(), &good[..good.len() - 3]].concat()).await;
        assert_unchanged(&[PREFACE.as_slice(), &open].concat()).await;
        assert_unchanged(&PREFACE[..10]).await;
    }

    #[tokio::test]
    async fn a_block_that_expands_past_the_limit_passes_through() {
        // One 4 KB field in the table, then a block naming it 100 times: a
        // 100-byte block that would decode to ~400 KB.
        let mut encoder = loona_hpack::Encoder::new();
        let first = vec![h("x-big", &"x".repeat(4000))];
        let block1 = encode(&mut encoder, &first);
        let first_frame = frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block1);
        let bomb = frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &[0x80 | 62; 100]);
        let window = frame(0x8, 0, 0, &[0, 0, 0x10, 0]);
        let input = [PREFACE.as_slice(), &first_frame, &bomb, &window].concat();
        let output = through_wrapper(&input).await;
        let frames = parse(&output);
        assert_eq!(frames.len(), 3);
        let mut literal = Vec::new();
        encode_literal(b"x-big", "x".repeat(4000).as_bytes(), &mut literal);
        assert_eq!(frames[0].payload, literal, "the first block is rewritten");
        let rest = [bomb, window].concat();
        assert_eq!(
            &output[output.len() - rest.len()..],
            rest,
            "the rest is raw"
        );
    }

    #[tokio::test]
    async fn size_updates_are_followed() {
        // The client shrinks its table to 0 (evicting everything), then
        // grows it back: the next block's literals must still decode.
        let mut encoder = loona_hpack::Encoder::new();
        let first = request("tmp%2Fx", "/a");
        let block1 = encode(&mut encoder, &first);
        let mut block2 = vec![0x20, 0x3f, 0xe1, 0x1f]; // size 0, then 4096
        let mut fresh = loona_hpack::Encoder::new();
        let second = request("tmp%2Fy", "/b");
        block2.extend_from_slice(&encode(&mut fresh, &second));
        let input = [
            PREFACE.as_slice(),
            &frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block1),
            &frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &block2),
        ]
        .concat();
        let (blocks, _) = decode_output(&through_wrapper(&input).await);
        assert_eq!(blocks[0].1, with_authority(&first, "localhost"));
        assert_eq!(blocks[1].1, with_authority(&second, "localhost"));
    }

    #[test]
    fn integers_encode_as_in_rfc_7541() {
        let enc = |value, prefix| {
            let mut out = Vec::new();
            encode_integer(value, prefix, 0, &mut out);
            out
        };
        // Appendix C.1.
        assert_eq!(enc(10, 5), [0x0a]);
        assert_eq!(enc(1337, 5), [0x1f, 0x9a, 0x0a]);
        assert_eq!(enc(42, 8), [0x2a]);
        assert_eq!(enc(127, 7), [0x7f, 0x00]);
        assert_eq!(enc(126, 7), [0x7e]);
    }

    #[test]
    fn authority_validity_follows_http() {
        assert!(valid_authority(b"localhost"));
        assert!(valid_authority(b"localhost:8080"));
        assert!(valid_authority(b"[::1]:1"));
        assert!(!valid_authority(b"tmp%2Fx%2Fworkload.sock"));
        assert!(!valid_authority(b"a b"));
    }
}
