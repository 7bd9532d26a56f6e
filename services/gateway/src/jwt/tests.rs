//! Every refusal of `Verifier::verify`, with real tokens signed in the test
//! by keys made in the test (HS256, RS256, ES256, EdDSA).

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600, "iat": now()})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).unwrap()
}

/// A key pair of `alg`'s family, and its public JWK with `kid`.
fn key_pair(alg: Algorithm, kid: &str) -> (EncodingKey, Jwk) {
    let pem = match alg {
        Algorithm::RS256 => {
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap()
                .serialize_pem()
        }
        Algorithm::ES256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem(),
        Algorithm::EdDSA => String::new(),
        other => panic!("no key pair for {other:?}"),
    };
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        _ => {
            let pair = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
            EncodingKey::from_ed_der(pair.to_pkcs8v1().unwrap().as_ref())
        }
    };
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    (key, jwk)
}

struct Keys {
    _dir: tempfile::TempDir,
    path: PathBuf,
    rs: EncodingKey,
    es: EncodingKey,
    ed: EncodingKey,
    jwks: JwkSet,
}

fn public_keys() -> Keys {
    let (rs, rs_jwk) = key_pair(Algorithm::RS256, "rs");
    let (es, es_jwk) = key_pair(Algorithm::ES256, "es");
    let (ed, ed_jwk) = key_pair(Algorithm::EdDSA, "ed");
    let jwks = JwkSet {
        keys: vec![rs_jwk, es_jwk, ed_jwk],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, serde_json::to_string(&jwks).unwrap()).unwrap();
    Keys {
        _dir: dir,
        path,
        rs,
        es,
        ed,
        jwks,
    }
}

fn hmac_verifier() -> Verifier {
    Verifier::for_tests(Some(SECRET), None, None, None)
}

#[tokio::test]
async fn hmac_tokens_of_every_size_are_accepted() {
    let verifier = hmac_verifier();
    let key = EncodingKey::from_secret(SECRET).unwrap();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = sign(alg, None, &claims("alice"), &key);
        let verified = verifier.verify(&token).await.unwrap();
        assert_eq!(verified.sub, "alice");
        assert!(verified.iat.is_some());
    }
}

#[tokio::test]
async fn public_key_tokens_are_accepted_by_their_kid() {
    let keys = public_keys();
    let verifier = Verifier::for_tests(None, Some(keys.path.clone()), None, None);
    for (alg, kid, key) in [
        (Algorithm::RS256, "rs", &keys.rs),
        (Algorithm::ES256, "es", &keys.es),
        (Algorithm::EdDSA, "ed", &keys.ed),
    ] {
        let token = sign(alg, Some(kid), &claims("bob"), key);
        assert_eq!(verifier.verify(&token).await.unwrap().sub, "bob", "{alg:?}");
    }
}

#[tokio::test]
async fn alg_none_is_refused() {
    let verifier = hmac_verifier();
    let signed = sign(
        Algorithm::HS256,
        None,
        &claims("alice"),
        &EncodingKey::from_secret(SECRET).unwrap(),
    );
    let payload = signed.split('.').nth(1).unwrap();
    // {"alg":"none","typ":"JWT"}
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    assert!(matches!(
        verifier.verify(&unsigned).await,
        Err(Refused::Malformed(_))
    ));
}

#[tokio::test]
async fn an_hmac_token_is_refused_where_the_keys_are_public() {
    let keys = public_keys();
    let verifier = Verifier::for_tests(None, Some(keys.path.clone()), None, None);
    // Algorithm confusion: the public key (as published) used as an HMAC secret.
    let public = serde_json::to_vec(&keys.jwks.keys[0]).unwrap();
    for secret in [public.as_slice(), SECRET] {
        let token = sign(
            Algorithm::HS256,
            Some("rs"),
            &claims("mallory"),
            &EncodingKey::from_secret(secret).unwrap(),
        );
        assert_eq!(
            verifier.verify(&token).await,
            Err(Refused::Algorithm(Algorithm::HS256))
        );
    }
    // And the other way: a public-key token where only a secret is set.
    let token = sign(Algorithm::RS256, Some("rs"), &claims("mallory"), &keys.rs);
    assert_eq!(
        hmac_verifier().verify(&token).await,
        Err(Refused::Algorithm(Algorithm::RS256))
    );
}

