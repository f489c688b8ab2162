//! Standard Webhooks (v1.0.0) symmetric signing for the generic webhook receiver (spec §6).
//!
//! The signed content is `"{webhook-id}.{webhook-timestamp}.{raw body}"`, the MAC is HMAC-SHA256,
//! and the header value is `v1,<base64 MAC>`. A secret written as `whsec_<base64>` is
//! base64-decoded (as the spec says), with or without `=` padding as the reference libraries
//! accept it; any other secret is used as its raw bytes.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD as B64};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Header carrying the message id (stable across retries).
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the Unix timestamp (seconds) of this attempt.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the space-delimited list of `v1,<base64>` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// Timestamp tolerance used by the Standard Webhooks reference libraries (5 minutes).
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

const WHSEC_PREFIX: &str = "whsec_";

/// Standard base64 that decodes with or without the trailing `=` padding.
const B64_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Errors about a webhook secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The secret has the `whsec_` prefix but what follows is not valid base64.
    #[error("webhook secret starts with \"whsec_\" but the rest is not valid base64: {0}")]
    InvalidBase64(String),
    /// The secret is empty.
    #[error("webhook secret is empty")]
    Empty,
}

/// Why a signature did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The timestamp is further than the tolerance from "now".
    #[error(
        "webhook timestamp {timestamp} is outside the tolerance of {tolerance_secs}s around {now}"
    )]
    TimestampOutOfTolerance {
        /// The message timestamp.
        timestamp: i64,
        /// The verifier's current time.
        now: i64,
        /// Allowed distance in seconds.
        tolerance_secs: i64,
    },
    /// No `v1,` entry in the signature header matched.
    #[error("no matching v1 signature in the webhook-signature header")]
    NoMatchingSignature,
}

/// The key material of a webhook secret. `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecret([{} bytes])", self.key.len())
    }
}

