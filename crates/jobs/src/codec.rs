//! A JSON codec whose decode never fails. apalis-redis 1.0 treats an undecodable payload as a
//! backend error that stops the worker — and it stops again after every restart, a poison
//! pill. Here garbage decodes to [`Incoming::Malformed`], which the handler dead-letters with
//! an `AbortError`, and the worker goes on.

use apalis::prelude::Codec;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a worker receives: the job, or the bytes that were not one.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming<T> {
    /// A well-formed job.
    Job(T),
    /// A payload that does not decode as `T`.
    Malformed {
        /// The payload, lossily as text.
        raw: String,
        /// Why it did not decode.
        error: String,
    },
}

/// JSON on the wire, exactly as apalis's default codec writes `T`, so producers can push plain
/// `T` values while workers read `Incoming<T>`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LenientJson;

impl<T> Codec<Incoming<T>> for LenientJson
where
    T: Serialize + DeserializeOwned,
{
    type Error = serde_json::Error;
    type Compact = Vec<u8>;

    fn encode(&self, val: &Incoming<T>) -> Result<Vec<u8>, Self::Error> {
        match val {
            Incoming::Job(job) => serde_json::to_vec(job),
            Incoming::Malformed { raw, .. } => Ok(raw.clone().into_bytes()),
        }
    }

    fn decode(&self, val: &Vec<u8>) -> Result<Incoming<T>, Self::Error> {
        Ok(match serde_json::from_slice::<T>(val) {
            Ok(job) => Incoming::Job(job),
            Err(e) => Incoming::Malformed {
                raw: String::from_utf8_lossy(val).chars().take(2_000).collect(),
                error: e.to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CheckWorkflows;

    #[test]
    fn garbage_decodes_to_malformed_instead_of_failing() {
        let codec = LenientJson;
        let got: Incoming<CheckWorkflows> = codec.decode(&b"not json at all".to_vec()).unwrap();
        assert!(matches!(got, Incoming::Malformed { ref raw, .. } if raw == "not json at all"));
        let truncated = br#"{"check_run_id":1,"as_of":"2026-11"#.to_vec();
        let got: Incoming<CheckWorkflows> = codec.decode(&truncated).unwrap();
        assert!(matches!(got, Incoming::Malformed { .. }));
    }

    #[test]
    fn jobs_round_trip_in_the_plain_json_wire_format() {
        let job = CheckWorkflows {
            check_run_id: 7,
            as_of: chrono::DateTime::from_timestamp(1_764_072_000, 0).unwrap(),
            scope: crate::Scope::All,
        };
        let bytes = LenientJson.encode(&Incoming::Job(job.clone())).unwrap();
        assert_eq!(bytes, serde_json::to_vec(&job).unwrap());
        assert_eq!(LenientJson.decode(&bytes).unwrap(), Incoming::Job(job));
    }
}
