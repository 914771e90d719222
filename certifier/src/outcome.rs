//! The outcome of a certification, and its conversions to and from the
//! wire (the Certify answer and a CertifyPipeline answer), in one place.

use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::error::{
    say_outcome, says_outcome, CertifierError, LEADER_METADATA, LOG_FAILURE_METADATA,
    OUTCOME_NOT_WRITTEN, OUTCOME_UNKNOWN,
};
use crate::proto::{self, certify_response, pipeline_answer, AbortCode, CertifyResponse};
use crate::Version;

/// The outcome of a certification, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed {
        version: Version,
    },
    Aborted {
        code: AbortCode,
        reason: String,
        /// The committed version it conflicts with (0: none).
        conflict_version: Version,
        /// Non-zero: the session is queued for its turn on this key (see
        /// `turns`).
        turn_key: u64,
    },
}

impl Outcome {
    fn aborted(a: proto::Aborted) -> Outcome {
        Outcome::Aborted {
            code: AbortCode::try_from(a.code).unwrap_or(AbortCode::Unspecified),
            reason: a.reason,
            conflict_version: a.conflict_version,
            turn_key: a.turn_key,
        }
    }

    /// The outcome as the wire carries it in either answer.
    fn wire(self) -> certify_response::Outcome {
        match self {
            Outcome::Committed { version } => {
                certify_response::Outcome::Committed(proto::Committed { version })
            }
            Outcome::Aborted {
                code,
                reason,
                conflict_version,
                turn_key,
            } => certify_response::Outcome::Aborted(proto::Aborted {
                code: code as i32,
                reason,
                conflict_version,
                turn_key,
            }),
        }
    }
}

impl From<Outcome> for CertifyResponse {
    fn from(o: Outcome) -> CertifyResponse {
        CertifyResponse {
            outcome: Some(o.wire()),
        }
    }
}

impl TryFrom<CertifyResponse> for Outcome {
    type Error = CertifierError;

    fn try_from(r: CertifyResponse) -> Result<Outcome, CertifierError> {
        match r.outcome {
            Some(certify_response::Outcome::Committed(c)) => {
                Ok(Outcome::Committed { version: c.version })
            }
            Some(certify_response::Outcome::Aborted(a)) => Ok(Outcome::aborted(a)),
            None => Err(CertifierError::Protocol(
                "Certify answer without outcome".into(),
            )),
        }
    }
}

/// A pipeline answer: the outcome, or what a unary call would have
/// answered as its status.
pub(crate) fn to_answer(r: Result<Outcome, CertifierError>) -> pipeline_answer::Outcome {
    use pipeline_answer::Outcome as O;
    match r {
        Ok(o) => match o.wire() {
            certify_response::Outcome::Committed(c) => O::Committed(c),
            certify_response::Outcome::Aborted(a) => O::Aborted(a),
        },
        Err(e) => {
            let s = Status::from(e);
            let md = s.metadata();
            let log_failure = md
                .get(LOG_FAILURE_METADATA)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            O::Error(proto::RequestError {
                code: s.code() as i32,
                message: s.message().to_owned(),
                log_failure,
                outcome_unknown: says_outcome(md, OUTCOME_UNKNOWN),
                not_written: says_outcome(md, OUTCOME_NOT_WRITTEN),
                leader: md
                    .get(LEADER_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
            })
        }
    }
}

/// The inverse of [`to_answer`].
pub(crate) fn from_answer(o: Option<pipeline_answer::Outcome>) -> Result<Outcome, CertifierError> {
    use pipeline_answer::Outcome as O;
    match o {
        Some(O::Committed(c)) => Ok(Outcome::Committed { version: c.version }),
        Some(O::Aborted(a)) => Ok(Outcome::aborted(a)),
        Some(O::Error(e)) => {
            let mut s = Status::new(tonic::Code::from_i32(e.code), e.message);
            if let Ok(v) = MetadataValue::try_from(e.log_failure.as_str()) {
                if !e.log_failure.is_empty() {
                    s.metadata_mut().insert(LOG_FAILURE_METADATA, v);
                }
            }
            if !e.leader.is_empty() {
                if let Ok(v) = MetadataValue::try_from(e.leader.as_str()) {
                    s.metadata_mut().insert(LEADER_METADATA, v);
                }
            }
            if e.outcome_unknown {
                say_outcome(s.metadata_mut(), OUTCOME_UNKNOWN);
            } else if e.not_written {
                say_outcome(s.metadata_mut(), OUTCOME_NOT_WRITTEN);
            }
            Err(CertifierError::from(s))
        }
        None => Err(CertifierError::Protocol(
            "pipeline answer without outcome".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an out-of-contact refusal says of its outcome survives the
    /// pipeline (where errors travel as answers, not statuses).
    #[test]
    fn an_out_of_contact_refusal_keeps_its_outcome_over_the_pipeline() {
        for (unknown, value) in [(false, OUTCOME_NOT_WRITTEN), (true, OUTCOME_UNKNOWN)] {
            let e = CertifierError::OutOfContact {
                node: 3,
                why: "an election is under way",
                refused: "retry another node".into(),
                outcome_unknown: unknown,
            };
            let back = from_answer(Some(to_answer(Err(e)))).unwrap_err();
            let CertifierError::Rpc(s) = back else {
                panic!("{back:?}")
            };
            assert_eq!(s.code(), tonic::Code::Unavailable);
            assert_eq!(
                s.metadata()
                    .get(crate::error::OUTCOME_METADATA)
                    .map(|v| v.as_bytes()),
                Some(value.as_bytes())
            );
        }
    }
}
