//! What a create or a transition does to a workflow, decided once for both backends. The
//! backends only lock, load and write; the arithmetic lives here.

use chrono::{DateTime, Utc};
use escalator_policy::{Calendar, CalendarSpec, Policy, PolicySpec, Status};
use uuid::Uuid;

use crate::effects::NewAudit;
use crate::error::{Result, StoreError};
use crate::model::{
    Created, NewWorkflow, PolicyRecord, Transition, TransitionContext, User, Workflow,
};

/// The actor recorded for changes made by the SLA clock.
pub const SLA_ACTOR: &str = "escalator";

/// The delivery channels a user may choose besides in-app.
pub const CHANNELS: [&str; 4] = ["email", "sms", "slack", "webhook"];

/// `users.channels` as stored (a JSON array, NULL for the default); unreadable text counts as
/// the default rather than failing every batch that needs this user.
pub fn channels_from_text(text: Option<String>) -> Option<Vec<String>> {
    serde_json::from_str(text.as_deref()?).ok()
}

/// Checks a channel list: known names, no duplicates. The error names the bad entry.
pub fn validate_channels(channels: &[String]) -> std::result::Result<(), String> {
    for (i, c) in channels.iter().enumerate() {
        if !CHANNELS.contains(&c.as_str()) {
            return Err(format!(
                "unknown channel {c:?}: expected one of {}",
                CHANNELS.join(", ")
            ));
        }
        if channels[..i].contains(c) {
            return Err(format!("channel {c:?} is listed twice"));
        }
    }
    Ok(())
}

/// The longest identifier accepted (user ids, external ids, policy and calendar ids).
/// Identifiers become index keys (assignees, inbox recipients, unique keys), and PostgreSQL
/// refuses an index entry past about 2.7 kB: a longer id would be stored and then fail every
/// check that escalates its workflow. The same limit holds for policies' user targets.
pub const MAX_ID_CHARS: usize = escalator_policy::MAX_ID_CHARS;

/// Checks an identifier a new record takes or a change names: [`check_id`], and no
/// surrounding whitespace (`" bob"` was a user of its own beside `bob`, and nobody could tell
/// them apart in a list). Reads and lookups take [`check_id`] alone, so that ids stored before
/// this rule can still be read, changed and deactivated.
pub fn check_new_id(field: &'static str, value: &str) -> Result<()> {
    check_id(field, value)?;
    if value.trim() != value {
        return Err(StoreError::Invalid {
            field,
            message: format!("{value:?} starts or ends with whitespace"),
        });
    }
    Ok(())
}

/// Checks an identifier: not blank, at most [`MAX_ID_CHARS`] characters.
pub fn check_id(field: &'static str, value: &str) -> Result<()> {
    let message = if value.trim().is_empty() {
        "must not be empty".to_owned()
    } else if value.chars().count() > MAX_ID_CHARS {
        format!(
            "must be at most {MAX_ID_CHARS} characters (got {})",
            value.chars().count()
        )
    } else {
        return Ok(());
    };
    Err(StoreError::Invalid { field, message })
}

/// The first of the users just written (`$1`, their ids) whose manager chain leads back to
/// them, as the user writes run it on PostgreSQL; none when the chart is acyclic. Chains are
/// walked at most 1,000 deep: deep enough for any org chart (the api refuses chains deeper
/// than 64, yet two concurrent writes could join two such chains into a longer loop), and a
/// cycle written before this check existed, above the users written, costs at most 1,000 rows
/// per user written.
pub(crate) const MANAGER_CYCLE_PG: &str = "WITH RECURSIVE chain (start, at, depth) AS (
        SELECT u.id, u.manager_id, 1 FROM users u
        WHERE u.id = ANY($1) AND u.manager_id IS NOT NULL
        UNION ALL
        SELECT c.start, u.manager_id, c.depth + 1 FROM chain c JOIN users u ON u.id = c.at
        WHERE u.manager_id IS NOT NULL AND c.at <> c.start AND c.depth < 1000)
    SELECT start FROM chain WHERE at = start ORDER BY start LIMIT 1";

