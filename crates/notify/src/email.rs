//! Email: over SMTP (any relay, SES's SMTP interface included) with lettre, or — in dev mode —
//! into a folder, one `.eml` file per message.

use std::path::PathBuf;
use std::time::Duration;

use escalator_store::OutboxEntry;
use lettre::address::Envelope;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::NotifyError;

/// Where email goes.
#[derive(Debug, Clone)]
pub enum Mailer {
    /// An SMTP relay.
    Smtp {
        /// The transport: a connection of its own per message (lettre's pool is off: a send
        /// cut off by its deadline would hand a pooled connection back mid-conversation).
        transport: AsyncSmtpTransport<Tokio1Executor>,
        /// The From address.
        from: Mailbox,
        /// Longest wait for one message, end to end: lettre's own timeout covers the TCP
        /// connect only, and a relay that accepts and then never answers would hang a sender.
        deadline: Duration,
    },
    /// A folder of `.eml` files (dev mode), one per message, named by its idempotency key.
    Files {
        /// The folder.
        dir: PathBuf,
        /// The From address.
        from: Mailbox,
    },
}

impl Mailer {
    /// An SMTP mailer for `smtp://host:port` (plain), `smtps://…` (TLS) or
    /// `smtp://…?tls=required` (STARTTLS), with optional `user:password@`.
    pub fn smtp(url: &str, from: &str) -> Result<Mailer, NotifyError> {
        Mailer::smtp_with_deadline(url, from, Duration::from_secs(30))
    }

    /// [`Mailer::smtp`] with the end-to-end deadline of one message.
    pub fn smtp_with_deadline(
        url: &str,
        from: &str,
        deadline: Duration,
    ) -> Result<Mailer, NotifyError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| NotifyError::Config(format!("ESCALATOR_SMTP_URL: {e}")))?
            .timeout(Some(deadline))
            .build();
        Ok(Mailer::Smtp {
            transport,
            from: parse_from(from)?,
            deadline,
        })
    }

    /// A mailer writing one `.eml` per message into `dir` (created if missing).
    pub fn files(dir: PathBuf, from: &str) -> Result<Mailer, NotifyError> {
        std::fs::create_dir_all(&dir).map_err(|e| {
            NotifyError::Config(format!(
                "cannot create the mail folder {}: {e}",
                dir.display()
            ))
        })?;
        Ok(Mailer::Files {
            dir,
            from: parse_from(from)?,
        })
    }

    /// Sends the email described by an outbox row. `Ok` says who has it: the recipients the
    /// relay deferred after another had taken the message ([`Deferred`]), each to get it
    /// later, alone (a follow-up row), and whether only copies took it ([`Taken`]). A row
    /// naming an `envelope` (a follow-up) goes to those addresses only, with the headers of the
    /// whole message.
    pub async fn send(&self, entry: &OutboxEntry) -> Result<Taken, NotifyError> {
        let from = match self {
            Mailer::Smtp { from, .. } | Mailer::Files { from, .. } => from.clone(),
        };
        let message = build(entry, from.clone())?;
        let envelope = match envelope_of(entry, &from)? {
            Some(only) => only,
            None => message.envelope().clone(),
        };
        let raw = message.formatted();
        match self {
            Mailer::Smtp {
                transport,
                deadline,
                ..
            } => {
                match send_raw(transport, *deadline, &envelope, &raw).await {
                    Err(e) if envelope.to().len() > 1 && e.refused() => {
                        // A relay refusing one recipient (RCPT TO: 550 no such user, or for
                        // now: 450 mailbox full) fails the whole transaction before DATA, so
                        // nobody got it: one address of someone who left, or whose mailbox is
                        // full, must not cost the new assignee the escalation.
                        tracing::warn!(
                            key = %entry.idempotency_key, error = %e.failure,
                            "the relay refused the message; sending to each recipient alone"
                        );
                        // the To: the message was built with (a copy stands in for primaries
                        // none of which is usable), as the envelope names them
                        let primaries = usable_recipients(entry)
                            .map(|(to, _)| to)
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|a| mailbox(a).ok().map(|m| m.email))
                            .collect::<Vec<_>>();
                        one_by_one(transport, *deadline, &envelope, &raw, &primaries, entry).await
                    }
                    other => other.map(|()| Taken::default()).map_err(|e| e.failure),
                }
            }
            Mailer::Files { dir, .. } => write_eml(dir, &entry.idempotency_key, &raw)
                .await
                .map(|()| Taken::default())
                .map_err(|e| NotifyError::Transient(format!("writing to {}: {e}", dir.display()))),
        }
    }
}

