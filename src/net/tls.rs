//! The TLS server configuration: the certificate chain and key of
//! `tls-cert` and `tls-key`, TLS 1.2 and 1.3 (RFC 8314 §4.1 asks for 1.2 or
//! later), built once into an `Arc<ServerConfig>` that every session shares
//! and that SIGHUP rebuilds.
//!
//! When both files are missing, a self-signed certificate for the
//! configured host name (and localhost, 127.0.0.1, ::1) is created, so that
//! a new installation speaks TLS at once; clients will warn about it until
//! it is replaced by a real one. When only one of them is missing, that is
//! an error: making up the other would silently replace a real certificate.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::Config;

/// How long a process that lost the race to create the self-signed
/// certificate waits for the winner to finish writing it (inetd sessions
/// starting together on a new installation).
const CREATE_RACE_WAIT: Duration = Duration::from_secs(5);

/// Builds the TLS config from the files the config names, creating a
/// self-signed certificate first when both are missing.
///
/// `owner`: when the files are created, they are given to this uid and gid
/// (the `user` that the server will run as, so that a reload after the
/// switch can still read the key).
pub fn load(config: &Config, owner: Option<(u32, u32)>) -> Result<Arc<ServerConfig>, String> {
    let (cert, key) = (&config.tls_cert, &config.tls_key);
    if !cert.exists() && key.exists() && just_created(key) {
        // Another process is creating the pair right now: the key is
        // linked into place before the certificate is renamed there.
        wait_for(cert);
    }
    match (cert.exists(), key.exists()) {
        (false, false) => create_self_signed(config, owner)?,
        (true, false) => {
            return Err(format!(
                "tls-key {} is missing but tls-cert {} exists: install the key that belongs to the certificate \
                 (or remove both to have a self-signed pair created)",
                key.display(),
                cert.display()
            ))
        }
        (false, true) => {
            return Err(format!(
                "tls-cert {} is missing but tls-key {} exists: install the certificate that belongs to the key \
                 (or remove both to have a self-signed pair created)",
                cert.display(),
                key.display()
            ))
        }
        (true, true) => {}
    }
    from_files(cert, key)
}

/// The server config from a PEM certificate chain and a PEM key (PKCS#8,
/// PKCS#1 RSA or SEC1 EC).
pub fn from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let cert_pem = fs::read(cert).map_err(|e| format!("tls-cert {}: {e}", cert.display()))?;
    let key_pem = fs::read(key).map_err(|e| format!("tls-key {}: {e}", key.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("tls-cert {}: no CERTIFICATE in the file", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("tls-key {}: no PRIVATE KEY (PKCS#8, RSA or EC) in the file", key.display())
        }
        e => format!("tls-key {}: {e}", key.display()),
    })?;
    build(chain, key_der).map_err(|e| format!("tls-cert {} and tls-key {}: {e}", cert.display(), key.display()))
}

fn build(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Writes a new self-signed certificate and its key where the config
/// says, creating the directories. The key is written first (mode 0600)
/// and linked into place, so that of several processes doing this at
/// once exactly one pair wins.
fn create_self_signed(config: &Config, owner: Option<(u32, u32)>) -> Result<(), String> {
    let (cert_path, key_path) = (&config.tls_cert, &config.tls_key);
    let (cert_pem, key_pem) = generate(&config.hostname)?;
    for path in [cert_path, key_path] {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    static SERIAL: AtomicU32 = AtomicU32::new(0);
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    let tmp = |p: &Path| -> PathBuf {
        let mut name = p.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".new{}-{serial}", std::process::id()));
        p.with_file_name(name)
    };
    let (key_tmp, cert_tmp) = (tmp(key_path), tmp(cert_path));
    let written = write_new(&key_tmp, key_pem.as_bytes(), 0o600, owner)
        .and_then(|()| write_new(&cert_tmp, cert_pem.as_bytes(), 0o644, owner));
    if let Err(e) = written {
        let _ = fs::remove_file(&key_tmp);
        let _ = fs::remove_file(&cert_tmp);
        return Err(format!("cannot write a self-signed certificate to {}: {e}", cert_path.display()));
    }
    // link() fails if the key appeared meanwhile: then another process won.
    let won = fs::hard_link(&key_tmp, key_path);
    let _ = fs::remove_file(&key_tmp);
    match won {
        Ok(()) => {
            let renamed = fs::rename(&cert_tmp, cert_path);
            if let Err(e) = renamed {
                let _ = fs::remove_file(&cert_tmp);
                return Err(format!("cannot write {}: {e}", cert_path.display()));
            }
            info!(
                "tls generated self-signed certificate path={} key={} host={} (replace it with a real one)",
                cert_path.display(),
                key_path.display(),
                config.hostname
            );
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&cert_tmp);
            wait_for(cert_path);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&cert_tmp);
            Err(format!("cannot write {}: {e}", key_path.display()))
        }
    }
}

