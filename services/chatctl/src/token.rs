//! `chatctl token`: a JWT for `GATEWAY_AUTH=jwt`, signed with the gateway's
//! HMAC secret (`GATEWAY_JWT_HMAC_SECRET_FILE`; `just up --auth jwt` makes
//! one in run/credentials). For development and tests: a real app's login
//! mints its own tokens.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The user the token names (`sub`).
    #[arg(long)]
    pub sub: String,
    /// How long it is valid: `90s`, `30m`, `1h`, `7d`, or seconds.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The HMAC secret the gateways verify with.
    #[arg(
        long,
        env = "GATEWAY_JWT_HMAC_SECRET_FILE",
        default_value = "run/credentials/jwt-hmac.key"
    )]
    pub secret_file: PathBuf,
    /// `iss`, for gateways that check it (GATEWAY_JWT_ISSUER).
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// `aud`, for gateways that check it (GATEWAY_JWT_AUDIENCE).
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub audience: Option<String>,
}

/// `90s`, `30m`, `1h`, `7d` or a number of seconds.
pub fn parse_ttl(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => raw.split_at(i),
        None => (raw, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("not a duration: {raw:?} (e.g. 90s, 30m, 1h, 7d)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("unknown unit in {raw:?} (s, m, h or d)")),
    };
    if secs == 0 {
        return Err("the ttl must be more than 0".into());
    }
    Ok(Duration::from_secs(secs))
}

/// The signed token.
pub fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    let secret = std::fs::read(&args.secret_file)
        .with_context(|| format!("reading the HMAC secret {}", args.secret_file.display()))?;
    // The gateway trims the file the same way.
    let secret = String::from_utf8_lossy(&secret).trim().as_bytes().to_vec();
    let key = EncodingKey::from_secret(&secret).context("the HMAC secret")?;
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = json!({"sub": args.sub, "iat": now, "exp": now + args.ttl.as_secs()});
    if let Some(issuer) = &args.issuer {
        claims["iss"] = json!(issuer);
    }
    if let Some(audience) = &args.audience {
        claims["aud"] = json!(audience);
    }
    encode(&Header::new(Algorithm::HS256), &claims, &key).context("signing the token")
}

pub fn run(args: &TokenArgs) -> anyhow::Result<()> {
    println!("{}", mint(args)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_read_as_people_write_them() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_ttl("45"), Ok(Duration::from_secs(45)));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("soon").is_err());
    }

    #[test]
    fn a_minted_token_names_its_user_and_expires_after_its_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, "0123456789abcdef0123456789abcdef\n").unwrap();
        let args = TokenArgs {
            sub: "alice".into(),
            ttl: Duration::from_secs(3600),
            secret_file,
            issuer: None,
            audience: None,
        };
        let token = mint(&args).unwrap();
        let key =
            jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).unwrap();
        assert_eq!(data.claims["sub"], "alice");
        let exp = data.claims["exp"].as_u64().unwrap();
        let iat = data.claims["iat"].as_u64().unwrap();
        assert_eq!(exp - iat, 3600);
    }
}
