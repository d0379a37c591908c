//! RFC 3161 timestamps from the real timestamp authority (sigstore's, with its in-memory signer):
//! our request is granted, the response verifies against the chain the TSA serves, and every
//! check refuses a tampered response or token with its own reason.

use std::time::Duration;

use chrono::Utc;
use cms::signed_data::SignedData;
use countersign_identity::timestamp::{
    TimestampAuthorityChain, TimestampError, TimestampRequest, verify_response,
    verify_stored_response,
};
use countersign_test_support::timestamp_authority::TimestampAuthority;
use der::asn1::{Int, OctetString};
use der::oid::ObjectIdentifier;
use der::{Any, Decode, Encode};
use x509_tsp::{TimeStampResp, TstInfo};

const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");

/// A granted response over `message`, from the real TSA, with the request that asked for it.
async fn granted(authority: &TimestampAuthority, message: &[u8]) -> (TimestampRequest, Vec<u8>) {
    let request = TimestampRequest::new(message).unwrap();
    let (status, body) = authority.post_request(request.der()).await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    (request, body)
}

fn chain_of(authority: &TimestampAuthority) -> TimestampAuthorityChain {
    TimestampAuthorityChain::from_pem(authority.chain_pem()).unwrap()
}

/// Re-encodes a response after `edit` changed its token's SignedData.
fn with_signed_data(response: &[u8], edit: impl FnOnce(&mut SignedData)) -> Vec<u8> {
    let mut decoded = TimeStampResp::from_der(response).unwrap();
    let token = decoded.time_stamp_token.as_mut().unwrap();
    let mut signed_data = token.content.decode_as::<SignedData>().unwrap();
    edit(&mut signed_data);
    token.content = Any::encode_from(&signed_data).unwrap();
    decoded.to_der().unwrap()
}

/// Re-encodes a response after `edit` changed its TSTInfo (leaving the signature as it was).
fn with_tst_info(response: &[u8], edit: impl FnOnce(&mut TstInfo)) -> Vec<u8> {
    with_signed_data(response, |signed_data| {
        let content = signed_data.encap_content_info.econtent.as_ref().unwrap();
        let octets = content.decode_as::<OctetString>().unwrap();
        let mut tst_info = TstInfo::from_der(octets.as_bytes()).unwrap();
        edit(&mut tst_info);
        let octets = OctetString::new(tst_info.to_der().unwrap()).unwrap();
        signed_data.encap_content_info.econtent = Some(Any::encode_from(&octets).unwrap());
    })
}

#[tokio::test]
async fn the_real_tsa_grants_a_timestamp_that_verifies_with_its_chain() {
    let authority = TimestampAuthority::start().await.unwrap();
    let chain = chain_of(&authority);
    let before = Utc::now() - chrono::Duration::seconds(5);
    let (request, response) = granted(&authority, b"the DSSE signature bytes").await;
    let verified = verify_response(&response, &request, &chain).unwrap();
    let after = Utc::now() + chrono::Duration::seconds(5);
    assert!(
        verified.gen_time() >= before && verified.gen_time() <= after,
        "genTime {} is the TSA's clock, now",
        verified.gen_time()
    );
    // The stored response verifies later, over the same bytes, without the nonce.
    assert_eq!(verified.response_der(), response.as_slice());
    let stored =
        verify_stored_response(verified.response_der(), b"the DSSE signature bytes", &chain)
            .unwrap();
    assert_eq!(stored.gen_time(), verified.gen_time());
}

#[tokio::test]
async fn a_token_over_other_bytes_is_refused() {
    let authority = TimestampAuthority::start().await.unwrap();
    let chain = chain_of(&authority);
    let (_, response) = granted(&authority, b"signed bytes").await;
    assert!(matches!(
        verify_stored_response(&response, b"other bytes", &chain),
        Err(TimestampError::ImprintMismatch)
    ));
}

