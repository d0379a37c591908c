//! The HTTP client against local servers: plain HTTP (an axum server) and HTTPS (rustls with ring,
//! a certificate from a test CA), checking that TLS really verifies against the configured roots.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use countersign_runtime::http_client::{HttpClientOptions, TrustRoots, http_client};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn options() -> HttpClientOptions {
    HttpClientOptions::new().timeout(Duration::from_secs(10))
}

#[tokio::test]
async fn gets_a_local_plain_http_server() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a free port");
    let address = listener.local_addr().expect("the bound address");
    let router = axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" }));
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let client = http_client(options()).expect("a client");
    let response = client
        .get(format!("http://{address}/hello"))
        .send()
        .await
        .expect("a response");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.text().await.expect("a body"), "hello");
    server.abort();
}

/// A test CA and a `localhost` certificate it issued.
struct TestPki {
    ca: CertificateDer<'static>,
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn test_pki() -> TestPki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a CA key"))
        .expect("a CA");
    let leaf_key = KeyPair::generate().expect("a leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca)
        .expect("a leaf certificate");
    TestPki {
        ca: ca.der().clone(),
        ca_pem: ca.pem(),
        chain: vec![leaf.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

/// Serves one fixed HTTP/1.1 response over TLS to every connection.
async fn serve_https(pki: &TestPki) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(pki.chain.clone(), pki.key.clone_key())
    .expect("a server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a free port");
    let address = listener.local_addr().expect("the bound address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buffer = [0_u8; 1024];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match tls.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let response =
                    b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecure";
                let _ = tls.write_all(response).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    address
}

#[tokio::test]
async fn https_verifies_against_the_configured_roots() {
    let pki = test_pki();
    let address = serve_https(&pki).await;
    let url = format!("https://localhost:{}/", address.port());

    let trusting =
        http_client(options().roots(TrustRoots::Only(vec![pki.ca.clone()]))).expect("a client");
    let response = trusting
        .get(&url)
        .send()
        .await
        .expect("a verified TLS response");
    assert_eq!(response.text().await.expect("a body"), "secure");

    let also_native = http_client(options().roots(TrustRoots::NativeAnd(vec![pki.ca.clone()])))
        .expect("a client");
    assert!(also_native.get(&url).send().await.is_ok());

    // The system roots do not include the test CA: the handshake must fail.
    let native_only = http_client(options()).expect("a client");
    let error = native_only
        .get(&url)
        .send()
        .await
        .expect_err("an untrusted certificate");
    assert!(error.is_connect(), "{error:?}");
}

#[tokio::test]
async fn pem_roots_are_read() {
    let pki = test_pki();
    let certificates =
        TrustRoots::certificates_from_pem(pki.ca_pem.as_bytes()).expect("one certificate");
    assert_eq!(certificates, vec![pki.ca.clone()]);
}