/// [`MANAGER_CYCLE_PG`] on SQLite (`?1`: the ids as a JSON array).
pub(crate) const MANAGER_CYCLE_SQLITE: &str = "WITH RECURSIVE chain (start, at, depth) AS (
        SELECT u.id, u.manager_id, 1 FROM users u
        WHERE u.id IN (SELECT value FROM json_each(?1)) AND u.manager_id IS NOT NULL
        UNION ALL
        SELECT c.start, u.manager_id, c.depth + 1 FROM chain c JOIN users u ON u.id = c.at
        WHERE u.manager_id IS NOT NULL AND c.at <> c.start AND c.depth < 1000)
    SELECT start FROM chain WHERE at = start ORDER BY start LIMIT 1";

/// Workflows exhausted because their `manager` level had no one to escalate to (no manager,
/// or an inactive one) can move on once their assignee has an active manager: a user write
/// makes the open, exhausted workflows of every user it gave an active manager they did not
/// have (`$1`, [`given_a_manager`]), or whose manager it made active (`$3`, [`reactivated`]),
/// due at `$2`, in its own transaction (any write of a user with an active manager, an HR
/// sync, used to, and a repeating policy renotified at every one): the
/// unscheduled ones (a `stop` policy), and those below their policy's last level whose next
/// renotification (a `repeat` policy) lies later, which used to wait for it, up to a day. The
/// next check escalates them (a resolved target wins over the recorded exhaustion); one
/// exhausted at the end of its chain is evaluated once and unscheduled again.
pub(crate) const REARM_EXHAUSTED_PG: &str = "UPDATE workflows w SET next_check_at = $2
    WHERE assignee IN (SELECT u.id FROM users u JOIN users m ON m.id = u.manager_id AND m.active
                       WHERE u.id = ANY($1) OR m.id = ANY($3))
      AND status IN ('pending', 'escalated') AND exhausted_at IS NOT NULL
      AND (next_check_at IS NULL
           OR (next_check_at > $2
               AND escalation_level < (SELECT jsonb_array_length(p.spec->'levels')
                                       FROM escalation_policies p
                                       WHERE p.id = w.policy_id AND p.version = w.policy_version)))";

/// [`REARM_EXHAUSTED_PG`] on SQLite (`?1`, `?3`: the ids as JSON arrays).
pub(crate) const REARM_EXHAUSTED_SQLITE: &str = "UPDATE workflows SET next_check_at = ?2
    WHERE assignee IN (SELECT u.id FROM users u JOIN users m ON m.id = u.manager_id AND m.active
                       WHERE u.id IN (SELECT value FROM json_each(?1))
                          OR m.id IN (SELECT value FROM json_each(?3)))
      AND status IN ('pending', 'escalated') AND exhausted_at IS NOT NULL
      AND (next_check_at IS NULL
           OR (next_check_at > ?2
               AND escalation_level < (SELECT json_array_length(p.spec, '$.levels')
                                       FROM escalation_policies p
                                       WHERE p.id = workflows.policy_id
                                         AND p.version = workflows.policy_version)))";

/// Workflows exhausted because a `user:` target had left (a policy level from the one they
/// wait at on, or, at level 0, the workflow's own `escalation_target`) can move on once that
/// user is back: a user write makes due at `$2`, under the same conditions as
/// [`REARM_EXHAUSTED_PG`], the open exhausted workflows that one of `$1` may escalate to, the
/// users it made active that were inactive or missing before it ([`reactivated`]). Any write
/// of any user named anywhere in a policy used to re-arm them, and a repeating policy then
/// renotified at every HR sync. Any later level counts, not only the next: a decision passes
/// over levels naming the holder or someone gone to the first that resolves, so a workflow
/// whose next level was gone too waited on a later one, and stayed unscheduled for good.
pub(crate) const REARM_TARGETS_PG: &str = "UPDATE workflows w SET next_check_at = $2
    WHERE status IN ('pending', 'escalated') AND exhausted_at IS NOT NULL
      AND (next_check_at IS NULL
           OR (next_check_at > $2
               AND escalation_level < (SELECT jsonb_array_length(p.spec->'levels')
                                       FROM escalation_policies p
                                       WHERE p.id = w.policy_id AND p.version = w.policy_version)))
      AND ((escalation_level = 0 AND escalation_target = ANY($1))
           OR EXISTS (SELECT 1 FROM escalation_policies p,
                          jsonb_array_elements(p.spec->'levels') WITH ORDINALITY AS l(v, n)
                      WHERE p.id = w.policy_id AND p.version = w.policy_version
                        AND l.n > w.escalation_level
                        AND l.v->>'target'
                            IN (SELECT 'user:' || x FROM unnest($1::text[]) x)))";

