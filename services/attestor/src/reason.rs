//! The one conversion from the verifier's reason codes (`countersign_identity::tekton::ReasonCode`)
//! to the event contract's (`countersign_events::data::ReasonCode`). Both enums carry the same
//! codes under the same wire names; the match is exhaustive both ways, so a code added on one
//! side and not the other does not compile.

use countersign_events::data::ReasonCode as EventReason;
use countersign_identity::tekton::ReasonCode as VerifierReason;

/// The event contract's code for a verifier reason.
pub fn event_reason(reason: VerifierReason) -> EventReason {
    match reason {
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

/// The verifier's code for an event contract reason (the inverse of [`event_reason`]).
pub fn verifier_reason(reason: EventReason) -> VerifierReason {
    match reason {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_keeps_its_wire_name_both_ways() {
        assert_eq!(VerifierReason::ALL.len(), EventReason::ALL.len());
        for reason in VerifierReason::ALL {
            let event = event_reason(reason);
            assert_eq!(event.as_str(), reason.as_str());
            assert_eq!(verifier_reason(event), reason);
        }
        for reason in EventReason::ALL {
            assert_eq!(event_reason(verifier_reason(reason)), reason);
        }
    }
}
