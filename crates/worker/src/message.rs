//! The words of reminders and escalations, from the templates (`escalator_notify::Templates`,
//! built in or from `ESCALATOR_TEMPLATES_DIR`), and the process-wide message settings.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use escalator_notify::Templates;
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
    /// The template set used for a recipient in `role`.
    pub fn template(&self, role: Role) -> &'static str {
        match (self, role) {
            (Kind::Reminder, _) => "reminder",
            (Kind::Escalation { .. }, Role::To) => "escalation_to",
            (Kind::Escalation { .. }, Role::Cc) => "escalation_cc",
            (Kind::Exhausted, _) => "exhausted",
        }
    }

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

/// How messages are written: the templates, and when escalations to one person become a
/// digest.
#[derive(Debug, Clone)]
pub struct MessageSettings {
    /// The templates.
    pub templates: Templates,
    /// More escalations than this to one person on one channel in one check run become one
    /// digest; 0 turns digests off.
    pub digest_threshold: u32,
    /// Every escalation also emits one `event` delivery (a CloudEvent of type
    /// `dev.escalator.workflow.escalated` to the configured webhook), whoever its recipients
    /// are.
    pub events: bool,
}

impl Default for MessageSettings {
    fn default() -> Self {
        MessageSettings {
            templates: Templates::builtin(),
            digest_threshold: 5,
            events: false,
        }
    }
}

/// Process-wide: set once at start-up ([`configure`]) from the configuration, so that the
/// engine, which the api and the CLI also build, needs no new constructor argument.
static SETTINGS: RwLock<Option<Arc<MessageSettings>>> = RwLock::new(None);

/// Installs the message settings of this process (at start-up).
pub fn configure(settings: MessageSettings) {
    if let Ok(mut s) = SETTINGS.write() {
        *s = Some(Arc::new(settings));
    }
}

/// The settings in force: those installed by [`configure`], else the defaults.
pub fn settings() -> Arc<MessageSettings> {
    SETTINGS
        .read()
        .ok()
        .and_then(|s| s.clone())
        .unwrap_or_else(|| Arc::new(MessageSettings::default()))
}

/// A rendered message (the parts every recipient gets; the others are rendered on demand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// One line, without line breaks.
    pub subject: String,
    /// Plain text.
    pub body: String,
}

fn name<'a>(id: &'a str, users: &'a HashMap<String, User>) -> &'a str {
    users.get(id).map(|u| u.display_name.as_str()).unwrap_or(id)
}

/// What one recipient is told about one workflow.
#[derive(Debug)]
pub struct Renderer<'t> {
    templates: &'t Templates,
    template: &'static str,
    /// Built once as a template value: every part renders from it without converting it again.
    ctx: minijinja::Value,
    greeting: &'t str,
    title: &'t str,
    stage: &'t str,
    kind: &'static str,
    due: String,
    previous: &'t str,
    new: &'t str,
    workflow_id: uuid::Uuid,
}

impl<'t> Renderer<'t> {
    /// The message `recipient` (in `role`) gets about `w`.
    pub fn new(
        templates: &'t Templates,
        w: &'t Workflow,
        kind: &Kind<'t>,
        role: Role,
        recipient: Option<&'t User>,
        users: &'t HashMap<String, User>,
    ) -> Renderer<'t> {
        let new = match kind {
            Kind::Escalation { target } => name(target, users),
            _ => name(&w.assignee, users),
        };
        let greeting = recipient
            .map(|u| u.display_name.as_str())
            .unwrap_or("Hello");
        let previous = name(&w.assignee, users);
        let due = w.due_at.format("%Y-%m-%d %H:%M UTC").to_string();
        let ctx = minijinja::context! {
            title => w.title, stage => w.stage, kind => kind.notification_kind(),
            due => due, greeting => greeting, previous => previous, new => new,
            assignee => previous, workflow_id => w.id.to_string(),
        };
        Renderer {
            templates,
            template: kind.template(role),
            ctx,
            greeting,
            title: &w.title,
            stage: &w.stage,
            kind: kind.notification_kind(),
            due,
            previous,
            new,
            workflow_id: w.id,
        }
    }

    /// What the deliverer needs to write this message itself: the template set and every value
    /// the templates use. Email payloads carry these instead of rendered parts, so the subject,
    /// text and HTML are rendered when the message is sent (`escalator_notify::Deliverer`).
    pub fn fields(&self) -> serde_json::Value {
        serde_json::json!({
            "template": self.template, "title": self.title, "stage": self.stage,
            "kind": self.kind, "due": self.due, "greeting": self.greeting,
            "previous": self.previous, "new": self.new, "assignee": self.previous,
            "workflow_id": self.workflow_id,
        })
    }

    /// The greeting used (for digests written later).
    pub fn greeting(&self) -> &str {
        self.greeting
    }

    /// One part (`subject.txt`, `body.txt`, `body.html`, `sms.txt`, `slack.txt`). A template
    /// that fails to render falls back to the built-in one, so a bad override never stops a
    /// batch (it is logged).
    pub fn part(&self, part: &str) -> String {
        self.templates
            .render_or_builtin(self.template, part, &self.ctx, self.title)
    }

    /// Subject and plain-text body.
    pub fn message(&self) -> Message {
        Message {
            subject: self.part("subject.txt"),
            body: self.part("body.txt"),
        }
    }
}

/// The message `recipient` gets about `w`, with the built-in templates.
pub fn render(
    w: &Workflow,
    kind: &Kind<'_>,
    role: Role,
    recipient: Option<&User>,
    users: &HashMap<String, User>,
) -> Message {
    Renderer::new(&settings().templates, w, kind, role, recipient, users).message()
}
