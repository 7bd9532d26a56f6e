//! Verifying the app's tokens in `GATEWAY_AUTH=jwt` mode: one [`Verifier`]
//! built from the configuration (an HMAC secret file, a JWKS file or a JWKS
//! URL), one [`Verifier::verify`] returning the claims the gateway uses or
//! why it refused. Signatures are checked by `jsonwebtoken`; this module
//! only chooses the key and the rules. Every refusal is the same 401 to
//! the client; the reason is for the log.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::time::Instant;

use crate::config::AuthConfig;

/// Longest token accepted: a token is a header, so a client cannot make the
/// gateway parse megabytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The shortest time between two reads of the key set on an unknown `kid`
/// by default (`--jwt-jwks-refetch-secs`): a client inventing `kid`s cannot
/// make the gateway hammer the identity provider.
pub const JWKS_REFETCH_EVERY: Duration = Duration::from_secs(60);

/// How long a JWKS URL may take to answer.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What the gateway takes from a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    /// Seconds since the epoch.
    pub exp: u64,
    /// When it was issued (seconds), if it says: a revocation refuses the
    /// tokens issued at or before it (and those that do not say).
    pub iat: Option<u64>,
}

#[derive(Deserialize)]
struct RawClaims {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
}

/// Why a token was refused (logged, never told: the client gets 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("token over {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("algorithm {0:?} is not accepted with the configured keys")]
    Algorithm(Algorithm),
    #[error("no key with this kid")]
    UnknownKey,
    #[error("the key is not for algorithm {0:?}")]
    KeyMismatch(Algorithm),
    #[error("token rejected: {0}")]
    Invalid(String),
    #[error("empty sub")]
    EmptySubject,
}

/// Where the public keys come from.
#[derive(Clone, Debug)]
enum KeySource {
    File(PathBuf),
    Url(String),
}

struct PublicKeys {
    source: KeySource,
    keys: RwLock<JwkSet>,
    /// When the set was last read; one reader at a time.
    fetched: tokio::sync::Mutex<Instant>,
    refetch_every: Duration,
    http: reqwest::Client,
}

pub struct Verifier {
    hmac: Option<DecodingKey>,
    public: Option<PublicKeys>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("public", &self.public.as_ref().map(|p| &p.source))
            .finish()
    }
}

impl Verifier {
    /// The verifier `jwt` mode configures; the key set is read now, so a
    /// wrong file or URL stops the gateway at start, not at the first login.
    pub async fn from_config(config: &AuthConfig) -> anyhow::Result<Self> {
        let hmac = match &config.jwt_hmac_secret_file {
            Some(path) => {
                let secret = std::fs::read(path)
                    .with_context(|| format!("reading the HMAC secret {}", path.display()))?;
                let secret = trim_ascii(&secret);
                anyhow::ensure!(
                    secret.len() >= 32,
                    "the HMAC secret in {} is shorter than 32 bytes",
                    path.display()
                );
                Some(DecodingKey::from_secret(secret).context("the HMAC secret")?)
            }
            None => None,
        };
        let source = match (&config.jwt_jwks_file, &config.jwt_jwks_url) {
            (Some(_), Some(_)) => anyhow::bail!("set a JWKS file or a JWKS URL, not both"),
            (Some(path), None) => Some(KeySource::File(path.clone())),
            (None, Some(url)) => Some(KeySource::Url(url.clone())),
            (None, None) => None,
        };
        anyhow::ensure!(
            hmac.is_some() || source.is_some(),
            "GATEWAY_AUTH=jwt needs keys: GATEWAY_JWT_HMAC_SECRET_FILE, GATEWAY_JWT_JWKS_FILE or GATEWAY_JWT_JWKS_URL"
        );
        let public = match source {
            Some(source) => {
                let http = reqwest::Client::builder()
                    .timeout(JWKS_FETCH_TIMEOUT)
                    .build()
                    .context("an HTTP client for the JWKS URL")?;
                let keys = read_keys(&source, &http).await?;
                Some(PublicKeys {
                    source,
                    keys: RwLock::new(keys),
                    fetched: tokio::sync::Mutex::new(Instant::now()),
                    refetch_every: Duration::from_secs(config.jwt_jwks_refetch_secs),
                    http,
                })
            }
            None => None,
        };
        Ok(Self {
            hmac,
            public,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            leeway_secs: config.jwt_leeway_secs,
        })
    }

