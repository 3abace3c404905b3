//! Certificates made by a test (rcgen): a certificate authority of its own, and server and client
//! certificates it signs, as PEM files.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::temp_file;

/// A certificate authority made for one test.
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// Its certificate, as a PEM file.
    pub file: PathBuf,
}

/// A certificate and its key, as PEM files.
pub(crate) struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub(crate) fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let file = temp_file(&format!("{name}-ca.pem"), &issuer.pem());
        TestCa { issuer, file }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub(crate) fn server(&self) -> Leaf {
        self.leaf(ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate.
    pub(crate) fn client(&self) -> Leaf {
        self.leaf(ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "leaf");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: temp_file("cert.pem", &cert.pem()),
            key: temp_file("key.pem", &key.serialize_pem()),
        }
    }

    /// Rewrites `leaf`'s files with a new server certificate signed by this CA.
    pub(crate) fn reissue_into(&self, leaf: &Leaf) {
        let fresh = self.server();
        std::fs::copy(&fresh.cert, &leaf.cert).unwrap();
        std::fs::copy(&fresh.key, &leaf.key).unwrap();
    }
}
