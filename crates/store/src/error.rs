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
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Tls(_) => true,
                sqlx::Error::Database(db) => matches!(
                    db.code().as_deref(),
                    // serialization_failure, deadlock_detected, admin shutdown, cannot connect now,
                    // SQLITE_BUSY, SQLITE_LOCKED
                    Some("40001" | "40P01" | "57P01" | "57P03" | "5" | "6" | "517")
                ),
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

/// Shorthand for results of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