/// [`REARM_TARGETS_PG`] on SQLite (`?1`: the ids as a JSON array).
pub(crate) const REARM_TARGETS_SQLITE: &str = "UPDATE workflows SET next_check_at = ?2
    WHERE status IN ('pending', 'escalated') AND exhausted_at IS NOT NULL
      AND (next_check_at IS NULL
           OR (next_check_at > ?2
               AND escalation_level < (SELECT json_array_length(p.spec, '$.levels')
                                       FROM escalation_policies p
                                       WHERE p.id = workflows.policy_id
                                         AND p.version = workflows.policy_version)))
      AND ((escalation_level = 0
            AND escalation_target IN (SELECT value FROM json_each(?1)))
           OR EXISTS (SELECT 1 FROM escalation_policies p, json_each(p.spec, '$.levels') AS l
                      WHERE p.id = workflows.policy_id AND p.version = workflows.policy_version
                        AND l.key >= workflows.escalation_level
                        AND json_extract(l.value, '$.target')
                            IN (SELECT 'user:' || value FROM json_each(?1))))";

/// A written user as it was before the write.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct UserBefore {
    pub(crate) id: String,
    pub(crate) manager_id: Option<String>,
    pub(crate) active: bool,
}

/// The users of a write who are active after it and were not before (inactive, or not there
/// at all): only their return can give an exhausted workflow a target it lacked.
pub(crate) fn reactivated(users: &[User], before: &[UserBefore]) -> Vec<String> {
    users
        .iter()
        .filter(|u| u.active && !before.iter().any(|b| b.id == u.id && b.active))
        .map(|u| u.id.clone())
        .collect()
}

/// The users of a write given a manager they did not have before it (one where there was
/// none, or another): only then may their workflows waiting for a manager have one now.
pub(crate) fn given_a_manager(users: &[User], before: &[UserBefore]) -> Vec<String> {
    users
        .iter()
        .filter(|u| {
            u.manager_id.is_some()
                && before
                    .iter()
                    .find(|b| b.id == u.id)
                    .is_none_or(|b| b.manager_id != u.manager_id)
        })
        .map(|u| u.id.clone())
        .collect()
}

/// The error of a user write that would make `id` its own (indirect) manager: "escalate to
/// the manager" would go round for ever.
pub(crate) fn manager_cycle(id: &str) -> StoreError {
    StoreError::Invalid {
        field: "manager_id",
        message: format!("user {id:?} would report to itself: the manager chain would be circular"),
    }
}

/// Checks an email address enough that a relay will take it: `local@domain`, one `@`, no
/// spaces, control characters or angle brackets, at most 254 characters; an ASCII local part
/// of dot-separated words (no leading, trailing or doubled dot: `ana..lopez@` cannot be
/// sent); a domain of dot-separated labels, none empty or starting or ending with `-` (a
/// non-ASCII domain is sent in its ASCII form). An unusable address used to be stored as
/// given and then left out of every message sent to that user.
pub fn check_email(field: &'static str, value: &str) -> Result<()> {
    let invalid = |message: &str| {
        Err(StoreError::Invalid {
            field,
            message: format!("{message} (got {value:?}; null removes the address)"),
        })
    };
    if value.chars().count() > 254 {
        return invalid("must be at most 254 characters");
    }
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
    {
        return invalid("must be a bare address such as ana@example.com");
    }
    let Some((local, domain)) = value.split_once('@') else {
        return invalid("must be an address such as ana@example.com");
    };
    if !local.is_ascii() {
        return invalid(
            "must have an ASCII part before the @ (most relays refuse others; a non-ASCII \
             domain is fine)",
        );
    }
    // what the mail library sends (a dot-atom local part of at most 64 characters; labels of
    // at most 63, letters, digits and hyphens when ASCII): an address it cannot parse was
    // accepted here, then left out of every message, a copy recipient taking the direct
    // recipient's place and text
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
    let local_ok = local.len() <= 64
        && local
            .split('.')
            .all(|w| !w.is_empty() && w.chars().all(atext));
    let domain_ok = domain.split('.').all(|w| {
        !w.is_empty()
            && !w.starts_with('-')
            && !w.ends_with('-')
            && w.chars().count() <= 63
            && (!w.is_ascii() || w.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    });
    if local_ok && domain_ok {
        Ok(())
    } else {
        invalid("must be an address such as ana@example.com")
    }
}

/// Checks a user's `slack`: a member id or handle (`U024BE7LH`, `ana.lima`: letters, digits,
/// `.`, `_`, `-`, at most 80), mentioned in messages as `<@…>`, or an `https://` URL of the
/// user's own incoming webhook. Anything else could close the mention and ping a channel
/// (`<!channel>`) or plant a link in the shared channel's messages.
pub fn check_slack(field: &'static str, value: &str) -> Result<()> {
    let invalid = |message: &str| {
        Err(StoreError::Invalid {
            field,
            message: format!("{message} (got {value:?}; null removes it)"),
        })
    };
    if value.contains("://") {
        if !value.starts_with("https://") {
            return invalid("a webhook must be an https:// URL");
        }
        if value.len() > 2_000 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return invalid("must be a webhook URL without spaces, at most 2,000 characters");
        }
        return Ok(());
    }
    let ok = (1..=80).contains(&value.chars().count())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        invalid(
            "must be a Slack member id or handle (letters, digits, '.', '_', '-') \
             or an https:// webhook URL",
        )
    }
}

