//! The Workload API serves clients that send a percent-encoded Unix socket
//! path as `:authority`, as grpcio (py-spiffe) does. `h2` alone resets such
//! streams with PROTOCOL_ERROR; the server's connection wrapper (`h2fix`)
//! makes them work. The client here is a raw HTTP/2 client, because
//! `http::Uri` (and so the `h2` client) cannot even express that authority:
//! it writes the frames itself, encodes its headers with an indexing HPACK
//! encoder (so the second request refers to the first one's table, as
//! grpcio's would) and decodes the answers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyless_audit::MemorySink;
use keyless_identity::{Identity, IdentityConfig, NewEntry, Selector, SpiffeId, TrustDomain};
use keyless_store::{FileKeyManager, Store};
use keyless_workload_api::WorkloadApi;
use keyless_workload_api::proto::{JwtsvidRequest, JwtsvidResponse};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const WAIT: Duration = Duration::from_secs(10);
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// What grpcio sends for `unix:/tmp/x/workload.sock`.
const GRPCIO_AUTHORITY: &str = "tmp%2Fx%2Fworkload.sock";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

async fn read_frame(stream: &mut UnixStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.unwrap();
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], stream_id, payload)
}

/// What came back on one stream.
#[derive(Default, Debug)]
struct Answer {
    headers: Vec<HashMap<String, String>>,
    data: Vec<u8>,
    reset: Option<u32>,
    done: bool,
}

/// Sends one unary FetchJWTSVID per audience (streams 1, 3, …) with
/// `authority`, and collects the answers.
async fn fetch_jwt_raw(socket: &Path, authority: &str, audiences: &[&str]) -> Vec<Answer> {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    let mut encoder = loona_hpack::Encoder::new();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for (i, audience) in audiences.iter().enumerate() {
        let id = u32::try_from(2 * i + 1).unwrap();
        let headers: [(&[u8], &[u8]); 8] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchJWTSVID"),
            (b":authority", authority.as_bytes()),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            (b"workload.spiffe.io", b"true"),
            (
                b"user-agent",
                b"grpc-python/1.71.0 grpc-c/46.0.0 (linux; chttp2)",
            ),
        ];
        out.extend(frame(HEADERS, END_HEADERS, id, &encoder.encode(headers)));
        let message = JwtsvidRequest {
            audience: vec![(*audience).to_owned()],
            spiffe_id: String::new(),
        }
        .encode_to_vec();
        let mut body = vec![0u8];
        body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        body.extend_from_slice(&message);
        out.extend(frame(DATA, END_STREAM, id, &body));
    }
    stream.write_all(&out).await.unwrap();

    let mut decoder = loona_hpack::Decoder::new();
    let mut answers: Vec<Answer> = audiences.iter().map(|_| Answer::default()).collect();
    let mut block: Option<(u32, u8, Vec<u8>)> = None;
    let collect = async {
        while !answers.iter().all(|a| a.done) {
            let (kind, flags, id, payload) = read_frame(&mut stream).await;
            let index = usize::try_from(id / 2).unwrap();
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    stream
                        .write_all(&frame(SETTINGS, ACK, 0, &[]))
                        .await
                        .unwrap();
                }
                GOAWAY => panic!("server sent GOAWAY: {payload:?}"),
                RST_STREAM => {
                    let answer = &mut answers[index];
                    answer.reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                    answer.done = true;
                }
                DATA => {
                    answers[index].data.extend_from_slice(&payload);
                    answers[index].done |= flags & END_STREAM != 0;
                }
                HEADERS | CONTINUATION => {
                    let (_, first_flags, fragment) =
                        block.get_or_insert_with(|| (id, flags, Vec::new()));
                    fragment.extend_from_slice(&payload);
                    if flags & END_HEADERS != 0 {
                        let first_flags = *first_flags;
                        let (_, _, fragment) = block.take().unwrap();
                        let fields = decoder
                            .decode(&fragment)
                            .unwrap()
                            .into_iter()
                            .map(|(n, v)| {
                                (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                            })
                            .collect();
                        answers[index].headers.push(fields);
                        answers[index].done |= first_flags & END_STREAM != 0;
                    }
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, collect)
        .await
        .expect("no complete answer in time");
    answers
}

#[tokio::test]
async fn grpcio_style_percent_encoded_authority_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("keyless.db"))
        .await
        .unwrap();
    let keys = Arc::new(FileKeyManager::open(&dir.path().join("keys")).unwrap());
    let events = Arc::new(MemorySink::default());
    let config = IdentityConfig::new(
        TrustDomain::new("example.org").unwrap(),
        "http://127.0.0.1:8180".into(),
    );
    let identity = Identity::open(store, keys, events.clone(), config)
        .await
        .unwrap();
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    identity
        .create_entry(NewEntry::new(
            SpiffeId::new("spiffe://example.org/agent").unwrap(),
            vec![Selector::unix_uid(uid)],
        ))
        .await
        .unwrap();
    let socket = dir.path().join("workload.sock");
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let api = WorkloadApi::new(identity, events);
    let path = socket.clone();
    let server = tokio::spawn(async move {
        api.serve(&path, async {
            let _ = stopped.await;
        })
        .await
    });
    for _ in 0..200 {
        if UnixStream::connect(&socket).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Two requests on one connection: the second one's headers are mostly
    // references to the HPACK table the first one built.
    let answers = fetch_jwt_raw(&socket, GRPCIO_AUTHORITY, &["bank", "directory"]).await;
    for (answer, audience) in answers.iter().zip(["bank", "directory"]) {
        assert_eq!(answer.reset, None, "stream reset: {answer:?}");
        assert_eq!(answer.headers.len(), 2, "headers and trailers: {answer:?}");
        assert_eq!(answer.headers[0][":status"], "200");
        assert_eq!(answer.headers[1]["grpc-status"], "0", "{answer:?}");
        let (prefix, message) = answer.data.split_at(5);
        assert_eq!(prefix[0], 0, "not compressed");
        let response = JwtsvidResponse::decode(message).unwrap();
        assert_eq!(response.svids.len(), 1);
        assert_eq!(response.svids[0].spiffe_id, "spiffe://example.org/agent");
        // The audience made it through the rewritten connection intact.
        let claims = response.svids[0].svid.split('.').nth(1).unwrap();
        use base64::Engine as _;
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
        assert_eq!(claims["aud"], serde_json::json!([audience]));
    }

    // A valid authority works the same.
    let answers = fetch_jwt_raw(&socket, "localhost", &["bank"]).await;
    assert_eq!(
        answers[0].headers[1]["grpc-status"], "0",
        "{:?}",
        answers[0]
    );

    let _ = shutdown.send(());
    tokio::time::timeout(WAIT, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
