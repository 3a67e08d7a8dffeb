//! Digests: when a check run finishes, each (run, user, channel) group of held deliveries
//! becomes either its individual outbox rows or — with more items than its threshold — one
//! digest row listing them. Pure: the backends fetch-and-delete the held rows and insert what
//! this returns, in one transaction, so a group is decided exactly once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::effects::NewOutbox;
use crate::error::{Result, StoreError};

/// A held delivery as stored in `outbox_held`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldRow {
    /// Its id (the order items were held in).
    pub id: i64,
    /// `"{user id}:{channel}"`.
    pub group_key: String,
    /// More than this many items make a digest.
    pub threshold: i32,
    /// `{channel, recipient, workflow_id, payload, idempotency_key}`.
    pub item: Value,
    /// Its workflow was completed or cancelled before the run's digests were decided.
    pub closed: bool,
}

/// The stored form of a held delivery's outbox row (`outbox_held.item`), serialized straight
/// from the row: `{channel, recipient, workflow_id, payload, idempotency_key}`, the payload
/// without its hold mark ([`NewOutbox::held_for_digest`]).
#[derive(Debug, Serialize)]
pub struct HeldItem<'a> {
    channel: &'a str,
    recipient: &'a str,
    workflow_id: Option<Uuid>,
    payload: Unmarked<'a>,
    idempotency_key: &'a str,
}

/// [`HeldItem`] of `o`.
pub fn item(o: &NewOutbox) -> HeldItem<'_> {
    HeldItem {
        channel: o.channel,
        recipient: &o.recipient,
        workflow_id: o.workflow_id,
        payload: Unmarked(&o.payload),
        idempotency_key: &o.idempotency_key,
    }
}

/// A payload serialized without its `"hold"` key.
#[derive(Debug)]
struct Unmarked<'a>(&'a Value);

impl Serialize for Unmarked<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.0 {
            Value::Object(fields) => {
                let mut map = s.serialize_map(None)?;
                for (k, v) in fields.iter().filter(|(k, _)| *k != "hold") {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            other => other.serialize(s),
        }
    }
}

fn channel(name: &str) -> Result<&'static str> {
    ["email", "sms", "slack", "webhook", "event"]
        .into_iter()
        .find(|c| *c == name)
        .ok_or_else(|| StoreError::Invalid {
            field: "outbox_held.item.channel",
            message: format!("unknown channel {name:?}"),
        })
}

