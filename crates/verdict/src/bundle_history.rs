//! The trust bundle history: every distinct X.509 trust bundle a SPIRE server published, kept
//! so that an attestation can be verified years later, at the time it was signed, against the
//! bundle that was current then (its CA long rotated out of today's bundle).
//!
//! - [`BundleRecord`]: one bundle as recorded (trust domain, SPIRE's sequence number, the CA
//!   certificates with their SHA-256 digests and taint flags, when first seen). The registrar
//!   writes one per `(trust domain, sequence number)` create-if-absent in the
//!   `{PREFIX}_TRUST_BUNDLES` bucket ([`BUCKET`], [`record_key`]); `countersign bundles export`
//!   writes them all to a [`BundleHistoryFile`].
//! - [`BundleHistory`]: the records of one or more trust domains, checked to agree with
//!   themselves when built (a different CA set under an already-recorded sequence number is
//!   refused, [`HistoryError::Conflict`]), and the point-in-time check
//!   [`BundleHistory::verify_chain_at`], which reads top to bottom:
//!   1. the bundle recorded for the signing time: the one whose digest the attestation names,
//!      else the last one first seen at or before that time ([`PointInTimeError::NoBundleAtTime`]);
//!   2. the leaf chains, at the signing time, to one CA of that bundle, the issuing authority
//!      ([`PointInTimeError::ChainInvalidAtTime`]);
//!   3. that authority was not tainted then or since, nor removed from a later bundle while it
//!      was still valid (SPIRE's `localauthority x509 taint` / `revoke`;
//!      [`PointInTimeError::AuthorityRevoked`]). A CA that left the bundle after it expired was
//!      pruned, not revoked.
//!
//! A bundle's digest is SHA-256 over its CAs' DER, sorted bytewise and de-duplicated: the same
//! as `countersign_identity::svid::TrustBundleSet::digest` of a set holding that trust domain
//! alone, so an attestor's own-trust-domain digest names a recorded bundle.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use countersign_events::kv::{Key, KvError};
use countersign_identity::crypto::Sha256Digest;
use countersign_identity::spiffe_id::TrustDomain;
use countersign_identity::svid::{ChainError, SvidLeaf, TrustBundleSet};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// The bucket name (after the prefix): `{PREFIX}_TRUST_BUNDLES`.
pub const BUCKET: &str = "trust_bundles";

/// The format version written in a [`BundleHistoryFile`].
pub const FILE_VERSION: u32 = 1;

/// The most records a history file may hold (a bundle a day for decades, many trust domains).
pub const MAX_RECORDS: usize = 100_000;

/// The most CAs one recorded bundle may hold.
pub const MAX_AUTHORITIES: usize = 64;

// === BundleRecord ===

/// One CA certificate of a recorded bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorityRecord {
    /// SHA-256 (hex) of the DER.
    pub sha256: String,
    /// The certificate, DER, standard base64.
    pub der: String,
    /// Whether SPIRE marked it tainted in this bundle.
    #[serde(default)]
    pub tainted: bool,
}

/// One distinct trust bundle, as first seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleRecord {
    /// The trust domain.
    pub trust_domain: String,
    /// SPIRE's bundle sequence number.
    pub sequence_number: u64,
    /// The bundle's digest (hex; see the module docs).
    pub digest: String,
    /// Its CAs, in the order SPIRE sent them.
    pub authorities: Vec<AuthorityRecord>,
    /// When the recorder first saw it.
    pub first_seen: DateTime<Utc>,
}

/// Why a bundle cannot be recorded or a record cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The bundle has no CA (SPIRE's "distrust everything"): nothing to verify against.
    #[error("the bundle of {trust_domain} has no X.509 authority")]
    NoAuthorities {
        /// The trust domain.
        trust_domain: String,
    },
    /// More CAs than [`MAX_AUTHORITIES`].
    #[error("the bundle has {count} authorities, more than {MAX_AUTHORITIES}")]
    TooManyAuthorities {
        /// How many.
        count: usize,
    },
    /// The trust domain is not one.
    #[error("{trust_domain:?} is not a trust domain")]
    TrustDomain {
        /// As written.
        trust_domain: String,
    },
    /// A CA is not base64, or its digest does not match it, or the record's digest does not
    /// match its CAs.
    #[error("authority {index} of bundle {sequence_number}: {what}")]
    Authority {
        /// The bundle's sequence number.
        sequence_number: u64,
        /// The CA's position.
        index: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// The record's digest is not that of its CAs.
    #[error("bundle {sequence_number}: the digest does not match its authorities")]
    Digest {
        /// The bundle's sequence number.
        sequence_number: u64,
    },
    /// A CA is not usable as a trust anchor.
    #[error("bundle {sequence_number}: an authority is not a usable trust anchor")]
    Anchor {
        /// The bundle's sequence number.
        sequence_number: u64,
        /// Why.
        #[source]
        source: countersign_identity::svid::BundleError,
    },
}