/// Writes `raw` as `<key>.eml` in `dir`, whole or not at all (a temporary file renamed into
/// place). Named by the delivery's idempotency key, a message sent again (its sender killed
/// after writing it, before recording so) replaces its file: files named at random left two
/// copies, and a reader could see one half written.
async fn write_eml(dir: &std::path::Path, key: &str, raw: &[u8]) -> std::io::Result<()> {
    let name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let file = dir.join(format!("{name}.eml"));
    // a name of its own: two senders of one message must not write into one partial file
    let partial = dir.join(format!(
        ".{name}.{}.{:016x}.partial",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = match tokio::fs::write(&partial, raw).await {
        Ok(()) => tokio::fs::rename(&partial, &file).await,
        Err(e) => Err(e),
    };
    if written.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    written
}

/// Who has a message the relay took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Taken {
    /// Recipients it deferred: each gets the message later, alone.
    pub deferred: Vec<Deferred>,
    /// Set when it refused every primary recipient for good and only copies took it: the row
    /// is dead, saying so, while the copies it deferred still get their rows.
    pub primaries_refused: Option<String>,
}

/// A recipient the relay deferred (a 4xx, no answer in time, or not tried: more than
/// [`MAX_SENT_ALONE`]) after another recipient had taken the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    /// The address, as the envelope named it (a domain in ASCII).
    pub address: String,
    /// Why it did not get the message now.
    pub error: String,
}

/// The envelope of a row that names its recipients apart from its headers (`envelope`: a
/// follow-up for recipients the relay deferred), or None.
fn envelope_of(entry: &OutboxEntry, from: &Mailbox) -> Result<Option<Envelope>, NotifyError> {
    let Some(list) = entry.payload.get("envelope") else {
        return Ok(None);
    };
    let addresses = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .map(|a| mailbox(a).map(|m| m.email))
        .collect::<Result<Vec<_>, _>>()?;
    Envelope::new(Some(from.email.clone()), addresses)
        .map(Some)
        .map_err(|e| NotifyError::Permanent(format!("envelope {list}: {e}")))
}

/// A failed SMTP transaction: how it counts, and the relay's reply code if it answered.
#[derive(Debug)]
struct SmtpFailure {
    failure: NotifyError,
    reply: Option<u16>,
}

impl SmtpFailure {
    /// Whether the relay refused the message (a 4xx or 5xx reply, for good or for now), which
    /// may be about one recipient only, rather than being unreachable, silent or refusing
    /// escalator's credentials (the configuration: every message would fail alike).
    fn refused(&self) -> bool {
        match self.failure {
            NotifyError::Permanent(_) => true,
            _ => self.reply.is_some_and(|c| (400..500).contains(&c)),
        }
    }
}

/// One SMTP transaction within `deadline`, its failure classified.
async fn send_raw(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    deadline: Duration,
    envelope: &Envelope,
    raw: &[u8],
) -> Result<(), SmtpFailure> {
    match tokio::time::timeout(deadline, transport.send_raw(envelope, raw)).await {
        Err(_) => Err(SmtpFailure {
            failure: NotifyError::Transient(format!(
                "SMTP: no answer within {} s",
                deadline.as_secs_f64()
            )),
            reply: None,
        }),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(SmtpFailure {
            failure: smtp_failure(&e),
            reply: e.status().map(u16::from),
        }),
    }
}

/// How a relay's refusal counts. 5xx replies are permanent, except those about our own
/// credentials (530 authentication required, 534 mechanism too weak, 535 credentials
/// invalid): no message is at fault, the configuration is, and once it is fixed every message
/// should go, as for a missing sender. The rest is transient.
fn smtp_failure(e: &lettre::transport::smtp::Error) -> NotifyError {
    let code = e.status().map(u16::from);
    match code {
        Some(530 | 534 | 535) => NotifyError::Transient(format!(
            "SMTP: the relay refused escalator's credentials (check ESCALATOR_SMTP_URL): {e}"
        )),
        _ if e.is_permanent() => NotifyError::Permanent(format!("SMTP: {e}")),
        _ => NotifyError::Transient(format!("SMTP: {e}")),
    }
}

/// Most recipients a refused message is sent to one by one (an escalation email has three at
/// most: the new assignee and two copies); any beyond are left out, logged, so that a message
/// takes a bounded time ([`crate::deliver::lease_for`]).
pub const MAX_SENT_ALONE: u32 = 4;

