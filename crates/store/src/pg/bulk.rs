//! Bulk loading with COPY: how `escalator seed` writes a million workflows in seconds.

use chrono::{DateTime, Utc};

use super::PgStore;
use crate::error::Result;
use crate::model::Workflow;
use crate::time::sqlite_ts;

impl PgStore {
    /// Loads `workflows` and one `create` audit row each in one transaction, with two COPYs.
    pub(crate) async fn bulk_load(&self, workflows: &[Workflow]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let mut buf = String::with_capacity(workflows.len() * 400);
        for w in workflows {
            let fields: [Option<String>; 26] = [
                Some(w.id.to_string()),
                Some(w.external_id.clone()),
                Some(w.title.clone()),
                Some(w.kind.clone()),
                Some(w.stage.clone()),
                Some(w.status.as_str().to_owned()),
                Some(w.policy_id.clone()),
                Some(w.policy_version.to_string()),
                Some(w.assignee.clone()),
                Some(w.initiator.clone()),
                w.escalation_target.clone(),
                Some(w.escalation_level.to_string()),
                Some(w.cycle.to_string()),
                Some(ts(w.stage_started_at)),
                w.paused_at.map(ts),
                Some(w.paused_seconds.to_string()),
                Some(ts(w.warn_at)),
                Some(ts(w.due_at)),
                w.reminded_at.map(ts),
                w.escalated_at.map(ts),
                w.exhausted_at.map(ts),
                w.next_check_at.map(ts),
                Some(w.metadata.to_string()),
                Some(ts(w.created_at)),
                Some(ts(w.updated_at)),
                Some(w.version.to_string()),
            ];
            push_row(&mut buf, &fields);
        }
        let mut copy = tx
            .copy_in_raw(
                "COPY workflows (id, external_id, title, kind, stage, status, policy_id,
                     policy_version, assignee, initiator, escalation_target, escalation_level,
                     cycle, stage_started_at, paused_at, paused_seconds, warn_at, due_at,
                     reminded_at, escalated_at, exhausted_at, next_check_at, metadata,
                     created_at, updated_at, version) FROM STDIN",
            )
            .await?;
        copy.send(buf.as_bytes()).await?;
        copy.finish().await?;

        buf.clear();
        for w in workflows {
            let details =
                serde_json::json!({ "stage": w.stage, "due_at": w.due_at, "seeded": true });
            let fields: [Option<String>; 10] = [
                Some(w.id.to_string()),
                Some("create".into()),
                Some("manual".into()),
                Some("seed".into()),
                Some(w.assignee.clone()),
                Some(w.escalation_level.to_string()),
                Some(w.cycle.to_string()),
                Some(w.policy_version.to_string()),
                Some(details.to_string()),
                Some(ts(w.created_at)),
            ];
            push_row(&mut buf, &fields);
        }
        let mut copy = tx
            .copy_in_raw(
                "COPY audit_logs (workflow_id, action, reason, actor, to_assignee, level, cycle,
                     policy_version, details, created_at) FROM STDIN",
            )
            .await?;
        copy.send(buf.as_bytes()).await?;
        copy.finish().await?;
        tx.commit().await?;
        Ok(())
    }
}

fn ts(t: DateTime<Utc>) -> String {
    // the same fixed-width UTC form SQLite uses; PostgreSQL reads it as timestamptz
    sqlite_ts(t)
}

/// Appends one row in COPY text format: tab-separated, `\N` for NULL, backslash escapes.
fn push_row(buf: &mut String, fields: &[Option<String>]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            buf.push('\t');
        }
        match f {
            None => buf.push_str("\\N"),
            Some(v) => {
                for ch in v.chars() {
                    match ch {
                        '\\' => buf.push_str("\\\\"),
                        '\t' => buf.push_str("\\t"),
                        '\n' => buf.push_str("\\n"),
                        '\r' => buf.push_str("\\r"),
                        c => buf.push(c),
                    }
                }
            }
        }
    }
    buf.push('\n');
}

#[cfg(test)]
mod tests {
    use super::push_row;

    #[test]
    fn copy_rows_escape_separators_and_mark_nulls() {
        let mut buf = String::new();
        push_row(
            &mut buf,
            &[Some("a\tb\\c\nd".into()), None, Some("x".into())],
        );
        assert_eq!(buf, "a\\tb\\\\c\\nd\t\\N\tx\n");
    }
}