/// The digest of a set of CAs (see the module docs).
pub fn authorities_digest<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> Sha256Digest {
    let sorted: BTreeSet<&[u8]> = ders.into_iter().collect();
    Sha256Digest::of(&sorted.into_iter().flatten().copied().collect::<Vec<u8>>())
}

impl BundleRecord {
    /// The record of a bundle: `authorities` are `(DER, tainted)` in SPIRE's order.
    pub fn new(
        trust_domain: &TrustDomain,
        sequence_number: u64,
        authorities: impl IntoIterator<Item = (Vec<u8>, bool)>,
        first_seen: DateTime<Utc>,
    ) -> Result<BundleRecord, RecordError> {
        let authorities: Vec<(Vec<u8>, bool)> = authorities.into_iter().collect();
        if authorities.is_empty() {
            return Err(RecordError::NoAuthorities {
                trust_domain: trust_domain.to_string(),
            });
        }
        if authorities.len() > MAX_AUTHORITIES {
            return Err(RecordError::TooManyAuthorities {
                count: authorities.len(),
            });
        }
        let digest = authorities_digest(authorities.iter().map(|(der, _)| der.as_slice()));
        Ok(BundleRecord {
            trust_domain: trust_domain.to_string(),
            sequence_number,
            digest: digest.to_hex(),
            authorities: authorities
                .into_iter()
                .map(|(der, tainted)| AuthorityRecord {
                    sha256: Sha256Digest::of(&der).to_hex(),
                    der: base64::engine::general_purpose::STANDARD.encode(&der),
                    tainted,
                })
                .collect(),
            first_seen,
        })
    }

    /// The KV key of this record.
    pub fn key(&self) -> Result<Key, KvError> {
        record_key(&self.trust_domain, self.sequence_number)
    }

    /// Whether `other` holds the same CA set (whatever the order, taint flags and first-seen
    /// time): what must hold for two records of one sequence number.
    pub fn same_authorities(&self, other: &BundleRecord) -> bool {
        let ours: BTreeSet<&str> = self.authorities.iter().map(|a| a.der.as_str()).collect();
        let theirs: BTreeSet<&str> = other.authorities.iter().map(|a| a.der.as_str()).collect();
        ours == theirs
    }

    /// The record checked and decoded: every CA decodes, matches its digest and is a usable
    /// trust anchor, and the bundle's digest is that of its CAs.
    fn checked(&self) -> Result<CheckedRecord, RecordError> {
        let trust_domain =
            TrustDomain::new(&self.trust_domain).map_err(|_| RecordError::TrustDomain {
                trust_domain: self.trust_domain.clone(),
            })?;
        if self.authorities.is_empty() {
            return Err(RecordError::NoAuthorities {
                trust_domain: self.trust_domain.clone(),
            });
        }
        if self.authorities.len() > MAX_AUTHORITIES {
            return Err(RecordError::TooManyAuthorities {
                count: self.authorities.len(),
            });
        }
        let mut authorities = Vec::with_capacity(self.authorities.len());
        for (index, authority) in self.authorities.iter().enumerate() {
            let error = |what| RecordError::Authority {
                sequence_number: self.sequence_number,
                index,
                what,
            };
            let der = base64::engine::general_purpose::STANDARD
                .decode(&authority.der)
                .map_err(|_| error("not base64"))?;
            if Sha256Digest::of(&der).to_hex() != authority.sha256 {
                return Err(error("its digest does not match it"));
            }
            let not_after =
                certificate_not_after(&der).ok_or_else(|| error("not a certificate"))?;
            authorities.push(CheckedAuthority {
                der,
                sha256: authority.sha256.clone(),
                tainted: authority.tainted,
                not_after,
            });
        }
        let digest = authorities_digest(authorities.iter().map(|a| a.der.as_slice()));
        if digest.to_hex() != self.digest {
            return Err(RecordError::Digest {
                sequence_number: self.sequence_number,
            });
        }
        let mut bundle = TrustBundleSet::new();
        bundle
            .add_der(
                trust_domain.clone(),
                authorities.iter().map(|a| a.der.clone()),
            )
            .map_err(|source| RecordError::Anchor {
                sequence_number: self.sequence_number,
                source,
            })?;
        Ok(CheckedRecord {
            record: self.clone(),
            trust_domain,
            authorities,
            bundle,
        })
    }
}