#[tokio::test]
async fn a_response_to_another_request_is_refused_by_its_nonce() {
    let authority = TimestampAuthority::start().await.unwrap();
    let chain = chain_of(&authority);
    let (_, response) = granted(&authority, b"signed bytes").await;
    let other_request = TimestampRequest::new(b"signed bytes").unwrap();
    assert!(matches!(
        verify_response(&response, &other_request, &chain),
        Err(TimestampError::NonceMismatch)
    ));
}

#[tokio::test]
async fn a_response_that_is_not_granted_or_has_no_token_is_refused() {
    let authority = TimestampAuthority::start().await.unwrap();
    let chain = chain_of(&authority);
    let (request, response) = granted(&authority, b"signed bytes").await;

    let mut rejected = TimeStampResp::from_der(&response).unwrap();
    rejected.status.status = cmpv2::status::PkiStatus::Rejection;
    assert!(matches!(
        verify_response(&rejected.to_der().unwrap(), &request, &chain),
        Err(TimestampError::NotGranted { status: 2 })
    ));

    let mut tokenless = TimeStampResp::from_der(&response).unwrap();
    tokenless.time_stamp_token = None;
    assert!(matches!(
        verify_response(&tokenless.to_der().unwrap(), &request, &chain),
        Err(TimestampError::NoToken)
    ));
}

#[tokio::test]
async fn a_token_that_is_not_signed_data_holding_a_tst_info_is_refused() {
    let authority = TimestampAuthority::start().await.unwrap();
    let chain = chain_of(&authority);
    let (request, response) = granted(&authority, b"signed bytes").await;

    let mut not_signed_data = TimeStampResp::from_der(&response).unwrap();
    not_signed_data
        .time_stamp_token
        .as_mut()
        .unwrap()
        .content_type = ID_DATA;
    assert!(matches!(
        verify_response(&not_signed_data.to_der().unwrap(), &request, &chain),
        Err(TimestampError::NotSignedData)
    ));

    let other_content = with_signed_data(&response, |signed_data| {
        signed_data.encap_content_info.econtent_type = ID_DATA;
    });
    assert!(matches!(
        verify_response(&other_content, &request, &chain),
        Err(TimestampError::NotTstInfo)
    ));

    let no_content = with_signed_data(&response, |signed_data| {
        signed_data.encap_content_info.econtent = None;
    });
    assert!(matches!(
        verify_response(&no_content, &request, &chain),
        Err(TimestampError::NotTstInfo)
    ));
}

#[tokio::test]
async fn a_tst_info_changed_after_signing_is_refused_by_the_message_digest() {
    let authority = TimestampAuthority::start().await.unwrap();
    let chain = chain_of(&authority);
    let (request, response) = granted(&authority, b"signed bytes").await;
    let later_serial = with_tst_info(&response, |tst_info| {
        tst_info.serial_number = Int::new(&[0x01, 0x02, 0x03]).unwrap();
    });
    assert!(matches!(
        verify_response(&later_serial, &request, &chain),
        Err(TimestampError::MessageDigestMismatch)
    ));
}

#[tokio::test]
async fn a_changed_signature_or_missing_signed_attributes_are_refused() {
    let authority = TimestampAuthority::start().await.unwrap();
    let chain = chain_of(&authority);
    let (request, response) = granted(&authority, b"signed bytes").await;

    let flipped = with_signed_data(&response, |signed_data| {
        let mut signer_infos = signed_data.signer_infos.0.clone().into_vec();
        let signature = signer_infos[0].signature.as_bytes().to_vec();
        let mut changed = signature.clone();
        let last = changed.len() - 2;
        changed[last] ^= 0x01;
        signer_infos[0].signature = OctetString::new(changed).unwrap();
        signed_data.signer_infos = signer_infos.try_into().unwrap();
    });
    assert!(matches!(
        verify_response(&flipped, &request, &chain),
        Err(TimestampError::BadSignature)
    ));

    let unattributed = with_signed_data(&response, |signed_data| {
        let mut signer_infos = signed_data.signer_infos.0.clone().into_vec();
        signer_infos[0].signed_attrs = None;
        signed_data.signer_infos = signer_infos.try_into().unwrap();
    });
    assert!(matches!(
        verify_response(&unattributed, &request, &chain),
        Err(TimestampError::SignedAttributes)
    ));
}