/// Sends `raw` to each envelope recipient in a transaction of its own, the primary recipients
/// first. A recipient refused for good is left out (logged). One deferred (a 4xx, no answer in
/// time) or not tried (more than [`MAX_SENT_ALONE`]) is returned once someone else has the
/// message, to get it later alone: a retry of the row would send the others the message again,
/// and dropping it (as before) lost the escalation for that person, a primary deferred for an
/// hour (a full mailbox) the copies too, never tried. Nobody having it and someone deferred,
/// the attempt fails for now (retried later, nobody gets it twice). The message fails for good
/// when every primary recipient was refused for good.
async fn one_by_one(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    deadline: Duration,
    envelope: &Envelope,
    raw: &[u8],
    primaries: &[Address],
    entry: &OutboxEntry,
) -> Result<Taken, NotifyError> {
    let mut order: Vec<&Address> = envelope.to().iter().collect();
    order.sort_by_key(|a| !primaries.contains(a));
    let mut delivered: Vec<&Address> = Vec::new();
    let mut deferred: Vec<(&Address, String)> = Vec::new();
    let mut refused = Vec::new();
    let limit = MAX_SENT_ALONE as usize;
    for rcpt in order.iter().skip(limit) {
        deferred.push((rcpt, format!("not tried (more than {limit} recipients)")));
    }
    for (i, rcpt) in order.iter().take(limit).enumerate() {
        // a sender told to stop starts no more of these (each may take the whole deadline,
        // and four of them outlast the grace period): those not tried get the message later,
        // alone, from whoever sends next, instead of all of it again after a cut-off
        if i > 0 && escalator_runtime::shutdown::stopping() {
            deferred.push((rcpt, "not tried (the sender was stopping)".to_owned()));
            continue;
        }
        let single = Envelope::new(envelope.from().cloned(), vec![(*rcpt).clone()])
            .map_err(|e| NotifyError::Permanent(format!("envelope for {rcpt}: {e}")))?;
        match send_raw(transport, deadline, &single, raw)
            .await
            .map_err(|e| e.failure)
        {
            Ok(()) => delivered.push(rcpt),
            Err(NotifyError::Transient(why)) => deferred.push((rcpt, why)),
            Err(e) => {
                tracing::warn!(
                    key = %entry.idempotency_key, recipient = %rcpt, error = %e,
                    "recipient left out: the relay refused it"
                );
                refused.push(format!("{rcpt}: {e}"));
            }
        }
    }
    let primary_left = |list: &[&Address]| list.iter().any(|a| primaries.contains(a));
    let deferred_addresses: Vec<&Address> = deferred.iter().map(|(a, _)| *a).collect();
    if delivered.is_empty() {
        return Err(match deferred.first() {
            // nobody has it: all of it again later
            Some((_, why)) => NotifyError::Transient(why.clone()),
            None => NotifyError::Permanent(format!(
                "the relay refused every primary recipient ({})",
                refused.join("; ")
            )),
        });
    }
    // someone has it: each one deferred gets it later, alone. With every primary recipient
    // refused for good the row is dead, but a copy deferred still gets it (it was dropped).
    let primaries_refused =
        (!primary_left(&delivered) && !primary_left(&deferred_addresses)).then(|| {
            // said in the dead row, so that whoever retries it (`escalator outbox retry`) knows
            // these people get the message a second time
            let copies: Vec<String> = delivered.iter().map(|a| a.to_string()).collect();
            format!(
                "the relay refused every primary recipient ({}); delivered to the copies only: \
                 {} (a retry sends it to them again)",
                refused.join("; "),
                copies.join(", ")
            )
        });
    for (rcpt, why) in &deferred {
        tracing::warn!(
            key = %entry.idempotency_key, recipient = %rcpt, error = %why,
            "recipient deferred: it gets the message later, alone"
        );
    }
    Ok(Taken {
        deferred: deferred
            .into_iter()
            .map(|(address, error)| Deferred {
                address: address.to_string(),
                error,
            })
            .collect(),
        primaries_refused,
    })
}

fn parse_from(from: &str) -> Result<Mailbox, NotifyError> {
    from.parse().map_err(|e| {
        NotifyError::Config(format!(
            "ESCALATOR_EMAIL_FROM={from:?}: {e}: expected an address your relay accepts, \
                 alone or with a name, such as `escalator <escalator@your-domain.example>`"
        ))
    })
}

