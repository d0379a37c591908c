//! TLS for an admission webhook a test registers with a real kube-apiserver: a CA the test makes
//! (the webhook configuration's `caBundle`) and a serving certificate for `127.0.0.1` from it,
//! written to a temporary directory where the webhook server reads (and reloads) them.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A CA and a serving certificate for `127.0.0.1`, written to a temporary directory.
pub struct WebhookTls {
    /// The CA's PEM (the webhook configuration's `caBundle`).
    pub ca_pem: String,
    /// The serving certificate file.
    pub cert_file: PathBuf,
    /// Its key file.
    pub key_file: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for WebhookTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WebhookTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl WebhookTls {
    /// A new CA, and a serving certificate from it.
    pub fn new() -> WebhookTls {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a CA key"))
            .expect("the CA");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let tls = WebhookTls {
            ca_pem: issuer.pem(),
            cert_file: dir.path().join("tls.crt"),
            key_file: dir.path().join("tls.key"),
            issuer,
            _dir: dir,
        };
        tls.issue();
        tls
    }

    /// Writes a fresh serving certificate and key over the files.
    pub fn issue(&self) {
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("serving params");
        let key = KeyPair::generate().expect("a serving key");
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("the serving certificate");
        std::fs::write(&self.key_file, key.serialize_pem()).expect("writing the key");
        std::fs::write(&self.cert_file, certificate.pem()).expect("writing the certificate");
    }
}

impl Default for WebhookTls {
    fn default() -> Self {
        WebhookTls::new()
    }
}
