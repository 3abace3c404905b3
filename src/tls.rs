//! TLS for the listeners and extra trust for the upstream: PEM files loaded into rustls (ring).
//!
//! A listener's [`ServerTls`] holds its current `rustls::ServerConfig` behind a lock; every accepted
//! connection takes the config current at that moment, and [`ServerTls::reload`] reads the files
//! again and swaps the whole config in (certificate, key and client CA alike), so a renewed
//! certificate applies to new connections while open ones keep theirs. A reload that fails keeps
//! the config in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

/// The PEM files of one listener.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs (mTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// Why a PEM file, or the certificate and key together, cannot be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read a private key from {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("cannot read certificates from {path}: {source}")]
    Certificates {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds an unusable CA certificate: {source}")]
    Ca {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot use {path} as client CA: {source}")]
    ClientCa {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    /// The crypto provider offers no protocol version rustls accepts.
    #[error(transparent)]
    Protocols(rustls::Error),
    #[error("{cert} and {key} do not make a usable certificate: {source}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// A listener's TLS, reloadable.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl ServerTls {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
        let config = build(&files)?;
        Ok(Arc::new(ServerTls {
            files,
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// Reads the files again and uses them for the connections accepted from now on. On error
    /// nothing changes, and the error comes as text, as this method has always given it.
    pub fn reload(&self) -> Result<(), String> {
        let config = self.prepare().map_err(|e| e.to_string())?;
        self.install(config);
        Ok(())
    }

    /// Reads the files again into a config for [`ServerTls::install`]; nothing changes yet.
    pub fn prepare(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        build(&self.files).map(Arc::new)
    }

    /// Uses `config` for the connections accepted from now on.
    pub fn install(&self, config: Arc<rustls::ServerConfig>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
    }

    /// An acceptor with the config current now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        TlsAcceptor::from(config)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let chain = read_certs(&files.cert)?;
    let key = read(&files.key).and_then(|pem| {
        PrivateKeyDer::from_pem_slice(&pem).map_err(|source| TlsError::Key {
            path: files.key.clone(),
            source,
        })
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = roots_from(ca, RootCertStore::empty())?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|source| TlsError::ClientCa {
                    path: ca.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Pair {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    // h2 when the client offers it; the connection builder serves whichever was negotiated.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A PEM file, by the rules of [`crate::files`] (a regular file of at most 64 KiB).
fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::files::read_limited(path, crate::files::SMALL_FILE_MAX).map_err(|source| {
        TlsError::Read {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Every certificate of a PEM file; none is an error.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Certificates {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// `roots` with the CA certificates of a PEM file added.
pub(crate) fn roots_from(path: &Path, mut roots: RootCertStore) -> Result<RootCertStore, TlsError> {
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::Ca {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

/// The public web roots, plus the CAs of `ca_file` when set (a network that inspects TLS).
pub(crate) fn upstream_roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    match ca_file {
        // The upstream client takes its errors as text.
        Some(path) => roots_from(path, roots).map_err(|e| e.to_string()),
        None => Ok(roots),
    }
}

/// The listeners' TLS, when configured; [`ServerTls::reload`] rereads a listener's files.
#[derive(Clone, Default)]
pub struct ListenerTls {
    pub listen: Option<Arc<ServerTls>>,
    pub admin: Option<Arc<ServerTls>>,
}