/// Checks a phone number enough that an SMS provider may take it: an optional leading `+`,
/// then 7 to 15 digits (E.164), spaces, dots, dashes and parentheses between them allowed, at
/// most 32 characters in all. Anything was stored (an empty string, "call me", 60 KB of
/// text), and each SMS to that user then died at the provider.
pub fn check_phone(field: &'static str, value: &str) -> Result<()> {
    let digits = value.chars().filter(char::is_ascii_digit).count();
    let body = value.strip_prefix('+').unwrap_or(value);
    let ok = value.chars().count() <= 32
        && (7..=15).contains(&digits)
        && body
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '(')
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || " .-()".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field,
            message: format!(
                "must be a phone number: an optional +, then 7 to 15 digits (spaces, dots, \
                 dashes and parentheses allowed between them), at most 32 characters (got \
                 {value:?}; null removes it)"
            ),
        })
    }
}

/// How far ahead of this machine's clock a real check's `as_of` may be: clock skew between
/// the caller and the service, no more.
pub const AS_OF_SKEW: chrono::Duration = chrono::Duration::minutes(1);

/// Refuses a real (writing) check dated in the future: it would remind and escalate workflows
/// before their deadlines. A dry run may look ahead.
pub fn check_real_as_of(as_of: DateTime<Utc>, now: DateTime<Utc>) -> Result<()> {
    not_ahead(
        "as_of",
        as_of,
        now + AS_OF_SKEW,
        now,
        "a real check would act before the deadlines (a dry run can look ahead)",
    )
}

/// Refuses `at` (the value of `field`) past `latest`, saying how far ahead of `now` it is and
/// `why` that is wrong.
fn not_ahead(
    field: &'static str,
    at: DateTime<Utc>,
    latest: DateTime<Utc>,
    now: DateTime<Utc>,
    why: &str,
) -> Result<()> {
    if at <= latest {
        return Ok(());
    }
    Err(StoreError::Invalid {
        field,
        message: format!("is {}s in the future: {why}", (at - now).num_seconds()),
    })
}

/// How far ahead of this machine's clock a new workflow's `stage_started_at` may be: clock
/// skew between the caller and the service.
pub const STARTED_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// Refuses a stage said to start in the future: its SLA clock would not run until then, so a
/// typo (2062 for 2026) or local time sent as UTC would silence its reminders and escalations.
fn check_started(started: DateTime<Utc>, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let why = "a stage's SLA clock starts when it starts (omit it for now)";
    not_ahead("stage_started_at", started, now + STARTED_SKEW, now, why)?;
    Ok(started)
}