#[tokio::test]
async fn a_key_not_in_the_set_is_refused() {
    let keys = public_keys();
    let verifier = Verifier::for_tests(None, Some(keys.path.clone()), None, None);
    let (stranger, _) = key_pair(Algorithm::ES256, "stranger");
    let unknown_kid = sign(
        Algorithm::ES256,
        Some("stranger"),
        &claims("eve"),
        &stranger,
    );
    assert_eq!(
        verifier.verify(&unknown_kid).await,
        Err(Refused::UnknownKey)
    );
    // A known kid, signed by another key.
    let forged = sign(Algorithm::ES256, Some("es"), &claims("eve"), &stranger);
    assert!(matches!(
        verifier.verify(&forged).await,
        Err(Refused::Invalid(_))
    ));
    // A known kid of another algorithm.
    let mismatched = sign(Algorithm::ES256, Some("rs"), &claims("eve"), &keys.es);
    assert_eq!(
        verifier.verify(&mismatched).await,
        Err(Refused::KeyMismatch(Algorithm::ES256))
    );
    // Several keys and no kid: none is guessed.
    let no_kid = sign(Algorithm::ES256, None, &claims("eve"), &keys.es);
    assert_eq!(verifier.verify(&no_kid).await, Err(Refused::UnknownKey));
}

#[tokio::test]
async fn an_unknown_kid_reads_the_set_again_at_most_once_a_minute() {
    let keys = public_keys();
    let verifier = Verifier::for_tests(None, Some(keys.path.clone()), None, None);
    // The provider rotates: a new key appears in the set.
    let (rotated, rotated_jwk) = key_pair(Algorithm::ES256, "rotated");
    let mut jwks = keys.jwks.clone();
    jwks.keys.push(rotated_jwk);
    std::fs::write(&keys.path, serde_json::to_string(&jwks).unwrap()).unwrap();
    let token = sign(
        Algorithm::ES256,
        Some("rotated"),
        &claims("carol"),
        &rotated,
    );
    assert_eq!(verifier.verify(&token).await.unwrap().sub, "carol");
    // Rotated again within the minute: not read again yet.
    let (again, again_jwk) = key_pair(Algorithm::ES256, "again");
    jwks.keys.push(again_jwk);
    std::fs::write(&keys.path, serde_json::to_string(&jwks).unwrap()).unwrap();
    let token = sign(Algorithm::ES256, Some("again"), &claims("carol"), &again);
    assert_eq!(verifier.verify(&token).await, Err(Refused::UnknownKey));
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused_beyond_the_leeway() {
    let verifier = hmac_verifier();
    let key = EncodingKey::from_secret(SECRET).unwrap();
    let token = |claims: Value| sign(Algorithm::HS256, None, &claims, &key);
    let expired = token(json!({"sub": "a", "exp": now() - 120}));
    assert_eq!(
        verifier.verify(&expired).await,
        Err(Refused::Invalid("ExpiredSignature".into()))
    );
    let within_leeway = token(json!({"sub": "a", "exp": now() - 5}));
    assert!(verifier.verify(&within_leeway).await.is_ok());
    let early = token(json!({"sub": "a", "exp": now() + 600, "nbf": now() + 120}));
    assert_eq!(
        verifier.verify(&early).await,
        Err(Refused::Invalid("ImmatureSignature".into()))
    );
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let verifier =
        Verifier::for_tests(Some(SECRET), None, Some("https://id.example"), Some("chat"));
    let key = EncodingKey::from_secret(SECRET).unwrap();
    let token = |iss: &str, aud: &str| {
        sign(
            Algorithm::HS256,
            None,
            &json!({"sub": "a", "exp": now() + 600, "iss": iss, "aud": aud}),
            &key,
        )
    };
    assert!(verifier
        .verify(&token("https://id.example", "chat"))
        .await
        .is_ok());
    assert_eq!(
        verifier
            .verify(&token("https://evil.example", "chat"))
            .await,
        Err(Refused::Invalid("InvalidIssuer".into()))
    );
    assert_eq!(
        verifier.verify(&token("https://id.example", "other")).await,
        Err(Refused::Invalid("InvalidAudience".into()))
    );
    let no_iss = sign(
        Algorithm::HS256,
        None,
        &json!({"sub": "a", "exp": now() + 600, "aud": "chat"}),
        &key,
    );
    assert!(verifier.verify(&no_iss).await.is_err());
}

#[tokio::test]
async fn sub_and_exp_are_required_and_size_is_bounded() {
    let verifier = hmac_verifier();
    let key = EncodingKey::from_secret(SECRET).unwrap();
    for claims in [
        json!({"exp": now() + 600}),
        json!({"sub": "a"}),
        json!({"sub": "", "exp": now() + 600}),
    ] {
        let token = sign(Algorithm::HS256, None, &claims, &key);
        assert!(verifier.verify(&token).await.is_err(), "{claims}");
    }
    let big = sign(
        Algorithm::HS256,
        None,
        &json!({"sub": "a", "exp": now() + 600, "pad": "x".repeat(MAX_TOKEN_BYTES)}),
        &key,
    );
    assert_eq!(verifier.verify(&big).await, Err(Refused::TooLarge));
    assert!(matches!(
        verifier.verify("not a token").await,
        Err(Refused::Malformed(_))
    ));
}
