//! The one error type of the storage layer.

use uuid::Uuid;

/// Everything a repository call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or a statement failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Running the schema migrations failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A `DATABASE_URL` that is neither `postgres://` nor `sqlite://` (its scheme).
    #[error("unsupported database url scheme {0:?}: expected postgres://… or sqlite://…")]
    UnsupportedUrl(String),
    /// The named row does not exist.
    #[error("{entity} {id} not found")]
    NotFound {
        /// What was looked for ("workflow", "policy", ...).
        entity: &'static str,
        /// The id that was asked for.
        id: String,
    },
    /// Optimistic concurrency: the row changed since the caller read it.
    #[error("workflow {id} is at version {actual}, not {expected}")]
    VersionConflict {
        /// The workflow.
        id: Uuid,
        /// The version the caller expected.
        expected: i32,
        /// The version found.
        actual: i32,
    },
    /// The same `external_id` was created before with a different body.
    #[error("workflow with external_id {external_id:?} already exists with a different {field}")]
    ExternalIdConflict {
        /// The caller's id.
        external_id: String,
        /// The first field that differs.
        field: &'static str,
    },
    /// The transition is not allowed from the workflow's current status.
    #[error("cannot {action} a workflow that is {status}")]
    InvalidTransition {
        /// The refused action.
        action: &'static str,
        /// The current status.
        status: String,
    },
    /// Input that the store refuses, naming the field.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Why it is refused.
        message: String,
    },
    /// A policy spec refused inside its write (its calendar cannot reach an SLA of it);
    /// `source.field` is the path within the spec.
    #[error("spec.{}: {}", .0.field, .0.message)]
    InvalidSpec(escalator_policy::PolicyError),
    /// A stored policy or calendar no longer validates.
    #[error("stored {entity} {id} is invalid")]
    CorruptDefinition {
        /// "policy" or "calendar".
        entity: &'static str,
        /// Its id.
        id: String,
        /// The validation error.
        #[source]
        source: escalator_policy::PolicyError,
    },
    /// A JSON column could not be (de)serialised.
    #[error("malformed JSON in {context}")]
    Json {
        /// Which column or payload.
        context: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// A value read from the database is outside what the schema allows.
    #[error("unexpected value {value:?} in {column}")]
    Decode {
        /// The column.
        column: &'static str,
        /// What was found.
        value: String,
    },
}

impl StoreError {
    /// Whether retrying the same call later may succeed (connection trouble, serialisation
    /// failures, timeouts), as opposed to a permanent refusal.
    pub fn is_transient(&self) -> bool {
        self.database_failure(transient_code)
    }

    /// Whether the database could not be reached or used at all: the connection refused,
    /// dropped or timed out, no connection free in time, the server shutting down or not
    /// accepting connections (PostgreSQL classes 08 and 57P01–57P03). Not a statement the
    /// database refused (a conflict, a deadlock, bad input).
    pub fn is_unreachable(&self) -> bool {
        self.database_failure(|code| {
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        })
    }

    /// Whether the database is away rather than refusing this statement: unreachable
    /// ([`StoreError::is_unreachable`]), out of connections (class 53: `too many connections`
    /// and other insufficient resources), or read-only (25006: a failover left the address on
    /// a standby until DNS moves). Worth waiting for, not worth retrying at once.
    pub fn is_outage(&self) -> bool {
        self.is_unreachable()
            || self.database_failure(|code| code.starts_with("53") || code == "25006")
    }

    /// A connection-level failure (I/O, pool, TLS), or a database error whose code `coded`
    /// accepts.
    fn database_failure(&self, coded: impl Fn(&str) -> bool) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Tls(_) => true,
                sqlx::Error::Database(db) => db.code().as_deref().is_some_and(coded),
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether a unique constraint refused the statement: a row with the same key exists.
    pub fn is_duplicate_key(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation())
    }
}

/// Whether a database error code means "the same statement may succeed later". PostgreSQL:
/// connection exceptions (class 08), insufficient resources (53: disk full, out of memory,
/// too many connections), serialization failure and deadlock, an administrator's or a crash's
/// shutdown and "cannot connect now" (57P01–57P03), a lock wait past `lock_timeout` (55P03),
/// and a read-only transaction (25006: a failover left the address on a standby until DNS
/// moves). These were permanent, so a batch or a planner meeting one died on its first attempt
/// or set its workflows aside, where a retry after the backoff succeeds. A statement cancelled
/// by `statement_timeout` (57014) stays permanent: a batch it cuts is worked one workflow at a
/// time instead, which a retry of the same batch would not do. SQLite: busy and locked, with
/// their extended codes.
pub(crate) fn transient_code(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "40001"
                | "40P01"
                | "57P01"
                | "57P02"
                | "57P03"
                | "55P03"
                | "25006"
                | "5"
                | "6"
                | "261"
                | "262"
                | "517"
                | "773"
        )
}

/// Shorthand for results of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_codes_are_transient_and_refusals_are_not() {
        for code in [
            "08006", "08001", "53100", "53200", "53300", "40001", "40P01", "57P01", "57P02",
            "57P03", "55P03", "25006", "5", "6", "517", "773",
        ] {
            assert!(transient_code(code), "{code}");
        }
        // unique and check violations, a syntax error, statement_timeout, SQLITE_CONSTRAINT
        for code in ["23505", "23514", "42601", "57014", "19", "2067"] {
            assert!(!transient_code(code), "{code}");
        }
    }
}
