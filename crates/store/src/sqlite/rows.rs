//! SQLite rows to model values (uuids are stored as hyphenated text).

use escalator_policy::Status;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::model::{AuditEntry, CheckRun, Notification, OutboxEntry, PolicyRecord, User, Workflow};

fn uuid(row: &SqliteRow, column: &'static str) -> Result<Uuid> {
    let text: String = row.try_get(column)?;
    Uuid::parse_str(&text).map_err(|_| StoreError::Decode {
        column,
        value: text,
    })
}

fn opt_uuid(row: &SqliteRow, column: &'static str) -> Result<Option<Uuid>> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| Uuid::parse_str(&t).map_err(|_| StoreError::Decode { column, value: t }))
        .transpose()
}

crate::rows::row_mappers!(SqliteRow);
