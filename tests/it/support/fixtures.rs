//! What the tests send: fixture bodies, made-up Whitepay orders, and Whitepay's
//! signature over them.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The clearly fake Whitepay token the fixtures are signed with.
pub const WHITEPAY_TOKEN: &str = "test_webhook_token";

/// A fixture body, byte for byte.
pub fn fixture(provider: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(provider)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Hex HMAC-SHA256 of the body, Whitepay's `Signature` header.
pub fn whitepay_signature(token: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A unique Whitepay order body, for tests that need many distinct webhooks.
pub fn whitepay_order(id: &str) -> Vec<u8> {
    format!(
        r#"{{"order":{{"id":"{id}","currency":"UAH","value":"200.10","status":"COMPLETE","external_order_id":"m-{id}","created_at":"2024-01-02 03:04:05","completed_at":null,"acquiring_url":"https:\/\/merchant.pay.whitepay.com\/fiat-order\/{id}"}},"event_type":"order::completed"}}"#
    )
    .into_bytes()
}

/// A Whitepay order event of `id` with the provider status `status` (a new
/// idempotency key per status: the next event of the same order).
pub fn whitepay_order_at(id: &str, status: &str) -> Vec<u8> {
    String::from_utf8(whitepay_order(id))
        .expect("text")
        .replace(r#""status":"COMPLETE""#, &format!(r#""status":"{status}""#))
        .into_bytes()
}
