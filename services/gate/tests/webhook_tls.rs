//! The webhook's serving certificate is replaced without a restart when its files change, a pair
//! that does not load keeps the previous one, and an AdmissionReview over the limit or of the
//! wrong kind is refused.

mod gate_support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use countersign_gate::tls::{LoadCertificateError, ReloadingCertificate, serve_https};
use countersign_test_support::wait;
use gate_support::WebhookTls;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(20);

/// The DER of the leaf the server at `port` presents, trusting `ca_pem`, and its answer to GET /.
async fn served_leaf(port: u16, ca_pem: &str) -> (Vec<u8>, String) {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), stream)
        .await
        .expect("a TLS connection the CA vouches for");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: gate\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    (leaf, answer)
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let tls = WebhookTls::new();
    let certificate = ReloadingCertificate::load(&tls.cert_file, &tls.key_file).unwrap();
    let config = Arc::new(certificate.server_config().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let token = CancellationToken::new();
    let router = Router::new().route("/", get(|| async { "gate" }));
    let server = tokio::spawn(serve_https(listener, router, config, token.clone()));
    let reloader =
        tokio::spawn(Arc::clone(&certificate).watch(Duration::from_millis(50), token.clone()));

    let (first, answer) = served_leaf(port, &tls.ca_pem).await;
    assert!(answer.ends_with("gate"), "{answer}");

    // A half-written rotation (a key that is not the certificate's) keeps the previous pair.
    std::fs::write(
        &tls.key_file,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    assert!(matches!(
        certificate.reload_if_changed(),
        Err(LoadCertificateError::Mismatch(_))
    ));
    assert_eq!(served_leaf(port, &tls.ca_pem).await.0, first);

    tls.issue();
    let rotated = wait::until("the new certificate is served", TIMEOUT, || async {
        let (leaf, _) = served_leaf(port, &tls.ca_pem).await;
        (leaf != first).then_some(leaf)
    })
    .await
    .unwrap();
    assert_eq!(
        rotated,
        CertificateDer::from_pem_file(&tls.cert_file)
            .unwrap()
            .to_vec()
    );

    token.cancel();
    server.await.unwrap();
    reloader.await.unwrap();
}

#[test]
fn files_that_are_not_a_certificate_and_key_are_refused() {
    let tls = WebhookTls::new();
    std::fs::write(&tls.cert_file, "not PEM").unwrap();
    assert!(matches!(
        ReloadingCertificate::load(&tls.cert_file, &tls.key_file),
        Err(LoadCertificateError::NoCertificate(_))
    ));
    let missing = tls.cert_file.with_file_name("absent.crt");
    assert!(matches!(
        ReloadingCertificate::load(&missing, &tls.key_file),
        Err(LoadCertificateError::Read(_))
    ));
}
