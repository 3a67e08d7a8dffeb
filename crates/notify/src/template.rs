//! Message templates (minijinja): built-in defaults for every message, each overridable by a
//! file of the same name in a directory (`ESCALATOR_TEMPLATES_DIR`). Templates whose name ends
//! in `.html` escape every value (a workflow title is user input); subjects and other
//! one-line texts lose their line breaks, so no value can inject a header.

use std::path::Path;
use std::sync::Arc;

use minijinja::{AutoEscape, Environment};
use serde::Serialize;

use crate::NotifyError;

/// The messages there are templates for. `*` is one of `reminder`, `escalation_to`,
/// `escalation_cc`, `exhausted`, `digest`.
pub const NAMES: [&str; 5] = [
    "reminder",
    "escalation_to",
    "escalation_cc",
    "exhausted",
    "digest",
];

/// The parts of a message, each a template `{message}.{part}`.
pub const PARTS: [&str; 5] = [
    "subject.txt",
    "body.txt",
    "body.html",
    "sms.txt",
    "slack.txt",
];

const BUILTIN: &[(&str, &str)] = &[
    (
        "reminder.subject.txt",
        r#"Reminder: "{{ title }}" is due {{ due }}"#,
    ),
    (
        "reminder.body.txt",
        "{{ greeting }},\n\n\"{{ title }}\" ({{ stage }}) is waiting for you and is due {{ due }}. \
         If it is not handled by then it will be escalated.\n",
    ),
    (
        "reminder.body.html",
        "<p>{{ greeting }},</p>\n<p>&ldquo;{{ title }}&rdquo; ({{ stage }}) is waiting for you and \
         is due {{ due }}. If it is not handled by then it will be escalated.</p>\n",
    ),
    (
        "reminder.sms.txt",
        r#"Reminder: "{{ title }}" is due {{ due }}."#,
    ),
    (
        "reminder.slack.txt",
        r#"Reminder: *{{ title }}* ({{ stage }}) is due {{ due }}."#,
    ),
    (
        "escalation_to.subject.txt",
        r#"Escalated to you: "{{ title }}" missed its deadline"#,
    ),
    (
        "escalation_to.body.txt",
        "{{ greeting }},\n\n\"{{ title }}\" ({{ stage }}) was assigned to {{ previous }} and was \
         due {{ due }}. It has been escalated to you.\n",
    ),
    (
        "escalation_to.body.html",
        "<p>{{ greeting }},</p>\n<p>&ldquo;{{ title }}&rdquo; ({{ stage }}) was assigned to \
         {{ previous }} and was due {{ due }}. It has been escalated to you.</p>\n",
    ),
    (
        "escalation_to.sms.txt",
        r#"Escalated to you: "{{ title }}" (was {{ previous }}'s, due {{ due }})."#,
    ),
    (
        "escalation_to.slack.txt",
        r#"Escalated to you: *{{ title }}* ({{ stage }}) was {{ previous }}'s and was due {{ due }}."#,
    ),
    (
        "escalation_cc.subject.txt",
        r#"Escalated: "{{ title }}" went to {{ new }}"#,
    ),
    (
        "escalation_cc.body.txt",
        "{{ greeting }},\n\n\"{{ title }}\" ({{ stage }}) missed its deadline of {{ due }} and \
         has been escalated from {{ previous }} to {{ new }}.\n",
    ),
    (
        "escalation_cc.body.html",
        "<p>{{ greeting }},</p>\n<p>&ldquo;{{ title }}&rdquo; ({{ stage }}) missed its deadline \
         of {{ due }} and has been escalated from {{ previous }} to {{ new }}.</p>\n",
    ),
    (
        "escalation_cc.sms.txt",
        r#"Escalated: "{{ title }}" went from {{ previous }} to {{ new }}."#,
    ),
    (
        "escalation_cc.slack.txt",
        r#"Escalated: *{{ title }}* went from {{ previous }} to {{ new }} (due {{ due }})."#,
    ),
    ("exhausted.subject.txt", r#"Still overdue: "{{ title }}""#),
    (
        "exhausted.body.txt",
        "{{ greeting }},\n\n\"{{ title }}\" ({{ stage }}), assigned to {{ assignee }}, is still \
         overdue (due {{ due }}) after its last escalation level.\n",
    ),
    (
        "exhausted.body.html",
        "<p>{{ greeting }},</p>\n<p>&ldquo;{{ title }}&rdquo; ({{ stage }}), assigned to \
         {{ assignee }}, is still overdue (due {{ due }}) after its last escalation level.</p>\n",
    ),
    (
        "exhausted.sms.txt",
        r#"Still overdue: "{{ title }}" (due {{ due }})."#,
    ),
    (
        "exhausted.slack.txt",
        r#"Still overdue: *{{ title }}* (due {{ due }})."#,
    ),
    (
        "digest.subject.txt",
        "{{ count }} workflows were escalated to you",
    ),
    (
        "digest.body.txt",
        "{{ greeting }},\n\n{{ count }} workflows missed their deadline and were escalated to \
         you:\n\n{% for item in items %}- {{ item.title }}\n{% endfor %}",
    ),
    (
        "digest.body.html",
        "<p>{{ greeting }},</p>\n<p>{{ count }} workflows missed their deadline and were \
         escalated to you:</p>\n<ul>\n{% for item in items %}<li>{{ item.title }}</li>\n\
         {% endfor %}</ul>\n",
    ),
    (
        "digest.sms.txt",
        "{{ count }} workflows were escalated to you, the first: \"{{ items[0].title }}\".",
    ),
    (
        "digest.slack.txt",
        "{{ count }} workflows were escalated to you:\n{% for item in items %}• {{ item.title }}\n{% endfor %}",
    ),
];

/// The engine every template set uses. Values are escaped for where the text goes: HTML in
/// `.html` parts, and in `.slack.txt` parts Slack's three control characters (`&`, `<`, `>`),
/// so that a workflow title such as `<!channel>` or `<https://evil|Approve>` is shown as
/// written instead of pinging a channel or planting a link. Other parts are plain text.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_keep_trailing_newline(true);
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else if name.ends_with(".slack.txt") {
            AutoEscape::Custom("slack")
        } else {
            AutoEscape::None
        }
    });
    env.set_formatter(|out, state, value| {
        if state.auto_escape() != AutoEscape::Custom("slack") {
            return minijinja::escape_formatter(out, state, value);
        }
        let text = if value.is_undefined() {
            String::new()
        } else if let Some(s) = value.as_str() {
            s.to_owned()
        } else {
            value.to_string()
        };
        let text = if value.is_safe() {
            text
        } else {
            slack_escape(&text)
        };
        out.write_str(&text)
            .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, e.to_string()))
    });
    env
}