fn just_created(path: &Path) -> bool {
    let modified = fs::metadata(path).and_then(|m| m.modified());
    modified.is_ok_and(|t| t.elapsed().is_ok_and(|age| age < CREATE_RACE_WAIT))
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + CREATE_RACE_WAIT;
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_new(path: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// A self-signed certificate (PEM) and its key (PEM, PKCS#8) for `host`,
/// localhost and the loopback addresses.
fn generate(host: &str) -> Result<(String, String), String> {
    let mut names = vec![host.to_string()];
    for n in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|h| h == n) {
            names.push(n.to_string());
        }
    }
    let fail = |e: rcgen::Error| format!("cannot make a self-signed certificate for {host}: {e}");
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(names).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, host);
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "postroom self-signed");
    let cert = params.self_signed(&key).map_err(fail)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A server config with a fresh self-signed certificate, for unit tests.
#[cfg(test)]
pub(crate) fn self_signed_for_tests() -> Arc<ServerConfig> {
    pair_for_tests().0
}

/// A server config with a new self-signed certificate for localhost, and
/// a client config that trusts it alone.
#[cfg(test)]
pub(crate) fn pair_for_tests() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
    let (cert, key) = generate("localhost").unwrap();
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in &chain {
        roots.add(c.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (build(chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()).unwrap(), Arc::new(client))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config_in(dir: &Path) -> Config {
        let mut c = Config::default_for(&dir.join("postroom.conf"));
        c.hostname = "mail.example.org".to_string();
        c
    }

    #[test]
    fn creates_a_self_signed_pair_when_both_are_missing() {
        let dir = tempfile::tempdir().unwrap();
        let c = config_in(dir.path());
        load(&c, None).unwrap();
        let mode = fs::metadata(&c.tls_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let cert = fs::read_to_string(&c.tls_cert).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        // Loads again as it is, without making a new one.
        load(&c, None).unwrap();
        assert_eq!(fs::read_to_string(&c.tls_cert).unwrap(), cert);
        let leftovers: Vec<_> = fs::read_dir(c.tls_cert.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 2, "no temporary files left");
    }

    #[test]
    fn one_file_missing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = config_in(dir.path());
        load(&c, None).unwrap();
        fs::remove_file(&c.tls_key).unwrap();
        let e = load(&c, None).unwrap_err();
        assert!(e.contains("tls-key") && e.contains("is missing"), "{e}");
        assert!(c.tls_cert.exists(), "the certificate is left alone");
    }

    #[test]
    fn bad_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let c = config_in(dir.path());
        load(&c, None).unwrap();
        fs::write(&c.tls_key, "not a key\n").unwrap();
        let e = load(&c, None).unwrap_err();
        assert!(e.contains("no PRIVATE KEY"), "{e}");
        fs::write(&c.tls_cert, "").unwrap();
        let e = load(&c, None).unwrap_err();
        assert!(e.contains("no CERTIFICATE"), "{e}");
    }

    #[test]
    fn mismatched_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = config_in(dir.path());
        load(&c, None).unwrap();
        let (_, other_key) = generate("other").unwrap();
        fs::write(&c.tls_key, other_key).unwrap();
        assert!(load(&c, None).is_err());
    }

    #[test]
    fn racing_creators_agree_on_one_pair() {
        let dir = tempfile::tempdir().unwrap();
        let c = config_in(dir.path());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || create_self_signed(&c, None))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        from_files(&c.tls_cert, &c.tls_key).unwrap();
    }
}
