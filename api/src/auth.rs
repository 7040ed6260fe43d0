//! API credentials. The operator's admin token comes from `GITO_ADMIN_TOKEN`; tenant tokens read
//! `gito_<key_id>_<secret>`: the key id (16 hex digits) finds the stored token, the secret (64 hex
//! digits, 256 random bits) is kept only as its SHA-256. Secrets this random need no slow hash;
//! digests are compared in constant time so that response timing says nothing about them.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const TOKEN_PREFIX: &str = "gito_";
const KEY_ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
/// The admin token is chosen by the operator: refuse ones too short to be random.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

pub type Sha256Digest = [u8; 32];

pub fn digest(secret: &str) -> Sha256Digest {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares a presented secret with a stored digest in constant time.
pub fn secret_matches(secret: &str, stored: &[u8]) -> bool {
    digest(secret).as_slice().ct_eq(stored).into()
}

/// A tenant token as presented: where to find it and what to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenParts<'a> {
    pub key_id: &'a str,
    pub secret: &'a str,
}

/// `None` unless `token` has the shape of a tenant token.
pub fn parse(token: &str) -> Option<TokenParts<'_>> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (key_id, secret) = rest.split_once('_')?;
    let hex = |s: &str, bytes: usize| {
        s.len() == bytes * 2 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    (hex(key_id, KEY_ID_BYTES) && hex(secret, SECRET_BYTES))
        .then_some(TokenParts { key_id, secret })
}

/// A freshly generated tenant token. `token` is shown to its creator once and never stored.
pub struct NewToken {
    pub key_id: String,
    pub secret_sha256: Sha256Digest,
    pub token: String,
}

impl NewToken {
    pub fn generate() -> NewToken {
        let mut key_id = [0u8; KEY_ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        getrandom::fill(&mut key_id).expect("the operating system's random source");
        getrandom::fill(&mut secret).expect("the operating system's random source");
        NewToken::from_parts(&hex::encode(key_id), &hex::encode(secret))
    }

    /// A token given by an operator (e.g. the bridge's, from the environment); `None` unless it
    /// has the shape of a tenant token.
    pub fn from_token(token: &str) -> Option<NewToken> {
        parse(token).map(|parts| NewToken::from_parts(parts.key_id, parts.secret))
    }

    fn from_parts(key_id: &str, secret: &str) -> NewToken {
        NewToken {
            key_id: key_id.to_owned(),
            secret_sha256: digest(secret),
            token: format!("{TOKEN_PREFIX}{key_id}_{secret}"),
        }
    }
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The operator's admin token; only its digest is kept in memory, and `Debug` shows nothing.
#[derive(Clone)]
pub struct AdminToken {
    digest: Sha256Digest,
}

impl AdminToken {
    pub fn matches(&self, presented: &str) -> bool {
        secret_matches(presented, &self.digest)
    }
}

impl std::str::FromStr for AdminToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.chars().count() < MIN_ADMIN_TOKEN_CHARS {
            return Err(format!(
                "must be at least {MIN_ADMIN_TOKEN_CHARS} characters; generate one with `openssl rand -hex 32`"
            ));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain whitespace".to_owned());
        }
        Ok(AdminToken { digest: digest(s) })
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_match_their_digest() {
        let new = NewToken::generate();
        let parts = parse(&new.token).expect("a generated token parses");
        assert_eq!(parts.key_id, new.key_id);
        assert!(secret_matches(parts.secret, &new.secret_sha256));
        assert!(!secret_matches(
            &parts.secret.replace('a', "b").replace('0', "1"),
            &new.secret_sha256
        ));
        assert_ne!(NewToken::generate().token, new.token);
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        let good = NewToken::generate().token;
        for bad in [
            "",
            "gito_",
            &good[..good.len() - 1],
            &format!("{good}0"),
            &good.to_uppercase(),
            &good.replacen("gito_", "gitx_", 1),
            &good.replacen('_', "-", 2),
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_digest_of_another_length_never_matches() {
        assert!(!secret_matches("x", &[]));
        assert!(!secret_matches("x", &digest("x")[..31]));
    }

    #[test]
    fn admin_tokens_must_be_long_and_never_print() {
        assert!("short".parse::<AdminToken>().is_err());
        let secret = "0123456789abcdef0123456789abcdef";
        let admin: AdminToken = secret.parse().expect("32 characters");
        assert!(admin.matches(secret));
        assert!(!admin.matches("0123456789abcdef0123456789abcdeX"));
        assert!(!format!("{admin:?}").contains(secret));
    }
}