impl WebhookSecret {
    /// Parses a configured secret: `whsec_<base64>` is base64-decoded, anything else is raw bytes.
    pub fn new(secret: &str) -> Result<Self, SecretError> {
        let key = match secret.strip_prefix(WHSEC_PREFIX) {
            Some(b64) => B64_ANY_PADDING
                .decode(b64.trim())
                .map_err(|e| SecretError::InvalidBase64(e.to_string()))?,
            None => secret.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(WebhookSecret { key })
    }

    /// Uses the given bytes as the HMAC key as they are.
    pub fn from_raw_bytes(key: impl Into<Vec<u8>>) -> Self {
        WebhookSecret { key: key.into() }
    }

    fn mac(&self, msg_id: &str, timestamp_secs: i64, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any size"));
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_secs.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// Signs one delivery attempt; returns the `webhook-signature` value `v1,<base64 HMAC-SHA256>`.
pub fn sign(secret: &WebhookSecret, msg_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
    let tag = secret
        .mac(msg_id, timestamp_secs, body)
        .finalize()
        .into_bytes();
    format!("v1,{}", B64.encode(tag))
}

/// The three Standard Webhooks headers for one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// `webhook-id`: the notification id, stable across retries.
    pub id: String,
    /// `webhook-timestamp`: Unix seconds of this attempt.
    pub timestamp: String,
    /// `webhook-signature`: `v1,<base64>`.
    pub signature: String,
}

impl SignatureHeaders {
    /// The headers as `(name, value)` pairs, ready for an HTTP client.
    pub fn to_pairs(&self) -> [(&'static str, &str); 3] {
        [
            (HEADER_ID, self.id.as_str()),
            (HEADER_TIMESTAMP, self.timestamp.as_str()),
            (HEADER_SIGNATURE, self.signature.as_str()),
        ]
    }
}

/// Builds the headers triple for one delivery attempt (sign again on every retry: the timestamp
/// is that of the attempt, the id stays the same).
pub fn signature_headers(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp_secs: i64,
    body: &[u8],
) -> SignatureHeaders {
    SignatureHeaders {
        id: msg_id.to_owned(),
        timestamp: timestamp_secs.to_string(),
        signature: sign(secret, msg_id, timestamp_secs, body),
    }
}

/// Verifies a `webhook-signature` header (a space-delimited list; entries other than `v1,` are
/// ignored) in constant time, and checks that `timestamp_secs` is within `tolerance_secs` of
/// `now_secs`.
pub fn verify(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp_secs: i64,
    body: &[u8],
    signature_header: &str,
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    if (now_secs - timestamp_secs).abs() > tolerance_secs {
        return Err(VerifyError::TimestampOutOfTolerance {
            timestamp: timestamp_secs,
            now: now_secs,
            tolerance_secs,
        });
    }
    let matched = signature_header
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| B64.decode(b64).ok())
        .any(|tag| {
            secret
                .mac(msg_id, timestamp_secs, body)
                .verify_slice(&tag)
                .is_ok()
        });
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Published test vector of the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret() -> WebhookSecret {
        WebhookSecret::new(SECRET).unwrap()
    }

    #[test]
    fn standard_webhooks_test_vector() {
        assert_eq!(sign(&secret(), MSG_ID, TS, BODY), EXPECTED);
    }

    #[test]
    fn second_reference_vector() {
        // From the standard-webhooks Rust library.
        let s = WebhookSecret::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let sig = sign(
            &s,
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1_649_367_553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn headers_triple() {
        let h = signature_headers(&secret(), MSG_ID, TS, BODY);
        assert_eq!(
            h.to_pairs(),
            [
                ("webhook-id", MSG_ID),
                ("webhook-timestamp", "1614265330"),
                ("webhook-signature", EXPECTED),
            ]
        );
    }

    #[test]
    fn raw_secret_is_used_as_bytes() {
        // A secret without the prefix is not base64-decoded: same bytes as from_raw_bytes.
        let raw = WebhookSecret::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            raw,
            WebhookSecret::from_raw_bytes(&b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"[..])
        );
        assert_ne!(sign(&raw, MSG_ID, TS, BODY), EXPECTED);
        // Cross-check against an independent HMAC computation over the raw bytes.
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        mac.update(b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}");
        let want = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
        assert_eq!(sign(&raw, MSG_ID, TS, BODY), want);
    }

    #[test]
    fn whsec_decodes_with_or_without_padding() {
        // 32 random bytes: their base64 ends with one `=`.
        let key: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
        let padded = format!("whsec_{}", B64.encode(&key));
        assert!(padded.ends_with('='), "{padded}");
        let unpadded = padded.trim_end_matches('=').to_string();
        assert_eq!(WebhookSecret::new(&padded).unwrap(), WebhookSecret::from_raw_bytes(key.clone()));
        assert_eq!(WebhookSecret::new(&unpadded).unwrap(), WebhookSecret::from_raw_bytes(key));
        // Two bytes of padding too.
        assert_eq!(WebhookSecret::new("whsec_YQ").unwrap(), WebhookSecret::from_raw_bytes(&b"a"[..]));
        assert_eq!(WebhookSecret::new("whsec_YQ==").unwrap(), WebhookSecret::from_raw_bytes(&b"a"[..]));
    }

    #[test]
    fn invalid_whsec_and_empty_secrets_are_errors() {
        assert!(matches!(
            WebhookSecret::new("whsec_not*base64"),
            Err(SecretError::InvalidBase64(_))
        ));
        assert_eq!(WebhookSecret::new(""), Err(SecretError::Empty));
        assert_eq!(WebhookSecret::new("whsec_"), Err(SecretError::Empty));
    }

    #[test]
    fn debug_does_not_leak_the_key() {
        let dbg = format!("{:?}", secret());
        assert!(!dbg.contains("MfKQ"), "{dbg}");
        assert!(dbg.contains("bytes"));
    }

    #[test]
    fn verify_accepts_valid_and_rejects_tampering() {
        let s = secret();
        assert_eq!(verify(&s, MSG_ID, TS, BODY, EXPECTED, TS + 10, 300), Ok(()));
        // Key rotation: several signatures, one of which matches.
        let multi = format!("v1,AAAA v1a,ignored {EXPECTED}");
        assert_eq!(verify(&s, MSG_ID, TS, BODY, &multi, TS, 300), Ok(()));
        // Tampered body, id, timestamp, signature.
        let bad = Err(VerifyError::NoMatchingSignature);
        assert_eq!(
            verify(
                &s,
                MSG_ID,
                TS,
                br#"{"test": 2432232315}"#,
                EXPECTED,
                TS,
                300
            ),
            bad
        );
        assert_eq!(verify(&s, "msg_other", TS, BODY, EXPECTED, TS, 300), bad);
        assert_eq!(verify(&s, MSG_ID, TS + 1, BODY, EXPECTED, TS, 300), bad);
        assert_eq!(
            verify(
                &s,
                MSG_ID,
                TS,
                BODY,
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OF=",
                TS,
                300
            ),
            bad
        );
        assert_eq!(verify(&s, MSG_ID, TS, BODY, "", TS, 300), bad);
        // Wrong secret.
        let other = WebhookSecret::new("another-secret").unwrap();
        assert_eq!(verify(&other, MSG_ID, TS, BODY, EXPECTED, TS, 300), bad);
    }

    #[test]
    fn verify_rejects_stale_and_future_timestamps() {
        let s = secret();
        assert!(matches!(
            verify(
                &s,
                MSG_ID,
                TS,
                BODY,
                EXPECTED,
                TS + 301,
                DEFAULT_TOLERANCE_SECS
            ),
            Err(VerifyError::TimestampOutOfTolerance { .. })
        ));
        assert!(matches!(
            verify(
                &s,
                MSG_ID,
                TS,
                BODY,
                EXPECTED,
                TS - 301,
                DEFAULT_TOLERANCE_SECS
            ),
            Err(VerifyError::TimestampOutOfTolerance { .. })
        ));
        assert_eq!(
            verify(
                &s,
                MSG_ID,
                TS,
                BODY,
                EXPECTED,
                TS + 300,
                DEFAULT_TOLERANCE_SECS
            ),
            Ok(())
        );
    }
}
