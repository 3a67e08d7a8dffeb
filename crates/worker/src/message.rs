//! The words of reminders and escalations. Plain text: in-app rows and email bodies are
//! rendered by their channels, which escape as their medium needs.

use std::collections::HashMap;

use escalator_store::{User, Workflow};

/// What a message is about.
#[derive(Debug, Clone, Copy)]
pub enum Kind<'a> {
    /// The deadline is near.
    Reminder,
    /// The deadline passed; the workflow went to `target`.
    Escalation {
        /// The new assignee.
        target: &'a str,
    },
    /// Still overdue after the last escalation level.
    Exhausted,
}

impl Kind<'_> {
    /// The action name used in keys (matches the audit action).
    pub fn action(&self) -> &'static str {
        match self {
            Kind::Reminder => "remind",
            Kind::Escalation { .. } => "escalate",
            Kind::Exhausted => "exhausted",
        }
    }

    /// The `notifications.kind` value.
    pub fn notification_kind(&self) -> &'static str {
        match self {
            Kind::Reminder => "reminder",
            Kind::Escalation { .. } => "escalation",
            Kind::Exhausted => "exhausted",
        }
    }
}

/// Addressed directly, or copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The person who must act.
    To,
    /// Kept informed.
    Cc,
}

impl Role {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::To => "to",
            Role::Cc => "cc",
        }
    }
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// One line.
    pub subject: String,
    /// Plain text.
    pub body: String,
}

fn name<'a>(id: &'a str, users: &'a HashMap<String, User>) -> &'a str {
    users.get(id).map(|u| u.display_name.as_str()).unwrap_or(id)
}

/// The message `recipient` gets about `w`.
pub fn render(
    w: &Workflow,
    kind: &Kind<'_>,
    role: Role,
    recipient: Option<&User>,
    users: &HashMap<String, User>,
) -> Message {
    let title = w.title.replace(['\r', '\n'], " ");
    let greeting = recipient
        .map(|u| u.display_name.as_str())
        .unwrap_or("Hello");
    let due = w.due_at.format("%Y-%m-%d %H:%M UTC");
    match (kind, role) {
        (Kind::Reminder, _) => Message {
            subject: format!("Reminder: \"{title}\" is due {due}"),
            body: format!(
                "{greeting},\n\n\"{title}\" ({stage}) is waiting for you and is due {due}. \
                 If it is not handled by then it will be escalated.\n",
                stage = w.stage
            ),
        },
        (Kind::Escalation { .. }, Role::To) => Message {
            subject: format!("Escalated to you: \"{title}\" missed its deadline"),
            body: format!(
                "{greeting},\n\n\"{title}\" ({stage}) was assigned to {previous} and was due \
                 {due}. It has been escalated to you.\n",
                stage = w.stage,
                previous = name(&w.assignee, users),
            ),
        },
        (Kind::Escalation { target }, Role::Cc) => Message {
            subject: format!("Escalated: \"{title}\" went to {}", name(target, users)),
            body: format!(
                "{greeting},\n\n\"{title}\" ({stage}) missed its deadline of {due} and has been \
                 escalated from {previous} to {new}.\n",
                stage = w.stage,
                previous = name(&w.assignee, users),
                new = name(target, users),
            ),
        },
        (Kind::Exhausted, _) => Message {
            subject: format!("Still overdue: \"{title}\""),
            body: format!(
                "{greeting},\n\n\"{title}\" ({stage}), assigned to {assignee}, is still overdue \
                 (due {due}) after its last escalation level.\n",
                stage = w.stage,
                assignee = name(&w.assignee, users),
            ),
        },
    }
}