/// Checks the caller-supplied fields of a new workflow, naming the first bad one.
pub fn validate_new(new: &NewWorkflow) -> Result<()> {
    let required = [
        ("external_id", &new.external_id),
        ("title", &new.title),
        ("kind", &new.kind),
        ("stage", &new.stage),
        ("assignee", &new.assignee),
        ("initiator", &new.initiator),
    ];
    for (field, value) in required {
        if value.trim().is_empty() {
            return Err(StoreError::Invalid {
                field,
                message: "must not be empty".into(),
            });
        }
    }
    check_new_id("external_id", &new.external_id)?;
    check_new_id("assignee", &new.assignee)?;
    check_new_id("initiator", &new.initiator)?;
    if let Some(target) = &new.escalation_target {
        check_new_id("escalation_target", target)?;
    }
    if new.escalation_target.as_deref() == Some(new.assignee.as_str()) {
        return Err(StoreError::Invalid {
            field: "escalation_target",
            message: "must differ from the assignee".into(),
        });
    }
    if !new.metadata.is_object() {
        return Err(StoreError::Invalid {
            field: "metadata",
            message: "must be a JSON object".into(),
        });
    }
    Ok(())
}

/// Builds the row and its `create` audit entry for a new workflow.
pub fn plan_create(
    new: &NewWorkflow,
    policy: &PolicyRecord,
    calendar: Option<&Calendar>,
    now: DateTime<Utc>,
) -> Result<(Workflow, NewAudit)> {
    validate_new(new)?;
    let started = match new.stage_started_at {
        Some(t) => check_started(crate::time::check_instant("stage_started_at", t)?, now)?,
        None => now,
    };
    let deadlines = deadlines_for(&policy.policy, calendar, started, 0, 0)?;
    let workflow = Workflow {
        id: Uuid::new_v4(),
        external_id: new.external_id.clone(),
        title: new.title.clone(),
        kind: new.kind.clone(),
        stage: new.stage.clone(),
        status: Status::Pending,
        policy_id: policy.id.clone(),
        policy_version: policy.version,
        assignee: new.assignee.clone(),
        initiator: new.initiator.clone(),
        escalation_target: new.escalation_target.clone(),
        escalation_level: 0,
        cycle: 1,
        stage_started_at: started,
        paused_at: None,
        paused_seconds: 0,
        warn_at: deadlines.warn_at,
        due_at: deadlines.due_at,
        reminded_at: None,
        escalated_at: None,
        exhausted_at: None,
        next_check_at: Some(deadlines.warn_at),
        metadata: new.metadata.clone(),
        created_at: now,
        updated_at: now,
        version: 1,
    };
    let audit = NewAudit {
        workflow_id: workflow.id,
        action: "create",
        reason: "api",
        actor: new.initiator.clone(),
        from_assignee: None,
        to_assignee: Some(workflow.assignee.clone()),
        level: 0,
        cycle: 1,
        policy_version: policy.version,
        elapsed_seconds: None,
        check_run_id: None,
        // what an idempotent create is compared with once the workflow has moved on
        details: serde_json::json!({
            "stage": workflow.stage,
            "due_at": workflow.due_at,
            "stage_started_at": workflow.stage_started_at,
        }),
    };
    Ok((workflow, audit))
}

/// What a workflow was created with, read from its `create` audit row: comparable with a
/// repeated create after a reassignment, an escalation or an advance changed the workflow
/// itself. Rows written before a field was recorded leave it `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreatedWith {
    /// The first assignee (the row's `to_assignee`).
    pub assignee: Option<String>,
    /// The first stage (`details.stage`).
    pub stage: Option<String>,
    /// When the first stage started (`details.stage_started_at`).
    pub stage_started_at: Option<DateTime<Utc>>,
}

