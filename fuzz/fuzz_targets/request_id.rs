//! Any bytes as a forwarded `x-request-id`: accepted exactly when they follow the rules, and
//! an accepted id is the same bytes and a valid header value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reqscope::RequestId;

fuzz_target!(|data: &[u8]| {
    let valid =
        (1..=128).contains(&data.len()) && data.iter().all(|b| b.is_ascii_alphanumeric() || b"._:+/=@-".contains(b));
    match RequestId::from_bytes(data) {
        Ok(id) => {
            assert!(valid);
            assert_eq!(id.as_bytes(), data);
            assert!(http::HeaderValue::from_bytes(id.as_bytes()).is_ok());
        }
        Err(_) => assert!(!valid),
    }
});
