//! PostgreSQL rows to model values.

use escalator_policy::Status;
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::model::{AuditEntry, CheckRun, Notification, OutboxEntry, PolicyRecord, User, Workflow};

fn uuid(row: &PgRow, column: &'static str) -> Result<Uuid> {
    Ok(row.try_get(column)?)
}

fn opt_uuid(row: &PgRow, column: &'static str) -> Result<Option<Uuid>> {
    Ok(row.try_get(column)?)
}

crate::rows::row_mappers!(PgRow);