/// The KV key of the record of `(trust_domain, sequence_number)`:
/// `bundle.{trust domain}.{sequence number, 20 digits}` (so keys sort by sequence).
pub fn record_key(trust_domain: &str, sequence_number: u64) -> Result<Key, KvError> {
    Key::raw("bundle")?
        .with_token(trust_domain, "trust_domain")?
        .with_raw(&format!("{sequence_number:020}"))
}

/// SHA-256 (hex) of the CA of `bundles` that issued `leaf` (with `intermediates`): the one that
/// alone verifies the chain at `at`, clamped into the leaf's validity. `None` when none does.
/// What an attestation records so a later revocation of that CA finds it.
pub fn issuing_authority(
    bundles: &TrustBundleSet,
    leaf: &SvidLeaf,
    intermediates: &[Vec<u8>],
    at: DateTime<Utc>,
) -> Option<String> {
    let trust_domain = leaf.spiffe_id().trust_domain();
    let at = at.clamp(leaf.not_before(), leaf.not_after());
    bundles
        .authorities(trust_domain)?
        .iter()
        .find(|authority| {
            let mut alone = TrustBundleSet::new();
            alone
                .add_der(trust_domain.clone(), [authority.to_vec()])
                .is_ok()
                && alone.verify_chain(leaf, intermediates, at).is_ok()
        })
        .map(|authority| Sha256Digest::of(authority).to_hex())
}

fn certificate_not_after(der: &[u8]) -> Option<DateTime<Utc>> {
    let (rest, certificate) = X509Certificate::from_der(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    DateTime::from_timestamp(certificate.validity().not_after.timestamp(), 0)
}

// === the history file ===

/// What `countersign bundles export` writes and `countersign verify --bundle-history` reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleHistoryFile {
    /// [`FILE_VERSION`].
    pub version: u32,
    /// Every record, by trust domain then sequence number.
    pub records: Vec<BundleRecord>,
}

impl BundleHistoryFile {
    /// A file of `records`, sorted.
    pub fn new(mut records: Vec<BundleRecord>) -> BundleHistoryFile {
        records.sort_by(|a, b| {
            (a.trust_domain.as_str(), a.sequence_number)
                .cmp(&(b.trust_domain.as_str(), b.sequence_number))
        });
        BundleHistoryFile {
            version: FILE_VERSION,
            records,
        }
    }
}

// === BundleHistory ===

#[derive(Debug, Clone)]
struct CheckedAuthority {
    der: Vec<u8>,
    sha256: String,
    tainted: bool,
    not_after: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct CheckedRecord {
    record: BundleRecord,
    trust_domain: TrustDomain,
    authorities: Vec<CheckedAuthority>,
    bundle: TrustBundleSet,
}

/// Why a history cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The history disagrees with itself: two different CA sets under one sequence number.
    #[error(
        "the history holds two different CA sets under sequence number {sequence_number} of {trust_domain}"
    )]
    Conflict {
        /// The trust domain.
        trust_domain: String,
        /// The sequence number.
        sequence_number: u64,
    },
    /// A record is malformed.
    #[error("a bundle record is malformed")]
    Record(#[from] RecordError),
    /// The file's version is not one this build reads.
    #[error("history file version {found} is not {FILE_VERSION}")]
    Version {
        /// What the file says.
        found: u32,
    },
    /// More than [`MAX_RECORDS`].
    #[error("the history holds {count} records, more than {MAX_RECORDS}")]
    TooManyRecords {
        /// How many.
        count: usize,
    },
    /// The history holds nothing.
    #[error("the history holds no bundle")]
    Empty,
}

/// How a CA was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revocation {
    /// A bundle marks it tainted (`localauthority x509 taint`).
    Tainted,
    /// It left the bundle while still valid (`localauthority x509 revoke`).
    Removed,
}

