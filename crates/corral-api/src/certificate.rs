//! The TLS trust store: `/1.0/certificates/...` (LXD's `certificate.go`).

use serde::{Deserialize, Serialize};

use crate::wire::nullable;

/// A trusted certificate, as `GET /1.0/certificates/<fingerprint>` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Certificate {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// `client` or `metrics`.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    /// Limited to `projects`.
    #[serde(deserialize_with = "nullable")]
    pub restricted: bool,
    #[serde(deserialize_with = "nullable")]
    pub projects: Vec<String>,
    /// The certificate, PEM.
    #[serde(deserialize_with = "nullable")]
    pub certificate: String,
    /// SHA-256 of its DER form, hex.
    #[serde(deserialize_with = "nullable")]
    pub fingerprint: String,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
}

/// A certificate's writable fields: the body of `PUT /1.0/certificates/<fingerprint>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct CertificatePut {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(deserialize_with = "nullable")]
    pub restricted: bool,
    #[serde(deserialize_with = "nullable")]
    pub projects: Vec<String>,
    /// PEM or base64 DER; kept as is when empty.
    #[serde(deserialize_with = "nullable")]
    pub certificate: String,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
}

/// The body of `POST /1.0/certificates`: add a certificate (base64 DER or PEM), the caller's own
/// TLS certificate with a token (`password` in LXD 5.0, `trust_token` in Incus), or ask for a
/// token (`token: true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct CertificatesPost {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(deserialize_with = "nullable")]
    pub restricted: bool,
    #[serde(deserialize_with = "nullable")]
    pub projects: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub certificate: String,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    #[serde(deserialize_with = "nullable")]
    pub password: String,
    #[serde(deserialize_with = "nullable")]
    pub trust_token: String,
    #[serde(deserialize_with = "nullable")]
    pub token: bool,
}

/// What a certificate add token holds, base64 of this JSON (LXD's `CertificateAddToken`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct CertificateAddToken {
    /// The name the new client's certificate gets.
    #[serde(deserialize_with = "nullable")]
    pub client_name: String,
    /// SHA-256 of the server's certificate: the client checks it before trusting the server.
    #[serde(deserialize_with = "nullable")]
    pub fingerprint: String,
    /// Where the server listens (`10.0.0.1:8443`).
    #[serde(deserialize_with = "nullable")]
    pub addresses: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub secret: String,
    /// RFC 3339; Go's zero time when it does not expire.
    #[serde(deserialize_with = "nullable")]
    pub expires_at: String,
}

impl CertificateAddToken {
    /// The token as users copy it: base64 (standard alphabet, padded) of its JSON.
    pub fn encode(&self) -> String {
        base64_encode(&serde_json::to_vec(self).unwrap_or_default())
    }

    /// Reads a token; `None` if `s` is not one.
    pub fn decode(s: &str) -> Option<CertificateAddToken> {
        let bytes = base64_decode(s.trim())?;
        let t: CertificateAddToken = serde_json::from_slice(&bytes).ok()?;
        (!t.secret.is_empty() && !t.fingerprint.is_empty()).then_some(t)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (what Go's `base64.StdEncoding` writes).
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64, padding optional, whitespace ignored; `None` on any other character.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The DER bytes of the first `-----BEGIN <label>-----` block in `pem`.
pub fn pem_block(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    base64_decode(&pem[start..stop])
}

/// The DER of the first certificate in `pem`.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    pem_block(pem, "CERTIFICATE")
}

/// PEM of a DER certificate, 64 characters a line.
pub fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_like_go() {
        assert_eq!(base64_encode(b"corral"), "Y29ycmFs");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b"a"), "YQ==");
        for s in ["", "a", "ab", "abc", "abcd", "{\"x\":1}"] {
            assert_eq!(base64_decode(&base64_encode(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(base64_decode("not base64!"), None);
        let der = b"any bytes will do for the armour".repeat(3);
        assert_eq!(pem_to_der(&der_to_pem(&der)).unwrap(), der);
        assert!(der_to_pem(&der).lines().all(|l| l.len() <= 64));
    }

    #[test]
    fn a_token_is_base64_json_with_lxd_field_names() {
        let t = CertificateAddToken {
            client_name: "laptop".into(),
            fingerprint: "ab".repeat(32),
            addresses: vec!["10.0.0.1:8443".into()],
            secret: "s3cret".into(),
            expires_at: "0001-01-01T00:00:00Z".into(),
        };
        let json: serde_json::Value = serde_json::from_slice(&base64_decode(&t.encode()).unwrap()).unwrap();
        assert_eq!(json["client_name"], "laptop");
        assert_eq!(json["addresses"][0], "10.0.0.1:8443");
        assert_eq!(CertificateAddToken::decode(&t.encode()), Some(t));
        assert_eq!(CertificateAddToken::decode("c1"), None);
    }
}