/// The message of an outbox row: `payload` holds `to`, `cc`, `subject`, `body`. Invalid
/// addresses are left out (logged); a message with no valid primary recipient is a permanent
/// failure; header injection is impossible (lettre encodes headers,
/// and line breaks in the subject are removed before).
pub fn build(entry: &OutboxEntry, from: Mailbox) -> Result<Message, NotifyError> {
    let p = &entry.payload;
    let list = |key: &str| addresses_in(p, key);
    let to = list("to");
    if to.is_empty() {
        return Err(NotifyError::Permanent("no recipient in the payload".into()));
    }
    let subject = p["subject"]
        .as_str()
        .unwrap_or("escalator notification")
        .replace(['\r', '\n'], " ");
    let body = p["body"].as_str().unwrap_or_default().to_owned();
    // the idempotency key as Message-ID: a resend after a crash is recognisably the same;
    // a follow-up for deferred recipients, or a digest, names its message (`message_key`)
    let message_id = message_id(
        p["message_key"].as_str().unwrap_or(&entry.idempotency_key),
        &from,
    );
    let mut builder = Message::builder()
        .from(from)
        .subject(subject)
        .message_id(Some(message_id));
    let (primary, copies) = usable_recipients(entry)
        .ok_or_else(|| NotifyError::Permanent(format!("no valid recipient among {to:?}")))?;
    for address in primary {
        builder = builder.to(mailbox(&address)?);
    }
    for address in copies {
        builder = builder.cc(mailbox(&address)?);
    }
    builder
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| NotifyError::Permanent(format!("cannot build the message: {e}")))
}

/// The primary and copy addresses of an email row a relay or provider can take, in their
/// ASCII form ([`mailbox`]), as [`primaries_and_copies`] names them. One unusable address (a
/// user's typo, an empty string) must not cost everyone else the message: it is left out and
/// logged, as is a copy recipient standing in for an unusable primary one. None when nobody
/// is left: the message fails for good.
pub fn usable_recipients(entry: &OutboxEntry) -> Option<(Vec<String>, Vec<String>)> {
    let usable = |key: &str| -> Vec<String> {
        addresses_in(&entry.payload, key)
            .into_iter()
            .filter_map(|a| match mailbox(&a) {
                Ok(m) => Some(m.email.to_string()),
                Err(e) => {
                    tracing::warn!(key = %entry.idempotency_key, error = %e, "recipient left out");
                    None
                }
            })
            .collect()
    };
    let to = usable("to");
    if to.is_empty() {
        tracing::warn!(
            key = %entry.idempotency_key,
            "no usable primary recipient: the first copy recipient takes its place"
        );
    }
    primaries_and_copies(to, usable("cc"))
}

/// `to` and `cc` with each address named once (letters in either case): a provider refuses a
/// message naming one address twice (SendGrid: 400, for good), and two people may share a
/// mailbox. With no primary, the first copy takes its place: a typo in the new assignee's
/// address, or an assignee taking no email, must not cost the people copied the message.
/// None when nobody is left.
pub fn primaries_and_copies(
    to: Vec<String>,
    cc: Vec<String>,
) -> Option<(Vec<String>, Vec<String>)> {
    let mut seen = std::collections::HashSet::new();
    let mut once = |list: Vec<String>| -> Vec<String> {
        list.into_iter()
            .filter(|a| seen.insert(a.to_lowercase()))
            .collect()
    };
    let (mut to, mut cc) = (once(to), once(cc));
    if to.is_empty() {
        if cc.is_empty() {
            return None;
        }
        to.push(cc.remove(0));
    }
    Some((to, cc))
}