/// Why a chain does not verify at its signing time against the history.
#[derive(Debug, thiserror::Error)]
pub enum PointInTimeError {
    /// No bundle of the leaf's trust domain was recorded at or before the signing time (and
    /// none has the digest the attestation names).
    #[error("no bundle of {trust_domain} recorded for {at}")]
    NoBundleAtTime {
        /// The leaf's trust domain.
        trust_domain: String,
        /// The signing time.
        at: DateTime<Utc>,
    },
    /// The chain does not verify at the signing time against the bundle recorded then.
    #[error("the chain does not verify at {at} against bundle {sequence_number}")]
    ChainInvalidAtTime {
        /// The bundle used.
        sequence_number: u64,
        /// The signing time.
        at: DateTime<Utc>,
        /// Why.
        #[source]
        source: ChainError,
    },
    /// The issuing CA was revoked (tainted, or removed while valid) in a recorded bundle.
    #[error("authority {authority} was revoked ({how:?}) in bundle {sequence_number}")]
    AuthorityRevoked {
        /// SHA-256 (hex) of the CA.
        authority: String,
        /// The bundle that shows it.
        sequence_number: u64,
        /// How.
        how: Revocation,
    },
}

/// A chain that verified at its signing time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainAtTime {
    /// The bundle it verified against.
    pub sequence_number: u64,
    /// That bundle's digest.
    pub bundle_digest: String,
    /// SHA-256 (hex) of the CA that issued the chain.
    pub authority: String,
}

/// The records of one or more trust domains, checked (see the module docs).
#[derive(Debug, Clone)]
pub struct BundleHistory {
    /// Trust domain → records by sequence number.
    domains: BTreeMap<TrustDomain, Vec<CheckedRecord>>,
}

impl BundleHistory {
    /// A history of `records` in any order. Duplicates of one sequence number are kept once if
    /// they hold the same CA set, and refused otherwise.
    pub fn new(records: impl IntoIterator<Item = BundleRecord>) -> Result<Self, HistoryError> {
        let mut by_key: BTreeMap<(String, u64), BundleRecord> = BTreeMap::new();
        let mut count = 0usize;
        for record in records {
            count += 1;
            if count > MAX_RECORDS {
                return Err(HistoryError::TooManyRecords { count });
            }
            let key = (record.trust_domain.clone(), record.sequence_number);
            match by_key.get(&key) {
                Some(existing) if !existing.same_authorities(&record) => {
                    return Err(HistoryError::Conflict {
                        trust_domain: key.0,
                        sequence_number: key.1,
                    });
                }
                Some(_) => {}
                None => {
                    by_key.insert(key, record);
                }
            }
        }
        if by_key.is_empty() {
            return Err(HistoryError::Empty);
        }
        let mut domains: BTreeMap<TrustDomain, Vec<CheckedRecord>> = BTreeMap::new();
        for record in by_key.into_values() {
            let checked = record.checked()?;
            domains
                .entry(checked.trust_domain.clone())
                .or_default()
                .push(checked);
        }
        Ok(BundleHistory { domains })
    }

    /// A history read from an exported file.
    pub fn from_file(file: BundleHistoryFile) -> Result<Self, HistoryError> {
        if file.version != FILE_VERSION {
            return Err(HistoryError::Version {
                found: file.version,
            });
        }
        Self::new(file.records)
    }

    /// Every record, by trust domain then sequence number.
    pub fn records(&self) -> impl Iterator<Item = &BundleRecord> {
        self.domains
            .values()
            .flatten()
            .map(|checked| &checked.record)
    }

    /// The bundle recorded for `at` in `trust_domain`: the one with `claimed_digest` when the
    /// history has it (the last such one first seen at or before `at`, else the first), else
    /// the last one first seen at or before `at`.
    pub fn bundle_for(
        &self,
        trust_domain: &TrustDomain,
        at: DateTime<Utc>,
        claimed_digest: Option<&str>,
    ) -> Result<(&BundleRecord, &TrustBundleSet), PointInTimeError> {
        self.checked_for(trust_domain, at, claimed_digest)
            .map(|(_, checked)| (&checked.record, &checked.bundle))
    }

