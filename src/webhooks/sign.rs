//! Standard Webhooks signatures: `webhook-signature: v1,<base64 of HMAC-SHA256(key,
//! "<webhook-id>.<webhook-timestamp>.<body>")>`, the key being the bytes `whsec_<base64>` names.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The `webhook-signature` value of one delivery attempt.
pub(crate) fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::webhooks_key;

    /// The specification's own example (its reference libraries test against it).
    #[test]
    fn matches_the_specification_vector() {
        let key = webhooks_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let got = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(got, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    /// RFC 4231, test case 2: the HMAC-SHA256 underneath is the standard one.
    #[test]
    fn hmac_is_rfc_4231() {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn every_part_is_signed() {
        let a = sign(b"k", "id", 1, b"{}");
        assert_ne!(a, sign(b"k", "id2", 1, b"{}"));
        assert_ne!(a, sign(b"k", "id", 2, b"{}"));
        assert_ne!(a, sign(b"k", "id", 1, b"{ }"));
        assert_ne!(a, sign(b"k2", "id", 1, b"{}"));
    }
}