/// The addresses under `key` of an email payload: a list, or one string.
pub fn addresses_in(payload: &serde_json::Value, key: &str) -> Vec<String> {
    match &payload[key] {
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        serde_json::Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// The mailbox of `address`, its domain in ASCII (punycode, `ana@bücher.de` →
/// `ana@xn--bcher-kva.de`): a relay without SMTPUTF8 (Amazon SES has none) refuses any
/// non-ASCII address, and that refusal failed the whole message on every attempt. A
/// non-ASCII local part has no ASCII form and is refused here, leaving that recipient out.
pub fn mailbox(address: &str) -> Result<Mailbox, NotifyError> {
    let invalid =
        |why: String| NotifyError::Permanent(format!("invalid address {address:?}: {why}"));
    let ascii = if address.is_ascii() {
        address.to_owned()
    } else {
        let (local, domain) = address
            .rsplit_once('@')
            .ok_or_else(|| invalid("no @".into()))?;
        if !local.is_ascii() {
            return Err(invalid(
                "the part before @ is not ASCII, which relays without SMTPUTF8 refuse".into(),
            ));
        }
        let domain = idna::domain_to_ascii(domain).map_err(|e| invalid(e.to_string()))?;
        format!("{local}@{domain}")
    };
    ascii.parse().map_err(|e| invalid(format!("{e}")))
}

/// `<key@domain>`, the domain being the sender's (ESCALATOR_EMAIL_FROM), as RFC 5322 asks of
/// a Message-ID's right-hand side: a bare `escalator` is no domain, and spam filters score it.
fn message_id(key: &str, from: &Mailbox) -> String {
    let domain = idna::domain_to_ascii(from.email.domain())
        .map(|d| sanitize(&d))
        .ok()
        .filter(|d| !d.is_empty() && !d.starts_with('.') && !d.ends_with('.') && !d.contains(".."))
        .unwrap_or_else(|| "escalator.invalid".into());
    format!("<{}@{domain}>", sanitize(key))
}

fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '.'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(payload: serde_json::Value) -> OutboxEntry {
        OutboxEntry {
            id: 1,
            channel: "email".into(),
            recipient: "a@example.com".into(),
            workflow_id: None,
            check_run_id: None,
            payload,
            idempotency_key: "escalate:1:1:1:email".into(),
            status: "pending".into(),
            attempts: 1,
            next_attempt_at: chrono::Utc::now(),
            last_error: None,
            sent_at: None,
            created_at: chrono::Utc::now(),
        }
    }

    /// The Message-ID's right-hand side was a bare `escalator`, not a domain (RFC 5322 asks
    /// for one that makes the id unique; spam filters score the rest).
    #[test]
    fn message_ids_are_on_the_senders_domain() {
        let id = |from: &str, key: &str| {
            let from = from
                .parse::<Mailbox>()
                .unwrap_or_else(|_| Mailbox::new(None, from.parse::<lettre::Address>().unwrap()));
            message_id(key, &from)
        };
        assert_eq!(
            id("Escalator <noreply@corp.example.com>", "remind:w:1:email"),
            "<remind.w.1.email@corp.example.com>"
        );
        assert_eq!(id("e@bücher.example", "k"), "<k@xn--bcher-kva.example>");
        assert_eq!(id("e@[127.0.0.1]", "k"), "<k@escalator.invalid>");
        let digest = entry(serde_json::json!({
            "to": ["boss@example.com"], "subject": "s", "body": "b",
            "message_key": "digest:00ff"
        }));
        let text = String::from_utf8(
            build(&digest, "e@example.com".parse().unwrap())
                .unwrap()
                .formatted(),
        )
        .unwrap();
        assert!(
            text.contains("Message-ID: <digest.00ff@example.com>"),
            "{text}"
        );
    }

    #[test]
    fn messages_carry_to_cc_subject_and_the_idempotency_key() {
        let e = entry(serde_json::json!({
            "to": ["boss@example.com"], "cc": ["a@example.com", "b@example.com"],
            "subject": "Escalated:\r\nBcc: evil@example.com", "body": "hello"
        }));
        let text = String::from_utf8(
            build(&e, "escalator@example.com".parse().unwrap())
                .unwrap()
                .formatted(),
        )
        .unwrap();
        assert!(text.contains("To: boss@example.com"), "{text}");
        assert!(text.contains("Cc: a@example.com, b@example.com"), "{text}");
        assert!(
            text.contains("Message-ID: <escalate.1.1.1.email@example.com>"),
            "{text}"
        );
        assert!(!text.contains("\r\nBcc:"), "header injection: {text}");
    }

    /// An escalation email to the new assignee copied to a user whose stored address is
    /// unusable was dead on its first attempt: nobody got it.
    #[test]
    fn an_unusable_copy_or_extra_address_is_left_out_and_the_rest_is_sent() {
        let e = entry(serde_json::json!({
            "to": ["boss@example.com", "jdoe"], "cc": ["", "a@example.com", "not an address"],
            "subject": "s", "body": "b"
        }));
        let text = String::from_utf8(
            build(&e, "escalator@example.com".parse().unwrap())
                .unwrap()
                .formatted(),
        )
        .unwrap();
        assert!(text.contains("To: boss@example.com\r\n"), "{text}");
        assert!(text.contains("Cc: a@example.com\r\n"), "{text}");
    }

    #[test]
    fn invalid_addresses_and_missing_recipients_are_permanent() {
        let bad =
            entry(serde_json::json!({ "to": ["not an address"], "subject": "s", "body": "b" }));
        assert!(matches!(
            build(&bad, "e@example.com".parse().unwrap()),
            Err(NotifyError::Permanent(_))
        ));
        let none_valid = entry(serde_json::json!({ "to": ["", "x y"], "subject": "s" }));
        assert!(matches!(
            build(&none_valid, "e@example.com".parse().unwrap()),
            Err(NotifyError::Permanent(_))
        ));
        let none = entry(serde_json::json!({ "subject": "s" }));
        assert!(matches!(
            build(&none, "e@example.com".parse().unwrap()),
            Err(NotifyError::Permanent(_))
        ));
    }
}