    fn checked_for(
        &self,
        trust_domain: &TrustDomain,
        at: DateTime<Utc>,
        claimed_digest: Option<&str>,
    ) -> Result<(usize, &CheckedRecord), PointInTimeError> {
        let no_bundle = || PointInTimeError::NoBundleAtTime {
            trust_domain: trust_domain.to_string(),
            at,
        };
        let records = self.domains.get(trust_domain).ok_or_else(no_bundle)?;
        let seen_by = |checked: &&CheckedRecord| checked.record.first_seen <= at;
        if let Some(digest) = claimed_digest {
            let mut named = records
                .iter()
                .enumerate()
                .filter(|(_, checked)| checked.record.digest == digest);
            let first = named.clone().next();
            if let Some(found) = named.rfind(|(_, checked)| seen_by(checked)).or(first) {
                return Ok(found);
            }
        }
        records
            .iter()
            .enumerate()
            .rfind(|(_, checked)| seen_by(checked))
            .ok_or_else(no_bundle)
    }

    /// The point-in-time check of the module docs: `leaf` (with `intermediates`) at the signing
    /// time `at`, against the bundle recorded then, its issuing CA never revoked.
    pub fn verify_chain_at(
        &self,
        leaf: &SvidLeaf,
        intermediates: &[Vec<u8>],
        at: DateTime<Utc>,
        claimed_digest: Option<&str>,
    ) -> Result<ChainAtTime, PointInTimeError> {
        // 1. The bundle recorded for the signing time.
        let trust_domain = leaf.spiffe_id().trust_domain();
        let (position, checked) = self.checked_for(trust_domain, at, claimed_digest)?;
        let records = self
            .domains
            .get(trust_domain)
            .map_or(&[][..], Vec::as_slice);

        // 2. The chain at that time, and the CA that issued it.
        checked
            .bundle
            .verify_chain(leaf, intermediates, at)
            .map_err(|source| PointInTimeError::ChainInvalidAtTime {
                sequence_number: checked.record.sequence_number,
                at,
                source,
            })?;
        let issuer = checked
            .authorities
            .iter()
            .find(|authority| {
                let mut alone = TrustBundleSet::new();
                alone
                    .add_der(trust_domain.clone(), [authority.der.clone()])
                    .is_ok()
                    && alone.verify_chain(leaf, intermediates, at).is_ok()
            })
            // The whole bundle verified, so one of its CAs did; fail closed all the same.
            .ok_or(PointInTimeError::ChainInvalidAtTime {
                sequence_number: checked.record.sequence_number,
                at,
                source: ChainError::TimeOutOfRange,
            })?;

        // 3. Never revoked: not tainted then or since, not removed while valid.
        if let Some((sequence_number, how)) = revocation(issuer, &records[position..]) {
            return Err(PointInTimeError::AuthorityRevoked {
                authority: issuer.sha256.clone(),
                sequence_number,
                how,
            });
        }
        Ok(ChainAtTime {
            sequence_number: checked.record.sequence_number,
            bundle_digest: checked.record.digest.clone(),
            authority: issuer.sha256.clone(),
        })
    }

    /// The first record, from the bundle that held the CA `authority` (SHA-256 hex of its DER)
    /// at `at` on, that shows it revoked: tainted, or gone while still valid. What an
    /// attestation's results CA (named by its signing context, not by a chain the verifier
    /// holds) is checked with. `None` when no record holds that CA or none revokes it: a CA the
    /// history never saw (a federated trust domain's, which the registrar does not record) is
    /// not judged here; the attestor verified the results' chain against its bundle then.
    pub fn revocation_since(
        &self,
        authority: &str,
        at: DateTime<Utc>,
    ) -> Option<(u64, Revocation)> {
        self.domains.values().find_map(|records| {
            let holds = |checked: &CheckedRecord| {
                checked
                    .authorities
                    .iter()
                    .any(|candidate| candidate.sha256 == authority)
            };
            // The bundle of the signing time; a CA recorded only after it (the registrar polls)
            // is judged from its first record.
            let position = records
                .iter()
                .rposition(|checked| checked.record.first_seen <= at && holds(checked))
                .or_else(|| records.iter().position(holds))?;
            let present = records[position]
                .authorities
                .iter()
                .find(|candidate| candidate.sha256 == authority)?;
            revocation(present, &records[position..])
        })
    }

