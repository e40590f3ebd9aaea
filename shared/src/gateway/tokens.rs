//! Attempt tokens: what an agent holds in place of a provider key.
//!
//! A token is 32 random bytes (from the OS's generator), so it cannot be derived from
//! anything an agent sees. Redis keeps only its SHA-256 (the key of the attempt's
//! record, see `budget`), never the token, so a Redis dump hands out nothing that the
//! gateway would accept. The token is bound, in that record, to its job, attempt and
//! fencing token; it is refused once the attempt ends or its lease is lost.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// Every token starts with this, so a leaked one is recognisable in a scan.
pub const TOKEN_PREFIX: &str = "fgw-";

/// A fresh token.
pub fn new_token() -> Secret {
    let bytes: [u8; 32] = rand::random();
    Secret::new(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// What Redis keys a token by: its SHA-256, in hex.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Whether `value` looks like a token (before it is looked up).
pub fn looks_like_token(value: &str) -> bool {
    value.len() == TOKEN_PREFIX.len() + 43
        && value.starts_with(TOKEN_PREFIX)
        && value[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_only_their_hash_is_a_key() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a.expose(), b.expose());
        assert!(looks_like_token(a.expose()));
        assert!(!looks_like_token("sk-ant-something"));
        let h = token_hash(a.expose());
        assert_eq!(h.len(), 64);
        assert!(!h.contains(&a.expose()[TOKEN_PREFIX.len()..]));
        assert_eq!(h, token_hash(a.expose()));
        // A known vector: SHA-256("abc").
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