impl CreatedWith {
    /// From the `create` row's `to_assignee` and `details` (JSON text), if there is one.
    pub fn from_audit(row: Option<(Option<String>, String)>) -> Self {
        let Some((assignee, details)) = row else {
            return CreatedWith::default();
        };
        let details: serde_json::Value = serde_json::from_str(&details).unwrap_or_default();
        CreatedWith {
            assignee,
            stage: details["stage"].as_str().map(str::to_owned),
            stage_started_at: details["stage_started_at"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

/// For an idempotent create of a workflow that exists already: the stored one when `new` is
/// the same create, else a conflict naming the first field that differs.
pub fn same_or_conflict(
    new: &NewWorkflow,
    existing: Workflow,
    created: &CreatedWith,
) -> Result<Created> {
    match first_difference(new, &existing, created) {
        None => Ok(Created {
            workflow: existing,
            created: false,
        }),
        Some(field) => Err(StoreError::ExternalIdConflict {
            external_id: new.external_id.clone(),
            field,
        }),
    }
}

/// For an idempotent create: the first field of `new` that differs from the stored workflow.
/// The stage, assignee and start it was created with come from its `create` audit row
/// (`created`), which stay comparable after a reassignment, an escalation or an advance
/// changed the current ones; without them only a first-cycle workflow can be compared.
pub fn first_difference(
    new: &NewWorkflow,
    existing: &Workflow,
    created: &CreatedWith,
) -> Option<&'static str> {
    let first_cycle = existing.cycle == 1;
    let stage_then = created
        .stage
        .as_deref()
        .or(first_cycle.then_some(existing.stage.as_str()));
    let started_then = created
        .stage_started_at
        .or(first_cycle.then_some(existing.stage_started_at));
    let policy_id = new.policy_id.as_deref().unwrap_or("default");
    if new.title != existing.title {
        Some("title")
    } else if new.kind != existing.kind {
        Some("kind")
    } else if new.initiator != existing.initiator {
        Some("initiator")
    } else if new.escalation_target != existing.escalation_target {
        Some("escalation_target")
    } else if policy_id != existing.policy_id {
        Some("policy_id")
    } else if new.metadata != existing.metadata {
        Some("metadata")
    } else if stage_then.is_some_and(|stage| new.stage != stage) {
        Some("stage")
    } else if match created.assignee.as_deref() {
        Some(first) => new.assignee != first,
        None => first_cycle && existing.escalation_level == 0 && new.assignee != existing.assignee,
    } {
        Some("assignee")
    } else if new
        .stage_started_at
        .zip(started_then)
        .is_some_and(|(t, then)| crate::time::micros(t) != then)
    {
        Some("stage_started_at")
    } else {
        None
    }
}

/// A transition whose idempotency key the workflow's trail already holds (`done`): the same
/// request again — a retry whose answer was lost — is answered with the workflow as it is now
/// and applies nothing (a second `advance` started yet another cycle, a second `hold` was a
/// 409); the key on a different request is refused naming it. Checked before the version, which
/// the first attempt moved on.
pub fn replay(
    current: Workflow,
    transition: &Transition,
    done: &crate::model::DoneUnderKey,
) -> Result<Workflow> {
    let same = done.action == transition.action()
        && match transition {
            Transition::Reassign { to } => done.to_assignee.as_deref() == Some(to.as_str()),
            Transition::Advance { stage, assignee } => {
                done.stage.as_deref() == Some(stage.as_str())
                    && assignee
                        .as_deref()
                        .is_none_or(|a| done.to_assignee.as_deref() == Some(a))
            }
            _ => true,
        };
    if same {
        return Ok(current);
    }
    Err(StoreError::Invalid {
        field: "Idempotency-Key",
        message: format!(
            "was used for another request on this workflow (a {} to {}, stage {:?}); \
             give each request a key of its own",
            done.action,
            done.to_assignee.as_deref().unwrap_or("-"),
            done.stage.as_deref().unwrap_or("-")
        ),
    })
}

/// Applies a transition to `current`, returning the new row (version + 1) and its audit entry.
pub fn plan_transition(
    current: &Workflow,
    transition: &Transition,
    ctx: &TransitionContext,
    policy: &Policy,
    calendar: Option<&Calendar>,
) -> Result<(Workflow, NewAudit)> {
    if let Some(expected) = ctx.expected_version
        && expected != current.version
    {
        return Err(StoreError::VersionConflict {
            id: current.id,
            expected,
            actual: current.version,
        });
    }
    // no earlier than the workflow's last change: the instant is taken before the row lock, and
    // a transition that waited on a batch holding the workflow (escalating it) was dated
    // before the batch's change — its audit row sorted before the escalation it followed, and
    // a hold counted the wait as paused time of the new level
    let now = ctx.now.max(current.updated_at);
    let refuse = || StoreError::InvalidTransition {
        action: transition.action(),
        status: current.status.as_str().to_owned(),
    };
    let mut next = current.clone();
    next.version += 1;
    next.updated_at = now;
    let mut details = serde_json::Map::new();
    match transition {
        Transition::Complete | Transition::Cancel => {
            if !(current.status.is_open() || current.status == Status::OnHold) {
                return Err(refuse());
            }
            next.status = if *transition == Transition::Complete {
                Status::Completed
            } else {
                Status::Cancelled
            };
            next.paused_at = None;
            next.next_check_at = None;
        }
        Transition::Hold => {
            if !current.status.is_open() {
                return Err(refuse());
            }
            next.status = Status::OnHold;
            next.paused_at = Some(now);
            next.next_check_at = None;
        }
        Transition::Resume => {
            let Some(paused_at) = current
                .paused_at
                .filter(|_| current.status == Status::OnHold)
            else {
                return Err(refuse());
            };
            let paused = escalator_policy::paused_seconds(paused_at, now, calendar);
            next.paused_seconds = current.paused_seconds + paused;
            next.paused_at = None;
            next.status = if current.escalation_level > 0 {
                Status::Escalated
            } else {
                Status::Pending
            };
            let d = deadlines_for(
                policy,
                calendar,
                current.level_started_at(),
                current.escalation_level,
                next.paused_seconds,
            )?;
            next.warn_at = d.warn_at;
            next.due_at = d.due_at;
            next.next_check_at =
                open_next_check(&next).or(exhausted_next_check(&next, policy, now));
            details.insert("paused_seconds".into(), paused.into());
        }
        Transition::Reassign { to } => {
            if !(current.status.is_open() || current.status == Status::OnHold) {
                return Err(refuse());
            }
            check_new_id("to", to)?;
            if *to == current.assignee {
                return Err(StoreError::Invalid {
                    field: "to",
                    message: format!("workflow is already assigned to {to}"),
                });
            }
            next.assignee = to.clone();
            // an exhausted workflow waiting for nobody may now have a target (the new
            // assignee's manager): looked at again, as a user write with a manager does; also
            // under a repeating policy, whose next renotification could be a day away
            if next.status.is_open() && (next.next_check_at.is_none() || levels_left(&next, policy))
            {
                next.next_check_at = exhausted_next_check(&next, policy, now);
            }
        }
        Transition::Advance { stage, assignee } => {
            // also from a hold, as complete, cancel and reassign are: the next stage starts a
            // clock of its own, and a resume before it let a check remind or escalate the
            // stage being left
            if !(current.status.is_open() || current.status == Status::OnHold) {
                return Err(refuse());
            }
            if stage.trim().is_empty() {
                return Err(StoreError::Invalid {
                    field: "stage",
                    message: "must not be empty".into(),
                });
            }
            if let Some(a) = assignee {
                check_new_id("assignee", a)?;
            }
            details.insert("from_stage".into(), current.stage.clone().into());
            next.stage = stage.clone();
            if let Some(a) = assignee {
                next.assignee = a.clone();
            }
            next.status = Status::Pending;
            next.paused_at = None;
            next.cycle += 1;
            next.escalation_level = 0;
            next.stage_started_at = now;
            next.paused_seconds = 0;
            next.reminded_at = None;
            next.escalated_at = None;
            next.exhausted_at = None;
            let d = deadlines_for(policy, calendar, now, 0, 0)?;
            next.warn_at = d.warn_at;
            next.due_at = d.due_at;
            next.next_check_at = Some(d.warn_at);
        }
    }
    if let Some(c) = &ctx.comment {
        details.insert("comment".into(), c.clone().into());
    }
    if let Some(k) = &ctx.idempotency_key {
        details.insert("idempotency_key".into(), k.clone().into());
    }
    details.insert("stage".into(), next.stage.clone().into());
    let audit = NewAudit {
        workflow_id: current.id,
        action: transition.action(),
        reason: ctx.reason.as_str(),
        actor: ctx.actor.clone(),
        from_assignee: Some(current.assignee.clone()),
        to_assignee: Some(next.assignee.clone()),
        level: next.escalation_level,
        cycle: next.cycle,
        policy_version: current.policy_version,
        elapsed_seconds: Some((now - current.level_started_at()).num_seconds().max(0)),
        check_run_id: None,
        details: serde_json::Value::Object(details),
    };
    Ok((next, audit))
}

/// The next check of an open workflow: its unsent warning, else its deadline, else (chain
/// exhausted and stopped) never.
pub fn open_next_check(w: &Workflow) -> Option<DateTime<Utc>> {
    escalator_policy::next_check_at(&w.snapshot(None))
}

/// The next check of an open, exhausted workflow after a transition that changes what its
/// evaluation may find (resume, reassign): a repeating policy's next renotification, `every`
/// from `now`; otherwise `now`, so that the next check looks again (a target that now resolves
/// wins; at the end of its chain it is unscheduled again). None for others. Resume used to
/// leave an exhausted workflow unscheduled for good: a repeating policy's renotifications
/// stopped after a hold, and a `no_target` exhaustion stayed stuck after a reassign.
///
/// A workflow exhausted below its last level (a target that did not resolve: `no_target`) is
/// looked at `now` under a repeating policy too: its next renotification may be a day away,
/// and the target the transition may have given it would wait for it.
///
/// One whose deadline lies ahead, past the instant its exhaustion was recorded for (a resume
/// measured it again on a calendar that gained a holiday meanwhile), is looked at when it
/// passes: looked at now, it was found not due and unscheduled for good (nothing escalates an
/// exhausted workflow before its deadline). A pause alone never moves it there: it moves the
/// deadline by the time on hold, which began after the breach.
pub fn exhausted_next_check(
    w: &Workflow,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let exhausted = w.exhausted_at.filter(|_| w.status.is_open())?;
    if w.due_at > now.max(exhausted) {
        return Some(w.due_at);
    }
    match policy.repeat_every_seconds() {
        Some(every_seconds) if !levels_left(w, policy) => {
            Some(escalator_policy::seconds_after(now, every_seconds))
        }
        _ => Some(now),
    }
}

/// Whether `w` is exhausted below its policy's last level: its chain stopped for want of a
/// target, not at its end, so a target that appears moves it on.
fn levels_left(w: &Workflow, policy: &Policy) -> bool {
    w.exhausted_at.is_some()
        && u32::try_from(w.escalation_level).unwrap_or(0) < policy.level_count()
}

fn deadlines_for(
    policy: &Policy,
    calendar: Option<&Calendar>,
    started: DateTime<Utc>,
    level: i32,
    paused: i64,
) -> Result<escalator_policy::Deadlines> {
    let lvl = u32::try_from(level).unwrap_or(0);
    escalator_policy::schedule(started, paused, lvl, policy, calendar).ok_or(StoreError::Invalid {
        field: "escalation_level",
        message: format!("policy has no level {level}"),
    })
}

/// Refuses `policy` when `calendar`, its `calendar_id`, cannot reach its longest SLA (a
/// deadline that never comes: its workflows would never be reminded or escalated). Run inside
/// the write, under the calendar's lock, so that a calendar edited at the same moment cannot
/// pass its own check against the policies it saw before this one was written.
pub fn check_reachable(policy: &Policy, calendar: &Calendar, now: DateTime<Utc>) -> Result<()> {
    policy
        .check_reachable_on(calendar, now)
        .map_err(StoreError::InvalidSpec)
}

/// Refuses `calendar` when one of the policy versions measured on it could no longer reach
/// its longest SLA: the counterpart of [`check_reachable`], inside the calendar's write.
pub fn check_calendar_keeps(
    calendar: &Calendar,
    policies: &[PolicyRecord],
    now: DateTime<Utc>,
) -> Result<()> {
    for record in policies {
        if let Err(e) = record.policy.check_reachable_on(calendar, now) {
            return Err(StoreError::Invalid {
                field: "windows",
                message: format!(
                    "policy {:?} version {} is measured on this calendar, and its {}: {}",
                    record.id, record.version, e.field, e.message
                ),
            });
        }
    }
    Ok(())
}

/// Decodes a stored policy spec, checking what the clock needs ([`Policy::stored`]), not the
/// rules for writing one.
pub fn policy_from_json(id: &str, value: serde_json::Value) -> Result<Policy> {
    let spec: PolicySpec = serde_json::from_value(value).map_err(|source| StoreError::Json {
        context: "escalation_policies.spec",
        source,
    })?;
    Policy::stored(spec).map_err(|source| StoreError::CorruptDefinition {
        entity: "policy",
        id: id.to_owned(),
        source,
    })
}

/// Decodes and re-validates a stored calendar spec.
pub fn calendar_from_json(id: &str, value: serde_json::Value) -> Result<Calendar> {
    let spec: CalendarSpec = serde_json::from_value(value).map_err(|source| StoreError::Json {
        context: "calendars.spec",
        source,
    })?;
    Calendar::new(spec).map_err(|source| StoreError::CorruptDefinition {
        entity: "calendar",
        id: id.to_owned(),
        source,
    })
}