    /// The CAs of `trust_domain` revoked by `record` (the newest bundle) relative to the
    /// history before it: tainted there and not tainted in the previous record, or in the
    /// previous record and gone from this one while still valid. What the registrar
    /// re-evaluates stored attestations for.
    pub fn newly_revoked(&self, record: &BundleRecord) -> Vec<(String, Revocation)> {
        let Ok(trust_domain) = TrustDomain::new(&record.trust_domain) else {
            return Vec::new();
        };
        let Some(records) = self.domains.get(&trust_domain) else {
            return Vec::new();
        };
        let Some(position) = records
            .iter()
            .position(|checked| checked.record.sequence_number == record.sequence_number)
        else {
            return Vec::new();
        };
        let Some(previous) = position.checked_sub(1).and_then(|index| records.get(index)) else {
            return Vec::new();
        };
        let current = &records[position];
        let mut revoked: Vec<(String, Revocation)> = previous
            .authorities
            .iter()
            .filter_map(|authority| {
                revocation(authority, std::slice::from_ref(current))
                    .filter(|_| !authority.tainted)
                    .map(|(_, how)| (authority.sha256.clone(), how))
            })
            .collect();
        // A CA first recorded already tainted (the bundle in which it was active and untainted
        // fell between two polls) is revoked by this record too.
        revoked.extend(
            current
                .authorities
                .iter()
                .filter(|authority| {
                    authority.tainted
                        && !previous
                            .authorities
                            .iter()
                            .any(|earlier| earlier.der == authority.der)
                })
                .map(|authority| (authority.sha256.clone(), Revocation::Tainted)),
        );
        revoked
    }
}