#[tokio::test]
async fn a_token_with_two_signers_is_refused() {
    let authority = TimestampAuthority::start().await.unwrap();
    let chain = chain_of(&authority);
    let (request, response) = granted(&authority, b"signed bytes").await;
    let doubled = with_signed_data(&response, |signed_data| {
        let mut signer_infos = signed_data.signer_infos.0.clone().into_vec();
        let mut second = signer_infos[0].clone();
        second.signature = OctetString::new(vec![0x30, 0x00]).unwrap();
        signer_infos.push(second);
        signed_data.signer_infos = signer_infos.try_into().unwrap();
    });
    assert!(matches!(
        verify_response(&doubled, &request, &chain),
        Err(TimestampError::SignerCount { found: 2 })
    ));
}

#[tokio::test]
async fn another_authoritys_chain_refuses_the_token_and_a_missing_signer_is_named() {
    let (authority, other) = tokio::join!(TimestampAuthority::start(), TimestampAuthority::start());
    let (authority, other) = (authority.unwrap(), other.unwrap());
    let (request, response) = granted(&authority, b"signed bytes").await;

    // The token carries its signer's certificate, which does not chain to the other TSA's root.
    assert!(matches!(
        verify_response(&response, &request, &chain_of(&other)),
        Err(TimestampError::Untrusted(_))
    ));

    // Without certificates in the token, the signer comes from the configured chain: the
    // right chain has it, the other one does not.
    let certificateless = with_signed_data(&response, |signed_data| {
        signed_data.certificates = None;
    });
    assert!(verify_response(&certificateless, &request, &chain_of(&authority)).is_ok());
    assert!(matches!(
        verify_response(&certificateless, &request, &chain_of(&other)),
        Err(TimestampError::SignerCertificateNotFound)
    ));
}

#[tokio::test]
async fn a_token_that_is_not_der_is_refused() {
    let authority = TimestampAuthority::start().await.unwrap();
    let chain = chain_of(&authority);
    assert!(matches!(
        verify_stored_response(b"not a response", b"signed bytes", &chain),
        Err(TimestampError::MalformedResponse(_))
    ));
    // The TSA refuses a request it cannot parse (and says so with a 4xx, not a token).
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(20),
        authority.post_request(b"not a request"),
    )
    .await
    .unwrap()
    .unwrap();
    assert!((400..500).contains(&status), "status {status}");
}

#[tokio::test]
async fn an_imprint_of_another_hash_or_a_digest_algorithm_we_do_not_know_is_refused() {
    let authority = TimestampAuthority::start().await.unwrap();
    let chain = chain_of(&authority);
    let (request, response) = granted(&authority, b"signed bytes").await;

    let sha384_imprint = with_tst_info(&response, |tst_info| {
        tst_info.message_imprint.hash_algorithm.oid = ID_SHA384;
    });
    assert!(matches!(
        verify_response(&sha384_imprint, &request, &chain),
        Err(TimestampError::ImprintAlgorithm)
    ));

    let sha1_signer = with_signed_data(&response, |signed_data| {
        let mut signer_infos = signed_data.signer_infos.0.clone().into_vec();
        signer_infos[0].digest_alg.oid = ID_SHA1;
        signed_data.signer_infos = signer_infos.try_into().unwrap();
    });
    assert!(matches!(
        verify_response(&sha1_signer, &request, &chain),
        Err(TimestampError::UnsupportedAlgorithm { .. })
    ));
}
