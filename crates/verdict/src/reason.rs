//! The one conversion from the verifier's reason codes (`countersign_identity::tekton::ReasonCode`)
//! to the event contract's (`countersign_events::data::ReasonCode`). Both enums carry the same
//! codes under the same wire names; the match is exhaustive both ways, so a code added on one
//! side and not the other does not compile.
//!
//! The conversions are methods of extension traits: the events crate does not depend on the
//! identity crate nor the other way round, so neither type can name the other, and the orphan
//! rule forbids a `From` between two foreign types here.

use countersign_events::data::ReasonCode as EventReason;
use countersign_identity::tekton::ReasonCode as VerifierReason;

/// The event contract's code of a verifier reason.
pub trait VerifierReasonExt {
    /// The event contract's code with the same wire name.
    fn to_event_reason(self) -> EventReason;
}

/// The verifier's code of an event contract reason.
pub trait EventReasonExt {
    /// The verifier's code with the same wire name (the inverse of
    /// [`VerifierReasonExt::to_event_reason`]).
    fn to_verifier_reason(self) -> VerifierReason;
}

impl VerifierReasonExt for VerifierReason {
    fn to_event_reason(self) -> EventReason {
        match self {
            VerifierReason::SvidMissing => EventReason::SvidMissing,
            VerifierReason::SvidInvalid => EventReason::SvidInvalid,
            VerifierReason::SpiffeIdInvalid => EventReason::SpiffeIdInvalid,
            VerifierReason::SpiffeIdMismatch => EventReason::SpiffeIdMismatch,
            VerifierReason::TrustDomainUnknown => EventReason::TrustDomainUnknown,
            VerifierReason::ChainInvalid => EventReason::ChainInvalid,
            VerifierReason::SvidNotValidAtSigning => EventReason::SvidNotValidAtSigning,
            VerifierReason::SvidPredatesTaskrun => EventReason::SvidPredatesTaskrun,
            VerifierReason::ManifestMissing => EventReason::ManifestMissing,
            VerifierReason::ManifestIncomplete => EventReason::ManifestIncomplete,
            VerifierReason::UnsignedResult => EventReason::UnsignedResult,
            VerifierReason::SignatureMissing => EventReason::SignatureMissing,
            VerifierReason::SignatureInvalid => EventReason::SignatureInvalid,
            VerifierReason::ResultsMismatch => EventReason::ResultsMismatch,
            VerifierReason::UnsignedResults => EventReason::UnsignedResults,
            VerifierReason::MalformedResults => EventReason::MalformedResults,
            VerifierReason::PayloadTooLarge => EventReason::PayloadTooLarge,
        }
    }
}

impl EventReasonExt for EventReason {
    fn to_verifier_reason(self) -> VerifierReason {
        match self {
            EventReason::SvidMissing => VerifierReason::SvidMissing,
            EventReason::SvidInvalid => VerifierReason::SvidInvalid,
            EventReason::SpiffeIdInvalid => VerifierReason::SpiffeIdInvalid,
            EventReason::SpiffeIdMismatch => VerifierReason::SpiffeIdMismatch,
            EventReason::TrustDomainUnknown => VerifierReason::TrustDomainUnknown,
            EventReason::ChainInvalid => VerifierReason::ChainInvalid,
            EventReason::SvidNotValidAtSigning => VerifierReason::SvidNotValidAtSigning,
            EventReason::SvidPredatesTaskrun => VerifierReason::SvidPredatesTaskrun,
            EventReason::ManifestMissing => VerifierReason::ManifestMissing,
            EventReason::ManifestIncomplete => VerifierReason::ManifestIncomplete,
            EventReason::UnsignedResult => VerifierReason::UnsignedResult,
            EventReason::SignatureMissing => VerifierReason::SignatureMissing,
            EventReason::SignatureInvalid => VerifierReason::SignatureInvalid,
            EventReason::ResultsMismatch => VerifierReason::ResultsMismatch,
            EventReason::UnsignedResults => VerifierReason::UnsignedResults,
            EventReason::MalformedResults => VerifierReason::MalformedResults,
            EventReason::PayloadTooLarge => VerifierReason::PayloadTooLarge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_keeps_its_wire_name_both_ways() {
        assert_eq!(VerifierReason::ALL.len(), EventReason::ALL.len());
        for reason in VerifierReason::ALL {
            let event = reason.to_event_reason();
            assert_eq!(event.as_str(), reason.as_str());
            assert_eq!(event.to_verifier_reason(), reason);
        }
        for reason in EventReason::ALL {
            assert_eq!(reason.to_verifier_reason().to_event_reason(), reason);
        }
    }
}