fn outbox_from(item: &Value) -> Result<NewOutbox> {
    let text = |k: &str| item[k].as_str().unwrap_or_default().to_owned();
    Ok(NewOutbox {
        channel: channel(item["channel"].as_str().unwrap_or_default())?,
        recipient: text("recipient"),
        workflow_id: item["workflow_id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok()),
        payload: item["payload"].clone(),
        idempotency_key: text("idempotency_key"),
    })
}

/// What the held rows of run `run` become. Groups keep the order their first item was held
/// in. Items of workflows closed meanwhile are left out of their group's count and of its
/// digest: each goes out as its own row, which the sender marks obsolete, saying why (a digest
/// has no workflow of its own to be looked at again, and listed them as still yours). A digest's key names the run, the group and its first held id: retried or repeated
/// coalescing of the same rows yields the same key (the outbox's UNIQUE key then drops the
/// repeat), while items held after a group was already decided (a stuck run released early)
/// form a new digest instead of being lost.
pub fn coalesce(run: i64, rows: &[HeldRow], now: DateTime<Utc>) -> Result<Vec<NewOutbox>> {
    let mut groups: BTreeMap<i64, (&str, i32, Vec<&HeldRow>)> = BTreeMap::new();
    let mut first: BTreeMap<&str, i64> = BTreeMap::new();
    let mut sorted: Vec<&HeldRow> = rows.iter().collect();
    sorted.sort_by_key(|r| r.id);
    for r in sorted {
        let head = *first.entry(r.group_key.as_str()).or_insert(r.id);
        let g = groups
            .entry(head)
            .or_insert((r.group_key.as_str(), r.threshold, Vec::new()));
        g.1 = g.1.max(r.threshold);
        g.2.push(r);
    }
    let mut out = Vec::new();
    for (head, (group, threshold, items)) in groups {
        // only where the sender looks again: on the other channels (webhooks) a closed item
        // sent alone would go out, where the digest would at least have listed it once
        let (closed, items): (Vec<&HeldRow>, Vec<&HeldRow>) = items.into_iter().partition(|r| {
            r.closed
                && r.item["channel"]
                    .as_str()
                    .is_some_and(crate::delivery::looked_at_again)
        });
        for r in closed {
            out.push(outbox_from(&r.item)?);
        }
        let outboxes = items
            .iter()
            .map(|r| outbox_from(&r.item))
            .collect::<Result<Vec<_>>>()?;
        if i64::try_from(items.len()).unwrap_or(i64::MAX) <= i64::from(threshold) {
            out.extend(outboxes);
            continue;
        }
        out.push(digest(run, group, head, &outboxes, now));
        // people copied on a digested email still get their own copy of each message
        for o in outboxes.iter().filter(|o| o.channel == "email") {
            let cc = &o.payload["cc"];
            let Some(first_cc) = cc
                .as_array()
                .and_then(|a| a.first())
                .and_then(Value::as_str)
            else {
                continue;
            };
            let mut payload = o.payload.clone();
            payload["to"] = cc.clone();
            payload["cc"] = json!([]);
            // the copy reaches the people copied, not the digest's recipient (the group's
            // user): deactivated all, they get no copy (obsolete_deliveries)
            let user = group.split(':').next().unwrap_or_default();
            if let Some(ids) = payload["user_ids"].as_array_mut() {
                ids.retain(|id| id.as_str() != Some(user));
            }
            // the copied message was written for its direct recipient ("escalated to you"):
            // addressed to the people copied, it says what they are told on a copy
            if let Some(cc_template) = payload["template"]
                .as_str()
                .and_then(|t| t.strip_suffix("_to"))
                .map(|t| format!("{t}_cc"))
            {
                payload["template"] = json!(cc_template);
                payload["greeting"] = json!("Hello");
            }
            out.push(NewOutbox {
                channel: o.channel,
                recipient: first_cc.to_owned(),
                workflow_id: o.workflow_id,
                payload,
                idempotency_key: format!("{}:cc", o.idempotency_key),
            });
        }
    }
    Ok(out)
}

/// One row standing for `items`: addressed like the first one (its direct recipient only),
/// listing each item's workflow, title and subject. Its text is rendered at delivery.
fn digest(run: i64, group: &str, head: i64, items: &[NewOutbox], now: DateTime<Utc>) -> NewOutbox {
    let first = &items[0];
    let to = match &first.payload["to"] {
        Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
        other => other.clone(),
    };
    let to = if first.channel == "email" {
        json!([to])
    } else {
        to
    };
    let listed: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({
                "workflow_id": o.workflow_id, "kind": o.payload["kind"],
                "title": o.payload["title"], "due_at": o.payload["due_at"],
            })
        })
        .collect();
    NewOutbox {
        channel: first.channel,
        recipient: first.recipient.clone(),
        workflow_id: None,
        payload: json!({
            "kind": "digest", "to": to, "cc": [], "user": group.split(':').next(),
            "greeting": first.payload["greeting"], "check_run_id": run,
            "count": items.len(), "items": listed, "created_at": now,
            "message_key": digest_message_key(items),
        }),
        idempotency_key: format!("digest:{run}:{group}:{head}"),
    }
}