    /// The token's claims, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<Claims, Refused> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refused::TooLarge);
        }
        // `alg: none` (and any name jsonwebtoken does not know) fails here.
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| Refused::Malformed(e.to_string()))?;
        let alg = header.alg;
        let key = if is_hmac(alg) {
            // Only with a configured secret: an HMAC token signed with a
            // public key as its secret (algorithm confusion) finds none.
            self.hmac.clone().ok_or(Refused::Algorithm(alg))?
        } else {
            let public = self.public.as_ref().ok_or(Refused::Algorithm(alg))?;
            public.key_for(header.kid.as_deref(), alg).await?
        };
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<RawClaims>(token, &key, &validation)
            .map_err(|e| Refused::Invalid(format!("{:?}", e.kind())))?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(Refused::EmptySubject);
        }
        Ok(Claims {
            sub: claims.sub,
            exp: claims.exp,
            iat: claims.iat,
        })
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

impl PublicKeys {
    /// The key a token names. An unknown `kid` reads the set again, at
    /// most once per `refetch_every` (keys rotated at the provider).
    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, Refused> {
        if let Some(key) = self.find(kid, alg)? {
            return Ok(key);
        }
        {
            let mut fetched = self.fetched.lock().await;
            // Another token may have fetched while this one waited.
            if let Some(key) = self.find(kid, alg)? {
                return Ok(key);
            }
            if fetched.elapsed() < self.refetch_every {
                return Err(Refused::UnknownKey);
            }
            *fetched = Instant::now();
            match read_keys(&self.source, &self.http).await {
                Ok(keys) => {
                    if let Ok(mut held) = self.keys.write() {
                        *held = keys;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the JWKS again"),
            }
        }
        self.find(kid, alg)?.ok_or(Refused::UnknownKey)
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<Option<DecodingKey>, Refused> {
        let Ok(keys) = self.keys.read() else {
            return Ok(None);
        };
        let jwk = match kid {
            Some(kid) => keys.find(kid),
            // No kid: only unambiguous with a one-key set.
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        };
        let Some(jwk) = jwk else {
            return Ok(None);
        };
        if let Some(declared) = jwk.common.key_algorithm {
            // Both spell the JOSE name ("RS256", "EdDSA").
            if serde_json::to_value(declared).ok() != serde_json::to_value(alg).ok() {
                return Err(Refused::KeyMismatch(alg));
            }
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|_| Refused::KeyMismatch(alg))?;
        // An `oct` key in a public set never verifies anything, and an RSA
        // key never an EC token.
        if key.family() != alg.family() || is_hmac(alg) {
            return Err(Refused::KeyMismatch(alg));
        }
        Ok(Some(key))
    }
}

async fn read_keys(source: &KeySource, http: &reqwest::Client) -> anyhow::Result<JwkSet> {
    let text = match source {
        KeySource::File(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the JWKS {}", path.display()))?,
        KeySource::Url(url) => http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("fetching the JWKS {url}"))?
            .text()
            .await
            .with_context(|| format!("reading the JWKS {url}"))?,
    };
    // Keys of types jsonwebtoken does not know are skipped, not fatal: a
    // provider may publish an encryption key next to its signing keys.
    let value: serde_json::Value = serde_json::from_str(&text).context("the JWKS is not JSON")?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .context("the JWKS has no \"keys\" array")?
        .iter()
        .filter_map(|k| serde_json::from_value(k.clone()).ok())
        .collect();
    Ok(JwkSet { keys })
}

#[cfg(test)]
impl Verifier {
    /// A verifier over keys held in memory (the unit tests').
    pub fn for_tests(
        hmac_secret: Option<&[u8]>,
        jwks_file: Option<PathBuf>,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Self {
        let public = jwks_file.map(|path| {
            let keys = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            PublicKeys {
                source: KeySource::File(path),
                keys: RwLock::new(keys),
                // Long ago: the first unknown kid reads the file again.
                fetched: tokio::sync::Mutex::new(
                    Instant::now()
                        .checked_sub(JWKS_REFETCH_EVERY * 2)
                        .unwrap_or_else(Instant::now),
                ),
                refetch_every: JWKS_REFETCH_EVERY,
                http: reqwest::Client::new(),
            }
        });
        Self {
            hmac: hmac_secret.map(|s| DecodingKey::from_secret(s).unwrap()),
            public,
            issuer: issuer.map(str::to_string),
            audience: audience.map(str::to_string),
            leeway_secs: 30,
        }
    }
}

#[cfg(test)]
mod tests;