/// Slack's escaping of message text (its mrkdwn treats these three as control characters).
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The templates in use. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Templates {
    env: Arc<Environment<'static>>,
}

impl Default for Templates {
    fn default() -> Self {
        Templates::builtin()
    }
}

impl Templates {
    /// The built-in templates.
    pub fn builtin() -> Templates {
        let mut env = environment();
        for (name, source) in BUILTIN {
            // the built-ins are tested to parse (`every_builtin_template_renders`)
            if let Err(e) = env.add_template_owned(*name, *source) {
                tracing::error!(name, error = %e, "a built-in template does not parse");
            }
        }
        Templates { env: Arc::new(env) }
    }

    /// The built-ins, with those that have a file of the same name in `dir` replaced by it
    /// (e.g. `escalation_to.subject.txt`). A file that does not parse is an error naming it;
    /// files that match no template are errors too (a typo would otherwise be silently
    /// ignored).
    pub fn from_dir(dir: &Path) -> Result<Templates, NotifyError> {
        let mut env = environment();
        for (name, source) in BUILTIN {
            env.add_template_owned(*name, *source)
                .map_err(|e| NotifyError::Config(format!("built-in template {name}: {e}")))?;
        }
        let entries = std::fs::read_dir(dir).map_err(|e| {
            NotifyError::Config(format!("ESCALATOR_TEMPLATES_DIR={}: {e}", dir.display()))
        })?;
        for entry in entries {
            let path = entry
                .map_err(|e| NotifyError::Config(format!("ESCALATOR_TEMPLATES_DIR: {e}")))?
                .path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') || path.is_dir() {
                continue;
            }
            if !BUILTIN.iter().any(|(n, _)| *n == name) {
                return Err(NotifyError::Config(format!(
                    "ESCALATOR_TEMPLATES_DIR: {} is not a template name (expected \
                     {{{}}}.{{{}}})",
                    path.display(),
                    NAMES.join(","),
                    PARTS.join(",")
                )));
            }
            let source = std::fs::read_to_string(&path)
                .map_err(|e| NotifyError::Config(format!("template {}: {e}", path.display())))?;
            env.add_template_owned(name, source)
                .map_err(|e| NotifyError::Config(format!("template {}: {e}", path.display())))?;
        }
        Ok(Templates { env: Arc::new(env) })
    }

    /// Renders `{message}.{part}` with `ctx`. One-line parts (subject, SMS) lose their line
    /// breaks. A template that fails to render (say, an override naming a missing list) is a
    /// permanent error: retrying renders it the same way.
    pub fn render(
        &self,
        message: &str,
        part: &str,
        ctx: &impl Serialize,
    ) -> Result<String, NotifyError> {
        let name = format!("{message}.{part}");
        let text = self
            .env
            .get_template(&name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| NotifyError::Permanent(format!("template {name}: {e}")))?;
        Ok(if part == "subject.txt" || part == "sms.txt" {
            crate::http::header_safe(&text).trim().to_owned()
        } else {
            text
        })
    }

    /// [`Templates::render`] that never fails: a template that fails to render falls back to
    /// the built-in one (logged), and that failing too, to `fallback` on one line. A bad
    /// override never stops a batch nor loses a message.
    pub fn render_or_builtin(
        &self,
        message: &str,
        part: &str,
        ctx: &impl Serialize,
        fallback: &str,
    ) -> String {
        self.render(message, part, ctx).unwrap_or_else(|e| {
            tracing::error!(error = %e, "template failed; using the built-in one");
            Templates::builtin()
                .render(message, part, ctx)
                .unwrap_or_else(|_| fallback.replace(['\r', '\n'], " "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> serde_json::Value {
        json!({
            "title": "Buy <script>alert(1)</script> & chairs\r\nBcc: evil@example.com",
            "stage": "approval", "due": "2026-11-25 12:00 UTC", "greeting": "Ann",
            "previous": "Bob", "new": "Carol", "assignee": "Bob", "count": 2,
            "items": [{ "title": "<b>one</b>" }, { "title": "two" }],
        })
    }

    #[test]
    fn every_builtin_template_renders() {
        let t = Templates::builtin();
        for message in NAMES {
            for part in PARTS {
                let text = t.render(message, part, &ctx()).unwrap();
                assert!(!text.trim().is_empty(), "{message}.{part}");
            }
        }
    }

    /// Slack reads `<!channel>` as a mention of everyone and `<url|text>` as a link: user text
    /// (titles, names) reached Slack unescaped.
    #[test]
    fn slack_messages_escape_user_text_and_keep_their_own_markup() {
        let t = Templates::builtin();
        let ctx = json!({
            "title": "<!channel> urgent & <https://evil.example|Approve>", "stage": "s",
            "due": "d", "greeting": "Ann", "previous": "<@U123>", "new": "Bo",
            "items": [{"title": "<!here>"}], "count": 1,
        });
        for message in NAMES {
            let text = t.render(message, "slack.txt", &ctx).unwrap();
            assert!(!text.contains("<!"), "{message}: {text}");
            assert!(!text.contains("<https"), "{message}: {text}");
        }
        let text = t.render("escalation_to", "slack.txt", &ctx).unwrap();
        assert!(
            text.contains("*&lt;!channel&gt; urgent &amp; &lt;https://evil.example|Approve&gt;*"),
            "{text}"
        );
        assert!(text.contains("&lt;@U123&gt;"), "{text}");
        // an override may still write Slack markup of its own, and mark a value safe
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("reminder.slack.txt"),
            "<!here> {{ title }} {{ greeting | safe }}",
        )
        .unwrap();
        let t = Templates::from_dir(dir.path()).unwrap();
        let ctx = json!({ "title": "<b>", "greeting": "<@U1>" });
        assert_eq!(
            t.render("reminder", "slack.txt", &ctx).unwrap(),
            "<!here> &lt;b&gt; <@U1>"
        );
    }

    #[test]
    fn html_bodies_escape_user_text_and_subjects_cannot_inject_headers() {
        let t = Templates::builtin();
        let html = t.render("escalation_to", "body.html", &ctx()).unwrap();
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt; &amp; chairs"),
            "{html}"
        );
        let digest = t.render("digest", "body.html", &ctx()).unwrap();
        assert!(
            digest.contains("<li>&lt;b&gt;one&lt;&#x2f;b&gt;</li>"),
            "{digest}"
        );
        // plain text keeps the title as written
        let text = t.render("escalation_to", "body.txt", &ctx()).unwrap();
        assert!(text.contains("Buy <script>"), "{text}");
        let subject = t.render("escalation_to", "subject.txt", &ctx()).unwrap();
        assert!(
            !subject.contains('\r') && !subject.contains('\n'),
            "{subject:?}"
        );
        assert!(
            subject.starts_with("Escalated to you: \"Buy <script>"),
            "{subject}"
        );
    }

    #[test]
    fn files_in_the_directory_override_the_builtins_and_typos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("escalation_to.subject.txt"),
            "[{{ stage }}] {{ title }} is yours now",
        )
        .unwrap();
        let t = Templates::from_dir(dir.path()).unwrap();
        let subject = t.render("escalation_to", "subject.txt", &ctx()).unwrap();
        assert!(subject.starts_with("[approval] Buy"), "{subject}");
        // the others are still the built-ins
        let reminder = t.render("reminder", "subject.txt", &ctx()).unwrap();
        assert!(reminder.starts_with("Reminder:"), "{reminder}");

        std::fs::write(dir.path().join("escalation.subject.txt"), "x").unwrap();
        let e = Templates::from_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("escalation.subject.txt") && e.contains("not a template name"),
            "{e}"
        );

        let bad = tempfile::tempdir().unwrap();
        std::fs::write(bad.path().join("digest.body.txt"), "{% for %}").unwrap();
        let e = Templates::from_dir(bad.path()).unwrap_err().to_string();
        assert!(e.contains("digest.body.txt"), "{e}");

        let e = Templates::from_dir(Path::new("/nonexistent/templates"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ESCALATOR_TEMPLATES_DIR"), "{e}");
    }
}
