//! Fuzzes the parsers a receiver runs on untrusted input: the SET parser
//! and verifier (`peek`, `verify`), and, when the input is JSON, the subject,
//! JWKS and CAEP event validators. The property is that none of them panics
//! or hangs whatever the bytes; a forged SET cannot verify because nobody
//! can produce an ES256 signature for the fixed key without its private key
//! (finding one would be a bug in aws-lc, not here).

#![no_main]

use keyless_signals::caep;
use keyless_signals::set::{self, PublicKey};
use keyless_signals::subject;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let _ = set::peek(&token);
    // The P-256 generator point: a valid public key.
    let jwk = json!({
        "kty": "EC",
        "crv": "P-256",
        "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
        "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU",
        "kid": "fuzz",
    });
    if let Ok(key) = PublicKey::from_jwk(&jwk) {
        let _ = set::verify(&token, &[key], "https://tx.example", "https://rx.example");
    }

    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        let _ = subject::validate_subject(&value);
        let _ = subject::canonical(&value);
        let _ = subject::matches(&value, &value);
        let _ = set::parse_jwks(&value);
        let _ = PublicKey::from_jwk(&value);
        for event_type in caep::CAEP_EVENTS.iter().chain(&[
            caep::VERIFICATION,
            caep::STREAM_UPDATED,
            "urn:example:other",
        ]) {
            if let Ok((event, meta)) = caep::parse_event(event_type, &value) {
                let _ = event.to_payload(&meta);
            }
        }
    }
});
