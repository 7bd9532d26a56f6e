//! TLS for NATS (`NATS_TLS=1 just up`, and the cluster): a local CA and one
//! server certificate signed by it, valid for every name and address the
//! nodes are reached at. Services trust the CA (`NATS_CA_FILE`) and verify
//! the server; cluster nodes present the same certificate on their routes
//! and verify each other's against the CA.
//!
//! The files are generated on first use and reused while they cover the
//! names asked for; a new name (another host address) issues them again.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::{io_error, write_private, CredentialsError};

/// Names every certificate covers: what a service on this machine dials.
pub const LOCAL_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// The PEM files of a deployment's TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA clients verify the server with (not secret).
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    /// The server's private key (0600).
    pub server_key: PathBuf,
}

impl TlsFiles {
    fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
        }
    }

    /// The `tls { }` block of a server: clients must speak TLS; who they
    /// are is their nkey's business.
    pub fn client_conf(&self) -> String {
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 2\n}}\n",
            self.server_cert.display(),
            self.server_key.display()
        )
    }

    /// The `tls { }` block inside `cluster { }`: a route must present a
    /// certificate of the same CA (`verify`), in both directions.
    pub fn route_conf(&self) -> String {
        format!(
            "tls {{\n    cert_file: \"{}\"\n    key_file: \"{}\"\n    ca_file: \"{}\"\n    verify: true\n    timeout: 2\n  }}",
            self.server_cert.display(),
            self.server_key.display(),
            self.ca_cert.display()
        )
    }
}

fn names_file(dir: &Path) -> PathBuf {
    dir.join("tls-names")
}

fn generation_failed(what: &str) -> impl FnOnce(rcgen::Error) -> CredentialsError + '_ {
    move |e| CredentialsError::Generate {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// The CA and a server certificate in `dir` covering [`LOCAL_NAMES`] and
/// `extra_names` (host addresses or DNS names), issued now unless the
/// files there already cover them.
pub fn ensure(dir: &Path, extra_names: &[String]) -> Result<TlsFiles, CredentialsError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let files = TlsFiles::in_dir(dir);
    let mut names: Vec<String> = LOCAL_NAMES.iter().map(|n| n.to_string()).collect();
    for name in extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let covered: Vec<String> = fs::read_to_string(names_file(dir))
        .map(|text| text.lines().map(str::to_string).collect())
        .unwrap_or_default();
    let present = [&files.ca_cert, &files.server_cert, &files.server_key]
        .iter()
        .all(|p| p.exists());
    if present && names.iter().all(|n| covered.contains(n)) {
        return Ok(files);
    }
    let mut all = covered;
    for name in names {
        if !all.contains(&name) {
            all.push(name);
        }
    }
    issue(&files, &all)?;
    write_private(&names_file(dir), &(all.join("\n") + "\n"))?;
    Ok(files)
}

/// Issues a new CA and a server certificate for `names`.
fn issue(files: &TlsFiles, names: &[String]) -> Result<(), CredentialsError> {
    let ca_key = KeyPair::generate().map_err(generation_failed("the CA key"))?;
    let mut ca =
        CertificateParams::new(Vec::<String>::new()).map_err(generation_failed("the CA"))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "chat backend local NATS CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(generation_failed("the CA certificate"))?;

    let server_key = KeyPair::generate().map_err(generation_failed("the server key"))?;
    let mut server =
        CertificateParams::new(names.to_vec()).map_err(generation_failed("the server names"))?;
    server
        .distinguished_name
        .push(DnType::CommonName, "chat backend NATS");
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Server for clients, and client too: a node dials its routes with it.
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let issuer = Issuer::new(ca, ca_key);
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .map_err(generation_failed("the server certificate"))?;

    write_private(&files.server_key, &server_key.serialize_pem())?;
    write_private(&files.server_cert, &server_cert.pem())?;
    write_private(&files.ca_cert, &ca_cert.pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_once_and_again_only_for_a_new_name() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path(), &[]).unwrap();
        let ca = fs::read_to_string(&first.ca_cert).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(fs::read_to_string(&first.server_key)
            .unwrap()
            .contains("PRIVATE KEY"));

        ensure(dir.path(), &["127.0.0.1".into()]).unwrap();
        assert_eq!(fs::read_to_string(&first.ca_cert).unwrap(), ca, "reused");

        ensure(dir.path(), &["10.77.0.2".into()]).unwrap();
        assert_ne!(fs::read_to_string(&first.ca_cert).unwrap(), ca, "reissued");
        let names = fs::read_to_string(names_file(dir.path())).unwrap();
        assert!(names.contains("10.77.0.2") && names.contains("localhost"));
    }
}