/// The first of `records` (in sequence order) that shows `authority` revoked.
fn revocation(
    authority: &CheckedAuthority,
    records: &[CheckedRecord],
) -> Option<(u64, Revocation)> {
    records.iter().find_map(|checked| {
        match checked
            .authorities
            .iter()
            .find(|candidate| candidate.der == authority.der)
        {
            Some(present) if present.tainted => {
                Some((checked.record.sequence_number, Revocation::Tainted))
            }
            Some(_) => None,
            None if checked.record.first_seen < authority.not_after => {
                Some((checked.record.sequence_number, Revocation::Removed))
            }
            None => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::string::Ia5String;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose, SanType,
    };

    struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    impl Ca {
        fn new() -> Ca {
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![SanType::URI(
                Ia5String::try_from("spiffe://example.org").unwrap(),
            )];
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = rcgen::date_time_ymd(2026, 1, 1);
            params.not_after = rcgen::date_time_ymd(2027, 1, 1);
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            Ca {
                issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
            }
        }

        fn der(&self) -> Vec<u8> {
            self.issuer.der().to_vec()
        }

        fn leaf(&self) -> SvidLeaf {
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![SanType::URI(
                Ia5String::try_from("spiffe://example.org/countersign/attestor").unwrap(),
            )];
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.not_before = rcgen::date_time_ymd(2026, 3, 1);
            params.not_after = rcgen::date_time_ymd(2026, 3, 2);
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let certificate = params.signed_by(&key, &self.issuer).unwrap();
            SvidLeaf::from_der(certificate.der()).unwrap()
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn record(sequence: u64, authorities: &[(&Ca, bool)], first_seen: &str) -> BundleRecord {
        BundleRecord::new(
            &TrustDomain::new("example.org").unwrap(),
            sequence,
            authorities.iter().map(|(ca, tainted)| (ca.der(), *tainted)),
            at(first_seen),
        )
        .unwrap()
    }

    const SIGNED: &str = "2026-03-01T12:00:00Z";

    #[test]
    fn an_old_ca_verifies_at_its_time_after_it_left_the_bundle() {
        let (old, new) = (Ca::new(), Ca::new());
        let leaf = old.leaf();
        let history = BundleHistory::new([
            record(1, &[(&old, false)], "2026-02-01T00:00:00Z"),
            record(2, &[(&old, false), (&new, false)], "2026-03-05T00:00:00Z"),
            // Pruned after it expired: not a revocation.
            record(3, &[(&new, false)], "2027-02-01T00:00:00Z"),
        ])
        .unwrap();
        let checked = history
            .verify_chain_at(&leaf, &[], at(SIGNED), None)
            .unwrap();
        assert_eq!(checked.sequence_number, 1);
        assert_eq!(checked.authority, Sha256Digest::of(&old.der()).to_hex());
        // Today's bundle alone does not verify it.
        let today = history.records().last().unwrap().clone();
        assert!(
            BundleHistory::new([today])
                .unwrap()
                .verify_chain_at(&leaf, &[], at(SIGNED), None)
                .is_err()
        );
    }

    #[test]
    fn the_claimed_digest_picks_the_bundle_even_before_it_was_first_seen() {
        let (old, new) = (Ca::new(), Ca::new());
        let leaf = new.leaf();
        let second = record(2, &[(&old, false), (&new, false)], "2026-03-01T12:00:30Z");
        let digest = second.digest.clone();
        let history =
            BundleHistory::new([record(1, &[(&old, false)], "2026-02-01T00:00:00Z"), second])
                .unwrap();
        let by_time = history.verify_chain_at(&leaf, &[], at(SIGNED), None);
        assert!(matches!(
            by_time,
            Err(PointInTimeError::ChainInvalidAtTime {
                sequence_number: 1,
                ..
            })
        ));
        let by_digest = history
            .verify_chain_at(&leaf, &[], at(SIGNED), Some(&digest))
            .unwrap();
        assert_eq!(by_digest.sequence_number, 2);
    }

    #[test]
    fn a_different_ca_set_under_one_sequence_is_refused() {
        let (one, other) = (Ca::new(), Ca::new());
        let refused = BundleHistory::new([
            record(1, &[(&one, false)], "2026-02-01T00:00:00Z"),
            record(1, &[(&other, false)], "2026-02-02T00:00:00Z"),
        ]);
        assert!(matches!(
            refused,
            Err(HistoryError::Conflict {
                sequence_number: 1,
                ..
            })
        ));
        // The same set seen twice is one record.
        let same = BundleHistory::new([
            record(1, &[(&one, false)], "2026-02-01T00:00:00Z"),
            record(1, &[(&one, false)], "2026-02-02T00:00:00Z"),
        ])
        .unwrap();
        assert_eq!(same.records().count(), 1);
    }

    #[test]
    fn no_bundle_before_the_first_record_is_refused() {
        let ca = Ca::new();
        let history =
            BundleHistory::new([record(1, &[(&ca, false)], "2026-03-02T00:00:00Z")]).unwrap();
        assert!(matches!(
            history.verify_chain_at(&ca.leaf(), &[], at(SIGNED), None),
            Err(PointInTimeError::NoBundleAtTime { .. })
        ));
    }

    #[test]
    fn a_chain_outside_its_validity_is_refused() {
        let ca = Ca::new();
        let history =
            BundleHistory::new([record(1, &[(&ca, false)], "2026-02-01T00:00:00Z")]).unwrap();
        assert!(matches!(
            history.verify_chain_at(&ca.leaf(), &[], at("2026-04-01T00:00:00Z"), None),
            Err(PointInTimeError::ChainInvalidAtTime { .. })
        ));
    }

    #[test]
    fn a_tainted_or_removed_ca_is_revoked() {
        let (old, new) = (Ca::new(), Ca::new());
        let leaf = old.leaf();
        let first = record(1, &[(&old, false), (&new, false)], "2026-02-01T00:00:00Z");
        let tainted = record(2, &[(&old, true), (&new, false)], "2026-03-05T00:00:00Z");
        let removed = record(3, &[(&new, false)], "2026-03-06T00:00:00Z");
        let history =
            BundleHistory::new([first.clone(), tainted.clone(), removed.clone()]).unwrap();
        assert!(matches!(
            history.verify_chain_at(&leaf, &[], at(SIGNED), None),
            Err(PointInTimeError::AuthorityRevoked {
                sequence_number: 2,
                how: Revocation::Tainted,
                ..
            })
        ));
        let old_sha = Sha256Digest::of(&old.der()).to_hex();
        assert_eq!(
            history.newly_revoked(&tainted),
            vec![(old_sha.clone(), Revocation::Tainted)]
        );
        assert!(history.newly_revoked(&removed).is_empty());
        // First seen already tainted: the record that shows it revokes it.
        let late = Ca::new();
        let late_sha = Sha256Digest::of(&late.der()).to_hex();
        let seen_tainted = record(2, &[(&new, false), (&late, true)], "2026-03-05T00:00:00Z");
        let missed = BundleHistory::new([
            record(1, &[(&new, false)], "2026-02-01T00:00:00Z"),
            seen_tainted.clone(),
        ])
        .unwrap();
        assert_eq!(
            missed.newly_revoked(&seen_tainted),
            vec![(late_sha, Revocation::Tainted)]
        );

        let without_taint = BundleHistory::new([first, removed.clone()]).unwrap();
        assert!(matches!(
            without_taint.verify_chain_at(&leaf, &[], at(SIGNED), None),
            Err(PointInTimeError::AuthorityRevoked {
                how: Revocation::Removed,
                ..
            })
        ));
        assert_eq!(
            without_taint.newly_revoked(&removed),
            vec![(old_sha, Revocation::Removed)]
        );
        // The CA that stayed is fine.
        assert!(
            history
                .verify_chain_at(&new.leaf(), &[], at(SIGNED), None)
                .is_ok()
        );
    }

    #[test]
    fn a_ca_named_by_its_digest_is_revoked_since_a_time() {
        let (old, new) = (Ca::new(), Ca::new());
        let (old_sha, new_sha) = (
            Sha256Digest::of(&old.der()).to_hex(),
            Sha256Digest::of(&new.der()).to_hex(),
        );
        let history = BundleHistory::new([
            record(1, &[(&old, false), (&new, false)], "2026-02-01T00:00:00Z"),
            record(2, &[(&old, true), (&new, false)], "2026-03-05T00:00:00Z"),
        ])
        .unwrap();
        assert_eq!(
            history.revocation_since(&old_sha, at(SIGNED)),
            Some((2, Revocation::Tainted))
        );
        assert_eq!(history.revocation_since(&new_sha, at(SIGNED)), None);
        assert_eq!(
            history.revocation_since(&Sha256Digest::of(b"unknown").to_hex(), at(SIGNED)),
            None
        );
        // Removed while still valid.
        let removed = BundleHistory::new([
            record(1, &[(&old, false), (&new, false)], "2026-02-01T00:00:00Z"),
            record(2, &[(&new, false)], "2026-03-05T00:00:00Z"),
        ])
        .unwrap();
        assert_eq!(
            removed.revocation_since(&old_sha, at(SIGNED)),
            Some((2, Revocation::Removed))
        );
    }

    #[test]
    fn a_tampered_record_is_refused() {
        let ca = Ca::new();
        let mut tampered = record(1, &[(&ca, false)], "2026-02-01T00:00:00Z");
        tampered.digest = Sha256Digest::of(b"other").to_hex();
        assert!(matches!(
            BundleHistory::new([tampered]),
            Err(HistoryError::Record(RecordError::Digest { .. }))
        ));
        let mut wrong_sha = record(1, &[(&ca, false)], "2026-02-01T00:00:00Z");
        wrong_sha.authorities[0].sha256 = Sha256Digest::of(b"other").to_hex();
        assert!(matches!(
            BundleHistory::new([wrong_sha]),
            Err(HistoryError::Record(RecordError::Authority { .. }))
        ));
    }

    #[test]
    fn the_file_round_trips_and_its_version_is_checked() {
        let ca = Ca::new();
        let file = BundleHistoryFile::new(vec![
            record(2, &[(&ca, false)], "2026-02-02T00:00:00Z"),
            record(1, &[(&ca, false)], "2026-02-01T00:00:00Z"),
        ]);
        assert_eq!(file.records[0].sequence_number, 1);
        let json = serde_json::to_string(&file).unwrap();
        let read: BundleHistoryFile = serde_json::from_str(&json).unwrap();
        assert_eq!(read, file);
        assert_eq!(BundleHistory::from_file(read).unwrap().records().count(), 2);
        let future = BundleHistoryFile { version: 2, ..file };
        assert!(matches!(
            BundleHistory::from_file(future),
            Err(HistoryError::Version { found: 2 })
        ));
        assert_eq!(
            record_key("example.org", 7).unwrap().as_str(),
            "bundle.example_org.00000000000000000007"
        );
    }

    #[test]
    fn the_digest_is_the_trust_bundle_sets() {
        let (one, two) = (Ca::new(), Ca::new());
        let mut set = TrustBundleSet::new();
        set.add_der(
            TrustDomain::new("example.org").unwrap(),
            [two.der(), one.der()],
        )
        .unwrap();
        let record = record(1, &[(&one, false), (&two, false)], "2026-02-01T00:00:00Z");
        assert_eq!(record.digest, set.digest().to_hex());
    }
}
