//! Load generator for the Workload API, for `bench/identity.sh`.
//!
//! `workload_load SOCKET jwt|x509 CONCURRENCY SECONDS` runs CONCURRENCY
//! clients, each on its own connection, each fetching in a loop for SECONDS,
//! and prints one JSON line: requests, rate, p50, p99 (milliseconds).
//! Loopback only; bounded by the duration.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use keyless_workload_api::client::{self, request};
use keyless_workload_api::proto::{JwtsvidRequest, X509svidRequest};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let socket = args[1].trim_start_matches("unix://").to_owned();
    let kind = args[2].clone();
    let concurrency: usize = args[3].parse().unwrap();
    let seconds: u64 = args[4].parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let socket = socket.clone();
        let kind = kind.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = client::connect(std::path::Path::new(&socket))
                .await
                .unwrap();
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                if kind == "jwt" {
                    client
                        .fetch_jwtsvid(request(JwtsvidRequest {
                            audience: vec!["bench".into()],
                            spiffe_id: String::new(),
                        }))
                        .await
                        .unwrap();
                } else {
                    let mut s = client
                        .fetch_x509svid(request(X509svidRequest {}))
                        .await
                        .unwrap()
                        .into_inner();
                    s.message().await.unwrap().unwrap();
                }
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct =
        |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "{{\"kind\":\"{kind}\",\"concurrency\":{concurrency},\"requests\":{},\"rate\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
}
