//! The NATS credentials of one deployment, generated into a folder on first
//! start and reused after (README, "NATS access"):
//!
//! - an nkey per [`Role`] (`gateway.nk`, `worker.nk`, `ops.nk`, mode 0600):
//!   the seed stays with the process that uses it; the server's
//!   configuration holds only public keys, so a leaked server
//!   configuration grants nothing;
//! - `authorization.conf`: those public keys with each role's permissions
//!   ([`protocol::access::permissions`]), included by the server's config;
//! - the password cluster routes authenticate with (`routes.password`);
//! - with TLS ([`tls`]): a local CA and the server's certificate.
//!
//! `chatctl credentials` (run by `just up` and `just cluster up`) and the
//! test harness (`stack`) call [`Credentials::ensure`].

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use protocol::access::{permissions, NatsAccess, Permissions, Role};

pub mod tls;

/// The user name cluster routes authenticate with.
pub const ROUTE_USER: &str = "route";

/// What went wrong, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an nkey user seed ({reason})")]
    BadSeed { path: PathBuf, reason: String },
    #[error("generating {what}: {reason}")]
    Generate { what: String, reason: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialsError + '_ {
    move |source| CredentialsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path`, readable by its owner only (0600), replacing
/// what was there.
pub fn write_private(path: &Path, contents: &str) -> Result<(), CredentialsError> {
    let partial = path.with_extension("partial");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io_error(&partial))?;
    // A file that existed keeps its mode through `open`: set it again.
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o600)).map_err(io_error(&partial))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&partial))?;
    fs::rename(&partial, path).map_err(io_error(path))
}

/// The credentials in one folder.
#[derive(Clone, Debug)]
pub struct Credentials {
    dir: PathBuf,
}

impl Credentials {
    /// Opens the credentials in `dir`, generating each one that is missing
    /// (the folder is created with mode 0700). Existing ones are kept, so
    /// running it again changes nothing.
    pub fn ensure(dir: &Path) -> Result<Self, CredentialsError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_error(dir))?;
        let credentials = Self {
            dir: dir.to_path_buf(),
        };
        for role in Role::ALL {
            credentials.ensure_seed(role.name())?;
        }
        let route_password = credentials.route_password_file();
        if !route_password.exists() {
            let bytes: [u8; 24] = rand::random();
            write_private(&route_password, &format!("{}\n", hex::encode(bytes)))?;
        }
        write_private(
            &credentials.authorization_file(),
            &credentials.authorization_conf()?,
        )?;
        Ok(credentials)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The nkey seed file of `role`.
    pub fn seed_file(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{}.nk", role.name()))
    }

    /// The server configuration block listing every role's public key and
    /// permissions (`include "authorization.conf"`).
    pub fn authorization_file(&self) -> PathBuf {
        self.dir.join("authorization.conf")
    }

    fn route_password_file(&self) -> PathBuf {
        self.dir.join("routes.password")
    }

    /// The public key (`U…`) of `role`.
    pub fn public_key(&self, role: Role) -> Result<String, CredentialsError> {
        public_key(&self.seed_file(role))
    }

    /// The password of the cluster routes.
    pub fn route_password(&self) -> Result<String, CredentialsError> {
        let path = self.route_password_file();
        let text = fs::read_to_string(&path).map_err(io_error(&path))?;
        Ok(text.trim().to_string())
    }

    /// How a process of `role` connects: its seed file, and the CA when the
    /// servers speak TLS.
    pub fn access(&self, role: Role, tls: Option<&tls::TlsFiles>) -> NatsAccess {
        NatsAccess {
            nats_nkey_file: Some(self.seed_file(role)),
            nats_ca_file: tls.map(|t| t.ca_cert.clone()),
        }
    }

    /// The `authorization { users: [...] }` block of the server config.
    pub fn authorization_conf(&self) -> Result<String, CredentialsError> {
        self.authorization_conf_with(&[])
    }

    /// [`Credentials::authorization_conf`] with further users: a name (its
    /// seed is `<name>.nk` here, see [`Credentials::ensure_seed`]) and
    /// what it may do. The test harness adds its own this way; `just up`
    /// adds none.
    pub fn authorization_conf_with(
        &self,
        extra: &[(&str, Permissions)],
    ) -> Result<String, CredentialsError> {
        let mut out = String::from(
            "# Generated by `chatctl credentials` from protocol::access: one nkey per\n\
             # role with the least it needs (README, \"NATS access\"). Do not edit.\n\
             authorization {\n  users: [\n",
        );
        let roles = Role::ALL
            .iter()
            .map(|role| (role.name(), self.seed_file(*role), permissions(*role)));
        let others = extra
            .iter()
            .map(|(name, p)| (*name, self.dir.join(format!("{name}.nk")), p.clone()));
        for (name, seed, p) in roles.chain(others) {
            out.push_str(&format!(
                "    # {name}\n    {{ nkey: \"{}\", permissions: {{\n      publish: {{ allow: {} }}\n      subscribe: {{ allow: {} }}\n    }} }}\n",
                public_key(&seed)?,
                quoted_list(&p.publish),
                quoted_list(&p.subscribe),
            ));
        }
        out.push_str("  ]\n}\n");
        Ok(out)
    }

    /// The seed file `<name>.nk`, generated when missing.
    pub fn ensure_seed(&self, name: &str) -> Result<PathBuf, CredentialsError> {
        let path = self.dir.join(format!("{name}.nk"));
        if !path.exists() {
            let pair = nkeys::KeyPair::new_user();
            let seed = pair.seed().map_err(|e| CredentialsError::Generate {
                what: format!("the {name} nkey"),
                reason: e.to_string(),
            })?;
            write_private(&path, &format!("{seed}\n"))?;
        }
        Ok(path)
    }

    /// The `authorization` block inside a node's `cluster { }`: routes
    /// from other nodes must present the routes' password.
    pub fn route_authorization_conf(&self) -> Result<String, CredentialsError> {
        Ok(format!(
            "authorization {{ user: \"{ROUTE_USER}\", password: \"{}\", timeout: 2 }}",
            self.route_password()?
        ))
    }

    /// The URL of a route to `host_port`, with the routes' credentials.
    pub fn route_url(&self, host_port: &str) -> Result<String, CredentialsError> {
        Ok(format!(
            "nats-route://{ROUTE_USER}:{}@{host_port}",
            self.route_password()?
        ))
    }
}

/// Everything a server and its clients need: the credentials, and the TLS
/// files when the connections are encrypted.
#[derive(Clone, Debug)]
pub struct NatsSecurity {
    pub credentials: Credentials,
    pub tls: Option<tls::TlsFiles>,
}

impl NatsSecurity {
    /// The credentials in `dir` (generated when missing), with TLS files in
    /// the same folder covering `tls_names` when `tls` is on.
    pub fn ensure(dir: &Path, tls: bool, tls_names: &[String]) -> Result<Self, CredentialsError> {
        let credentials = Credentials::ensure(dir)?;
        let tls = if tls {
            Some(tls::ensure(dir, tls_names)?)
        } else {
            None
        };
        Ok(Self { credentials, tls })
    }

    /// How a process of `role` connects.
    pub fn access(&self, role: Role) -> NatsAccess {
        self.credentials.access(role, self.tls.as_ref())
    }

    /// The top-level part of a server's configuration: who may connect
    /// with which permissions, and TLS for clients when on.
    pub fn server_conf(&self) -> Result<String, CredentialsError> {
        self.server_conf_with(&[])
    }

    /// [`NatsSecurity::server_conf`] with further users
    /// ([`Credentials::authorization_conf_with`]).
    pub fn server_conf_with(
        &self,
        extra: &[(&str, Permissions)],
    ) -> Result<String, CredentialsError> {
        let mut conf = self.credentials.authorization_conf_with(extra)?;
        if let Some(tls) = &self.tls {
            conf.push_str(&tls.client_conf());
        }
        Ok(conf)
    }

    /// The part of a node's `cluster { }` block: the routes' password, and
    /// verified TLS between nodes when on.
    pub fn route_conf(&self) -> Result<String, CredentialsError> {
        let mut conf = self.credentials.route_authorization_conf()?;
        if let Some(tls) = &self.tls {
            conf.push_str("\n  ");
            conf.push_str(&tls.route_conf());
        }
        Ok(conf)
    }
}

/// The public key of the seed in `path`.
fn public_key(path: &Path) -> Result<String, CredentialsError> {
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    let pair = nkeys::KeyPair::from_seed(text.trim()).map_err(|e| CredentialsError::BadSeed {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(pair.public_key())
}

/// `["a", "b"]` in the server configuration's syntax.
fn quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("nats");
        let first = Credentials::ensure(&at).unwrap();
        let keys: Vec<String> = Role::ALL
            .iter()
            .map(|r| first.public_key(*r).unwrap())
            .collect();
        assert!(keys.iter().all(|k| k.starts_with('U')));
        assert_eq!(
            fs::metadata(&at).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for role in Role::ALL {
            let mode = fs::metadata(first.seed_file(role))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{role}");
        }
        let password = first.route_password().unwrap();
        assert_eq!(password.len(), 48);

        let again = Credentials::ensure(&at).unwrap();
        let keys_again: Vec<String> = Role::ALL
            .iter()
            .map(|r| again.public_key(*r).unwrap())
            .collect();
        assert_eq!(keys, keys_again);
        assert_eq!(again.route_password().unwrap(), password);
    }

    #[test]
    fn the_server_block_holds_public_keys_and_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials::ensure(dir.path()).unwrap();
        let conf = fs::read_to_string(credentials.authorization_file()).unwrap();
        for role in Role::ALL {
            assert!(conf.contains(&credentials.public_key(role).unwrap()));
            let seed = fs::read_to_string(credentials.seed_file(role)).unwrap();
            assert!(!conf.contains(seed.trim()), "{role}'s seed in the config");
        }
        assert!(!conf.contains(&credentials.route_password().unwrap()));
        assert!(conf.contains("\"chat.live.*\""));
    }
}
