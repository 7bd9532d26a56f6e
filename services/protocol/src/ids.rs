//! Identifiers that can only be built valid: parse at the edge, and the rest
//! of the code cannot hold a bad id.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Why a string is not a usable id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("not a UUID: {0:?}")]
    NotUuid(String),
    #[error("not a random (version 4) UUID: {0}")]
    NotV4(String),
}

fn parse_v4(s: &str) -> Result<Uuid, IdError> {
    let uuid = Uuid::parse_str(s).map_err(|_| IdError::NotUuid(truncate(s, 64)))?;
    if uuid.get_version_num() != 4 {
        return Err(IdError::NotV4(uuid.to_string()));
    }
    Ok(uuid)
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

macro_rules! uuid_v4_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random id.
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                parse_v4(s).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        /// Encoded into a stack buffer, not through `Display`: every event
        /// carries a message id, and `collect_str`'s formatter machinery was
        /// a visible share of the worker's instructions per chunk.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut buffer = uuid::Uuid::encode_buffer();
                s.serialize_str(self.0.hyphenated().encode_lower(&mut buffer))
            }
        }

        /// Parsed from the string where it lies, through a visitor: a
        /// `Cow<str>` deserialised on its own is always an owned copy, and a
        /// session record holds up to [`RECENT_MESSAGES_KEPT`] ids, each
        /// copied then freed on every read of the record.
        ///
        /// [`RECENT_MESSAGES_KEPT`]: crate::records::RECENT_MESSAGES_KEPT
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct IdVisitor;
                impl serde::de::Visitor<'_> for IdVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a UUIDv4 string")
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<$name, E> {
                        s.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(IdVisitor)
            }
        }
    };
}

uuid_v4_id!(
    /// A chat session (a conversation). Random UUIDv4, so it cannot be guessed.
    SessionId
);
uuid_v4_id!(
    /// One question and its answer. Chosen by the client (idempotent retries)
    /// or by the gateway when the client sends none.
    MessageId
);

/// The secret that proves a client owns a session. Shown once, when the
/// session is created; only its [`TokenHash`] is stored. Its `Debug` never
/// shows it, so a frame or a struct holding one can be logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionToken(String);

impl SessionToken {
    /// 32 random bytes, hex encoded.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(hex::encode(bytes))
    }

    /// Wrap what a client presented; any string is accepted here and checked
    /// only by comparing hashes.
    pub fn presented(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash(hex::encode(Sha256::digest(self.0.as_bytes())))
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(..)")
    }
}

/// SHA-256 of a session token, hex encoded: what the KV bucket stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenHash(String);

impl TokenHash {
    /// Whether `token` is the one this hash was made from. Compares in
    /// constant time so the comparison leaks nothing about the stored hash.
    pub fn matches(&self, token: &SessionToken) -> bool {
        let other = token.hash();
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Who owns a session in `GATEWAY_AUTH=jwt` mode: the first 128 bits of
/// SHA-256 over the token's `sub`, hex encoded. The raw `sub` (an email, an
/// account id) never becomes a NATS subject or a KV key, and a key is a
/// valid subject token whatever characters the app puts in `sub`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserKey(String);

impl UserKey {
    pub fn of_subject(sub: &str) -> Self {
        let digest = Sha256::digest(sub.as_bytes());
        Self(hex::encode(&digest[..16]))
    }

    /// A key read back from a subject: 32 lowercase hex digits, or nothing.
    pub fn parse(raw: &str) -> Option<Self> {
        (raw.len() == 32
            && raw
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_non_v4() {
        let id = SessionId::new();
        let parsed: SessionId = id.to_string().parse().unwrap();
        assert_eq!(id, parsed);
        assert!(matches!(
            "nope".parse::<SessionId>(),
            Err(IdError::NotUuid(_))
        ));
        // A valid UUID of version 1 is not a session id.
        assert!(matches!(
            "c232ab00-9414-11ec-b3c8-9f6bdeced846".parse::<MessageId>(),
            Err(IdError::NotV4(_))
        ));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<SessionId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SessionId>("\"x\"").is_err());
    }

    #[test]
    fn an_id_is_read_from_every_shape_of_json_string() {
        let id = MessageId::new();
        let text = id.to_string();
        // In place, from a JSON value (an owned string), from a reader (a
        // copy in the parser's scratch), and with an escape in it.
        let json = format!("\"{text}\"");
        assert_eq!(serde_json::from_str::<MessageId>(&json).unwrap(), id);
        let value = serde_json::Value::String(text.clone());
        assert_eq!(serde_json::from_value::<MessageId>(value).unwrap(), id);
        assert_eq!(
            serde_json::from_reader::<_, MessageId>(json.as_bytes()).unwrap(),
            id
        );
        let escaped = format!("\"\\u{:04x}{}\"", u32::from(text.as_bytes()[0]), &text[1..]);
        assert_eq!(serde_json::from_str::<MessageId>(&escaped).unwrap(), id);
        // Not a string, or not a v4 id: refused with what was expected.
        let number = serde_json::from_str::<MessageId>("42").unwrap_err();
        assert!(number.to_string().contains("a UUIDv4 string"), "{number}");
        assert!(
            serde_json::from_str::<MessageId>("\"c232ab00-9414-11ec-b3c8-9f6bdeced846\"").is_err()
        );
    }

    #[test]
    fn a_user_key_hides_the_subject_and_is_a_subject_token() {
        let key = UserKey::of_subject("alice@example.com");
        assert_eq!(key, UserKey::of_subject("alice@example.com"));
        assert_ne!(key, UserKey::of_subject("bob@example.com"));
        assert!(!key.as_str().contains("alice"));
        assert_eq!(UserKey::parse(key.as_str()), Some(key.clone()));
        assert_eq!(UserKey::parse("alice.>"), None);
        assert_eq!(UserKey::of_subject("a.b *>").as_str().len(), 32);
    }

    #[test]
    fn token_hash_matches_only_its_token() {
        let token = SessionToken::generate();
        assert_eq!(token.as_str().len(), 64);
        let hash = token.hash();
        assert!(hash.matches(&token));
        assert!(!hash.matches(&SessionToken::generate()));
        assert!(!hash.matches(&SessionToken::presented("")));
    }
}