/// The Message-ID key of a digest: its run and first held row are numbers from database
/// sequences, which a restored database hands out again, and mail systems drop a message whose
/// Message-ID they have seen. The digest is named by what it lists instead (each item's key
/// names its workflow's uuid, level and cycle): the same items, the same message.
fn digest_message_key(items: &[NewOutbox]) -> String {
    use sha2::Digest as _;
    let mut keys: Vec<&str> = items.iter().map(|o| o.idempotency_key.as_str()).collect();
    keys.sort_unstable();
    let mut hash = sha2::Sha256::new();
    for key in keys {
        hash.update(key.as_bytes());
        hash.update(b"\n");
    }
    format!("digest:{}", hex::encode(&hash.finalize()[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(id: i64, user: &str, channel: &str, threshold: i32) -> HeldRow {
        let o = NewOutbox {
            channel: super::channel(channel).unwrap(),
            recipient: format!("{user}@example.com"),
            workflow_id: Some(Uuid::from_u128(id as u128)),
            payload: json!({
                "to": [format!("{user}@example.com")], "cc": ["prev@example.com"],
                "subject": format!("Escalated #{id}"), "title": format!("W{id}"),
                "kind": "escalation",
            }),
            idempotency_key: format!("escalate:{id}:1:1:{channel}"),
        };
        HeldRow {
            id,
            group_key: format!("{user}:{channel}"),
            threshold,
            item: serde_json::to_value(item(&o)).unwrap(),
            closed: false,
        }
    }

    #[test]
    fn groups_over_the_threshold_become_one_digest_and_copies_keep_theirs() {
        let mut rows: Vec<HeldRow> = (1..=6).map(|i| held(i, "head", "email", 5)).collect();
        rows.push(held(7, "other", "email", 5));
        let out = coalesce(9, &rows, Utc::now()).unwrap();
        let digests: Vec<_> = out
            .iter()
            .filter(|o| o.payload["kind"] == "digest")
            .collect();
        assert_eq!(digests.len(), 1);
        let d = digests[0];
        assert_eq!(d.idempotency_key, "digest:9:head:email:1");
        let message_key = d.payload["message_key"].as_str().unwrap();
        assert!(message_key.starts_with("digest:"), "{message_key}");
        assert_eq!(message_key.len(), "digest:".len() + 32, "{message_key}");
        assert_eq!(d.payload["count"], 6);
        assert_eq!(d.payload["to"], json!(["head@example.com"]));
        assert_eq!(d.payload["items"][5]["title"], "W6");
        // six copies for the cc'd previous assignee, and the other user's own message
        let copies = out
            .iter()
            .filter(|o| o.idempotency_key.ends_with(":cc"))
            .count();
        assert_eq!(copies, 6);
        assert!(
            out.iter()
                .any(|o| o.idempotency_key == "escalate:7:1:1:email")
        );
        assert_eq!(out.len(), 1 + 6 + 1);
    }

    /// A digest's Message-ID was made of its run and first held row, numbers a restored
    /// database hands out again: a new digest then reached its recipient under an old one's
    /// Message-ID, and mail systems drop such a message as a duplicate.
    #[test]
    fn a_digest_is_named_by_what_it_lists_not_by_sequence_numbers() {
        let key = |run: i64, rows: &[HeldRow]| {
            let out = coalesce(run, rows, Utc::now()).unwrap();
            let d = out.iter().find(|o| o.payload["kind"] == "digest").unwrap();
            (
                d.idempotency_key.clone(),
                d.payload["message_key"].as_str().unwrap().to_owned(),
            )
        };
        let before: Vec<HeldRow> = (1..=6).map(|i| held(i, "head", "email", 5)).collect();
        // after a restore: the same run and row numbers, other workflows
        let after: Vec<HeldRow> = (1..=6)
            .map(|i| {
                let mut r = held(i + 100, "head", "email", 5);
                r.id = i;
                r
            })
            .collect();
        let (before_key, before_message) = key(9, &before);
        let (after_key, after_message) = key(9, &after);
        assert_eq!(before_key, after_key);
        assert_ne!(before_message, after_message);
        // the same items (listed in any order, by any run) are the same message
        let mut again: Vec<HeldRow> = (1..=6).map(|i| held(i, "head", "email", 5)).collect();
        again.reverse();
        assert_eq!(key(10, &again).1, before_message);
    }

    /// The copies used to carry the direct recipient's message ("Escalated to you…", greeting
    /// them by name) to the people copied.
    #[test]
    fn a_digested_emails_copies_are_written_for_the_people_copied() {
        let rows: Vec<HeldRow> = (1..=6)
            .map(|i| {
                let mut r = held(i, "head", "email", 5);
                let mut o: NewOutbox = outbox_from(&r.item).unwrap();
                let p = o.payload.as_object_mut().unwrap();
                p.remove("subject");
                p.insert("template".into(), json!("escalation_to"));
                p.insert("greeting".into(), json!("Head"));
                r.item = serde_json::to_value(item(&o)).unwrap();
                r
            })
            .collect();
        let out = coalesce(9, &rows, Utc::now()).unwrap();
        let copies: Vec<_> = out
            .iter()
            .filter(|o| o.idempotency_key.ends_with(":cc"))
            .collect();
        assert_eq!(copies.len(), 6);
        for c in copies {
            assert_eq!(c.payload["to"], json!(["prev@example.com"]));
            assert_eq!(c.payload["template"], "escalation_cc", "{}", c.payload);
            assert_eq!(c.payload["greeting"], "Hello");
        }
    }

    #[test]
    fn groups_at_the_threshold_are_released_as_they_are() {
        let rows: Vec<HeldRow> = (1..=5).map(|i| held(i, "head", "sms", 5)).collect();
        let out = coalesce(9, &rows, Utc::now()).unwrap();
        assert_eq!(out.len(), 5);
        assert!(out.iter().all(|o| o.payload["kind"] == "escalation"));
        // the same rows coalesced again give the same keys
        let again = coalesce(9, &rows, Utc::now()).unwrap();
        let keys = |v: &[NewOutbox]| {
            v.iter()
                .map(|o| o.idempotency_key.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&out), keys(&again));
    }

    /// A digest listed escalations of workflows completed before the run ended as still the
    /// recipient's, and nothing looked at them again before it went out.
    #[test]
    fn items_of_workflows_closed_meanwhile_are_neither_digested_nor_counted() {
        // six held, two of them closed since: four left, under the threshold of 5
        let mut rows: Vec<HeldRow> = (1..=6).map(|i| held(i, "head", "email", 5)).collect();
        rows[1].closed = true;
        rows[4].closed = true;
        let out = coalesce(9, &rows, Utc::now()).unwrap();
        assert_eq!(out.len(), 6);
        assert!(out.iter().all(|o| o.payload["kind"] == "escalation"));
        // eight held, two closed: a digest of the six still open, the two alone
        let mut rows: Vec<HeldRow> = (1..=8).map(|i| held(i, "head", "email", 5)).collect();
        rows[0].closed = true;
        rows[7].closed = true;
        let out = coalesce(9, &rows, Utc::now()).unwrap();
        let digest = out.iter().find(|o| o.payload["kind"] == "digest").unwrap();
        assert_eq!(digest.payload["count"], 6);
        let listed: Vec<&str> = digest.payload["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["title"].as_str().unwrap())
            .collect();
        assert_eq!(listed, ["W2", "W3", "W4", "W5", "W6", "W7"]);
        let alone: Vec<&str> = out
            .iter()
            .filter(|o| o.payload["kind"] == "escalation")
            .map(|o| o.idempotency_key.as_str())
            .filter(|k| !k.ends_with(":cc"))
            .collect();
        // the people copied on the six digested ones get their copies, as always
        assert_eq!(alone, ["escalate:1:1:1:email", "escalate:8:1:1:email"]);
        assert_eq!(out.len(), 1 + 2 + 6);
        // the key is the group's first held row's, closed or not: the same rows, the same key
        assert_eq!(digest.idempotency_key, "digest:9:head:email:1");
        // webhooks are not looked at again before they are sent: a closed item sent alone
        // would go out, so it stays listed in the digest
        let mut rows: Vec<HeldRow> = (1..=6).map(|i| held(i, "head", "webhook", 5)).collect();
        rows[2].closed = true;
        let out = coalesce(9, &rows, Utc::now()).unwrap();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].payload["count"], 6);
    }

    /// The copies of a digested email named the digest's recipient among the people they
    /// reach: with everyone copied deactivated, the copy still went out.
    #[test]
    fn a_digested_emails_copy_names_only_the_people_copied() {
        let rows: Vec<HeldRow> = (1..=6)
            .map(|i| {
                let mut r = held(i, "head", "email", 5);
                r.item["payload"]["user_ids"] = json!(["head", "prev"]);
                r
            })
            .collect();
        let out = coalesce(9, &rows, Utc::now()).unwrap();
        let copies: Vec<_> = out
            .iter()
            .filter(|o| o.idempotency_key.ends_with(":cc"))
            .collect();
        assert_eq!(copies.len(), 6);
        for c in copies {
            assert_eq!(c.payload["user_ids"], json!(["prev"]), "{}", c.payload);
        }
    }

    #[test]
    fn channels_are_separate_groups() {
        let mut rows: Vec<HeldRow> = (1..=3).map(|i| held(i, "head", "email", 2)).collect();
        rows.extend((4..=6).map(|i| held(i, "head", "slack", 2)));
        let out = coalesce(1, &rows, Utc::now()).unwrap();
        let digests: Vec<_> = out
            .iter()
            .filter(|o| o.payload["kind"] == "digest")
            .collect();
        assert_eq!(digests.len(), 2);
        assert_eq!(digests[1].channel, "slack");
        assert_eq!(digests[1].payload["to"], "head@example.com");
    }
}
