//! Fuzzes the SPIFFE ID, trust domain and selector parsers, which read
//! untrusted text (`sub` claims, URI SANs, operator input): they must never
//! panic, and whatever they accept must satisfy the SPIFFE ID rules and print
//! back to exactly the input.

#![no_main]

use keyless_identity::{Selector, SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fn td_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

fn path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(id) = SpiffeId::new(input) {
        assert_eq!(id.to_string(), input);
        assert!(input.len() <= 2048);
        let td = id.trust_domain_name();
        assert!(!td.is_empty() && td.len() <= 255 && td.bytes().all(td_char));
        assert_eq!(format!("spiffe://{td}{}", id.path()), input);
        let path = id.path();
        if !path.is_empty() {
            let segments = path.strip_prefix('/').expect("path starts with /");
            for segment in segments.split('/') {
                assert!(!segment.is_empty() && segment != "." && segment != "..");
                assert!(segment.bytes().all(path_char));
            }
        }
        assert_eq!(id.trust_domain(), TrustDomain::new(td).expect("its trust domain parses"));
        assert_eq!(input.parse::<SpiffeId>().as_ref(), Ok(&id));
    }

    if let Ok(td) = TrustDomain::new(input) {
        assert!(td.name().bytes().all(td_char));
        assert!(SpiffeId::new(&td.id().to_string()).is_ok());
    }

    if let Ok(selector) = input.parse::<Selector>() {
        assert_eq!(selector.to_string(), input);
    }
});
