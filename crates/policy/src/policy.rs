//! Escalation policies: how long each level has, when to warn, and who is next in the chain.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};

use crate::{Calendar, PolicyError};

/// The longest duration a policy may name (about 100 years).
///
/// Business-time deadlines are found by walking the calendar day by day, and instants must stay
/// representable; a bound far above any real SLA keeps both cheap and overflow-free.
pub const MAX_DURATION_SECONDS: i64 = 100 * 365 * 86_400;

/// The longest user id: ids become index keys (assignees, inbox recipients, unique keys), and
/// PostgreSQL refuses an index entry past about 2.7 kB, so a longer id would be stored and then
/// fail every check that escalates to it.
pub const MAX_ID_CHARS: usize = 200;

/// Who a level escalates to. Serialized as a string: `"manager"` or `"user:<id>"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Target {
    /// The manager (`users.manager_id`) of whoever holds the workflow when it escalates.
    Manager,
    /// A fixed user, by id.
    User(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Manager => f.write_str("manager"),
            Target::User(id) => write!(f, "user:{id}"),
        }
    }
}

impl FromStr for Target {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "manager" => Ok(Target::Manager),
            _ => match s.strip_prefix("user:") {
                Some("") => Err(PolicyError::new(
                    "target",
                    "expected \"manager\" or \"user:<id>\", got \"user:\" with an empty id",
                )),
                Some(id) => Ok(Target::User(id.to_owned())),
                None => Err(PolicyError::new(
                    "target",
                    format!("expected \"manager\" or \"user:<id>\", got {s:?}"),
                )),
            },
        }
    }
}

impl TryFrom<String> for Target {
    type Error = PolicyError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Target> for String {
    fn from(t: Target) -> String {
        t.to_string()
    }
}

/// When the assignee is reminded, relative to the level's SLA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Warning {
    /// A fixed lead time before the deadline.
    Before {
        /// Seconds (business seconds with a calendar) before `due_at`.
        seconds: i64,
    },
    /// Once this percentage of the level's SLA has elapsed.
    Percent {
        /// 1..=99.
        percent: u8,
    },
}

/// What happens once the last level's deadline has passed too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AfterLast {
    /// Record the exhaustion once and stop.
    #[default]
    Stop,
    /// Record the exhaustion, then notify again at this interval until the workflow closes.
    Repeat {
        /// Interval between renotifications, in plain (not business) seconds.
        every_seconds: i64,
    },
}

/// One step of the escalation chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelSpec {
    /// Who takes the workflow over at this level.
    pub target: Target,
    /// How long they have before the next escalation.
    pub sla_seconds: i64,
}

/// The serialized form of an escalation policy, as stored in `escalation_policies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// SLA of level 0, the original assignee.
    pub sla_seconds: i64,
    /// When to remind, per level.
    pub warning: Warning,
    /// The escalation chain: `levels[0]` is level 1.
    pub levels: Vec<LevelSpec>,
    /// What happens after the last level breaches.
    #[serde(default)]
    pub after_last: AfterLast,
    /// Business-hours calendar to measure SLAs in; `None` is 24x7.
    #[serde(default)]
    pub calendar_id: Option<String>,
    /// The channels besides in-app (`email`, `sms`, `slack`, `webhook`) that reach people who
    /// have not chosen their own; `None` is email only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
}

/// The delivery channels a policy or a user may choose (in-app is always on).
pub const CHANNELS: [&str; 4] = ["email", "sms", "slack", "webhook"];

/// Checks a channel list: known names, each once. The error names the offending entry as
/// `<field>[i]`.
pub fn check_channels(field: &str, channels: &[String]) -> Result<(), PolicyError> {
    for (i, c) in channels.iter().enumerate() {
        if !CHANNELS.contains(&c.as_str()) {
            return Err(PolicyError::new(
                format!("{field}[{i}]"),
                format!(
                    "unknown channel {c:?}; expected one of {}",
                    CHANNELS.join(", ")
                ),
            ));
        }
        if channels[..i].contains(c) {
            return Err(PolicyError::new(
                format!("{field}[{i}]"),
                format!("channel {c:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    spec: PolicySpec,
}

impl Policy {
    /// Validates `spec` being written; the error names the first invalid field.
    pub fn new(spec: PolicySpec) -> Result<Policy, PolicyError> {
        let policy = Policy::stored(spec)?;
        let spec = policy.spec;
        let shortest = spec
            .levels
            .iter()
            .map(|l| l.sla_seconds)
            .fold(spec.sla_seconds, i64::min);
        match spec.warning {
            Warning::Before { seconds } if seconds <= 0 => {
                return Err(PolicyError::new(
                    "warning.seconds",
                    format!("must be positive (a warning at or after the deadline), got {seconds}"),
                ));
            }
            // The same lead time applies to every level, so it must fit inside the shortest one,
            // or that level would be warned before it even starts.
            Warning::Before { seconds } if seconds >= shortest => {
                return Err(PolicyError::new(
                    "warning.seconds",
                    format!("must be less than the shortest level SLA ({shortest}), got {seconds}"),
                ));
            }
            Warning::Percent { percent } if percent == 0 || percent >= 100 => {
                return Err(PolicyError::new(
                    "warning.percent",
                    format!("must be between 1 and 99, got {percent}"),
                ));
            }
            Warning::Before { .. } | Warning::Percent { .. } => {}
        }
        if let Warning::Percent { percent } = spec.warning {
            // the warning rounds down to whole seconds: under 1 s it is due as the level
            // starts, and the "reminder" went out with the escalation, at night too
            let shortest_warning = shortest * i64::from(percent) / 100;
            if shortest_warning < 1 {
                return Err(PolicyError::new(
                    "warning.percent",
                    format!(
                        "{percent}% of the shortest level SLA ({shortest} s) is under a second: \
                         its reminder would go out as the level starts; use a larger percent or \
                         longer SLAs"
                    ),
                ));
            }
        }
        if let AfterLast::Repeat { every_seconds } = spec.after_last {
            // every exhausted workflow is renotified (audit, in-app rows, an email) each time,
            // and the beat wakes for it: seconds meant as minutes flooded the outbox
            if every_seconds < MIN_REPEAT_SECONDS {
                return Err(PolicyError::new(
                    "after_last.every_seconds",
                    format!(
                        "must be at least {MIN_REPEAT_SECONDS} (renotifying more often floods \
                         the people told), got {every_seconds}"
                    ),
                ));
            }
        }
        check_chain(&spec.levels)?;
        if let Some(channels) = &spec.channels {
            check_channels("channels", channels)?;
        }
        Ok(Policy { spec })
    }

    /// Reads a spec accepted earlier, checking only what the clock needs to compute with it:
    /// durations within range and a chain to walk. Rules added for writes since (the shortest
    /// repeat, a warning of at least a second, the chain's and channels' rules) do not apply: a
    /// version stored before a rule existed made its policy, its workflows and the list of all
    /// policies answer 500, and set those workflows aside at every check, for ever.
    pub fn stored(spec: PolicySpec) -> Result<Policy, PolicyError> {
        check_duration("sla_seconds", spec.sla_seconds)?;
        if spec.levels.is_empty() {
            return Err(PolicyError::new(
                "levels",
                "at least one escalation level is required",
            ));
        }
        for (i, level) in spec.levels.iter().enumerate() {
            check_duration(&format!("levels[{i}].sla_seconds"), level.sla_seconds)?;
        }
        if let AfterLast::Repeat { every_seconds } = spec.after_last {
            check_duration("after_last.every_seconds", every_seconds)?;
        }
        Ok(Policy { spec })
    }

    /// Seconds between renotifications after the chain, `None` when it stops there. A version
    /// stored before [`MIN_REPEAT_SECONDS`] was enforced renotifies at that pace, no faster.
    pub fn repeat_every_seconds(&self) -> Option<i64> {
        match self.spec.after_last {
            AfterLast::Stop => None,
            AfterLast::Repeat { every_seconds } => Some(every_seconds.max(MIN_REPEAT_SECONDS)),
        }
    }

    /// The seed's policy: SLA 24h, warning 2h before the deadline (at 22h), one level to the
    /// assignee's manager (or the workflow's escalation target) with 24h, then stop; 24x7.
    pub fn default_policy() -> Policy {
        const DAY: i64 = 86_400;
        Policy {
            spec: PolicySpec {
                sla_seconds: DAY,
                warning: Warning::Before { seconds: 7_200 },
                levels: vec![LevelSpec {
                    target: Target::Manager,
                    sla_seconds: DAY,
                }],
                after_last: AfterLast::Stop,
                calendar_id: None,
                channels: None,
            },
        }
    }

    /// The validated spec.
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    /// Number of escalation levels (level 0, the original assignee, not included).
    pub fn level_count(&self) -> u32 {
        // Saturating: a chain longer than u32::MAX cannot be built in memory anyway.
        u32::try_from(self.spec.levels.len()).unwrap_or(u32::MAX)
    }

    /// SLA of `level`: 0 is the original assignee, `n` is `levels[n - 1]`; `None` beyond.
    pub fn sla_seconds(&self, level: u32) -> Option<i64> {
        match level {
            0 => Some(self.spec.sla_seconds),
            n => self.level(n).map(|l| l.sla_seconds),
        }
    }

    /// Target of `level` (>= 1); `None` for level 0 and beyond the chain.
    pub fn target(&self, level: u32) -> Option<&Target> {
        self.level(level).map(|l| &l.target)
    }

    /// Seconds after the level starts at which its warning is due: `sla - before`, or
    /// `sla * percent / 100` (rounded down). `None` beyond the chain.
    pub fn warn_offset_seconds(&self, level: u32) -> Option<i64> {
        let sla = self.sla_seconds(level)?;
        Some(match self.spec.warning {
            Warning::Before { seconds } => sla - seconds,
            Warning::Percent { percent } => sla * i64::from(percent) / 100,
        })
    }

    /// Checks that every level's SLA can be measured on `calendar` (the policy's
    /// `calendar_id`) from `from`: a deadline further out than the calendar's horizon (1,000
    /// years) is never, so a workflow on such a level would never be reminded or escalated. The
    /// error names the longest level's `sla_seconds`; with 17 hours of work a week or more,
    /// every SLA a policy takes is reachable.
    pub fn check_reachable_on(
        &self,
        calendar: &Calendar,
        from: DateTime<Utc>,
    ) -> Result<(), PolicyError> {
        let longest = (0..=self.level_count())
            .filter_map(|level| Some((level, self.sla_seconds(level)?)))
            .max_by_key(|&(level, sla)| (sla, std::cmp::Reverse(level)));
        let Some((level, sla)) = longest else {
            return Ok(());
        };
        if calendar.add_business_seconds(from, sla) < DateTime::<Utc>::MAX_UTC {
            return Ok(());
        }
        let field = match level {
            0 => "sla_seconds".to_owned(),
            n => format!("levels[{}].sla_seconds", n - 1),
        };
        let weekly = calendar.weekly_working_seconds();
        let weekly = if weekly >= 3_600 {
            format!("{:.1} hours", weekly as f64 / 3_600.0)
        } else {
            format!("{weekly} seconds")
        };
        Err(PolicyError::new(
            field,
            format!(
                "{sla} seconds of work would take more than 1,000 years on calendar {:?} \
                 ({weekly} of work a week): its deadline would never come; shorten the SLA \
                 or give the calendar more working time",
                self.spec.calendar_id.as_deref().unwrap_or("24x7"),
            ),
        ))
    }

    fn level(&self, level: u32) -> Option<&LevelSpec> {
        let index = usize::try_from(level).ok()?.checked_sub(1)?;
        self.spec.levels.get(index)
    }
}

/// The shortest interval between renotifications after the chain ([`AfterLast::Repeat`]).
pub const MIN_REPEAT_SECONDS: i64 = 60;

fn check_duration(field: &str, seconds: i64) -> Result<(), PolicyError> {
    if seconds <= 0 {
        return Err(PolicyError::new(
            field,
            format!("must be positive, got {seconds}"),
        ));
    }
    if seconds > MAX_DURATION_SECONDS {
        return Err(PolicyError::new(
            field,
            format!("must be at most {MAX_DURATION_SECONDS} (about 100 years), got {seconds}"),
        ));
    }
    Ok(())
}

/// Checks the user targets of a policy being written: ids that fit an index (a target too
/// long for the assignee index set every workflow that reached it aside, every five minutes,
/// for ever), without surrounding spaces or control characters (`"user: bob"` was a user of its
/// own next to `"user:bob"`). Only for writes: a stored policy is read as it was accepted.
pub fn check_targets(spec: &PolicySpec) -> Result<(), PolicyError> {
    for (i, level) in spec.levels.iter().enumerate() {
        let Target::User(id) = &level.target else {
            continue;
        };
        let field = format!("levels[{i}].target");
        if id.chars().count() > MAX_ID_CHARS {
            return Err(PolicyError::new(
                field,
                format!(
                    "user id must be at most {MAX_ID_CHARS} characters (got {})",
                    id.chars().count()
                ),
            ));
        }
        if id.trim() != id || id.chars().any(char::is_control) {
            return Err(PolicyError::new(
                field,
                format!("user id {id:?} has surrounding spaces or control characters"),
            ));
        }
    }
    Ok(())
}

/// Rejects chains that would hand a workflow to nobody, to the person who already has it, or
/// back to someone who already had it. Consecutive `Manager` levels are fine: each walks one
/// step further up the org chart from the current assignee.
fn check_chain(levels: &[LevelSpec]) -> Result<(), PolicyError> {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut previous: Option<&Target> = None;
    for (i, level) in levels.iter().enumerate() {
        if let Target::User(id) = &level.target {
            let field = format!("levels[{i}].target");
            if id.trim().is_empty() {
                return Err(PolicyError::new(field, "user id must not be empty"));
            }

            if previous == Some(&level.target) {
                return Err(PolicyError::new(
                    field,
                    format!("escalates user {id:?} to themselves (same as the previous level)"),
                ));
            }
            if !seen.insert(id) {
                return Err(PolicyError::new(
                    field,
                    format!("user {id:?} already appears at an earlier level (circular chain)"),
                ));
            }
        }
        previous = Some(&level.target);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PolicySpec {
        PolicySpec {
            sla_seconds: 86_400,
            warning: Warning::Before { seconds: 7_200 },
            levels: vec![
                LevelSpec {
                    target: Target::Manager,
                    sla_seconds: 43_200,
                },
                LevelSpec {
                    target: Target::User("carol".into()),
                    sla_seconds: 14_400,
                },
            ],
            after_last: AfterLast::Stop,
            calendar_id: None,
            channels: None,
        }
    }

    fn field_of(spec: PolicySpec) -> String {
        Policy::new(spec)
            .expect_err("spec should be rejected")
            .field
    }

    fn user(id: &str, sla_seconds: i64) -> LevelSpec {
        LevelSpec {
            target: Target::User(id.into()),
            sla_seconds,
        }
    }

    /// A policy whose longest SLA takes more than the horizon's 1,000 years of work on its
    /// calendar was accepted, and every workflow on it waited for a deadline that never came.
    #[test]
    fn an_sla_the_calendar_cannot_reach_is_refused_naming_the_level() {
        use crate::{CalendarSpec, WindowSpec};
        let calendar = |end: &str| {
            Calendar::new(CalendarSpec {
                timezone: "Europe/London".into(),
                windows: vec![WindowSpec {
                    day: chrono::Weekday::Mon,
                    start: "09:00".into(),
                    end: end.into(),
                }],
                holidays: vec![],
            })
            .unwrap()
        };
        let from = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut long = spec();
        long.calendar_id = Some("thin".into());
        long.levels[0].sla_seconds = 60 * 365 * 86_400;
        let policy = Policy::new(long).unwrap();
        // one minute of work a week: 60 years of work would take ~1.9 million years
        let err = policy
            .check_reachable_on(&calendar("09:01"), from)
            .unwrap_err();
        assert_eq!(err.field, "levels[0].sla_seconds");
        assert!(err.message.contains("\"thin\""), "{}", err.message);
        assert!(
            err.message.contains("60 seconds of work a week"),
            "{}",
            err.message
        );
        // 15 hours a week reach those 60 years of work (in ~80 years); 17 a week reach the
        // longest SLA a policy takes, at any level
        assert!(policy.check_reachable_on(&calendar("24:00"), from).is_ok());
        let mut longest = spec();
        longest.sla_seconds = MAX_DURATION_SECONDS;
        let office = Calendar::new(CalendarSpec {
            timezone: "America/New_York".into(),
            windows: [chrono::Weekday::Mon, chrono::Weekday::Tue]
                .into_iter()
                .map(|day| WindowSpec {
                    day,
                    start: "08:00".into(),
                    end: "16:30".into(),
                })
                .collect(),
            holidays: vec![],
        })
        .unwrap();
        let policy = Policy::new(longest).unwrap();
        assert!(policy.check_reachable_on(&office, from).is_ok());
        // and level 0 is named as such when it is the one out of reach
        let err = policy
            .check_reachable_on(&calendar("10:00"), from)
            .unwrap_err();
        assert_eq!(err.field, "sla_seconds");
        assert!(
            err.message.contains("1.0 hours of work a week"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_policys_channels_must_be_known_and_listed_once() {
        let mut with = spec();
        with.channels = Some(vec!["slack".into(), "email".into()]);
        assert!(Policy::new(with.clone()).is_ok());
        with.channels = Some(vec!["email".into(), "pager".into()]);
        assert_eq!(field_of(with.clone()), "channels[1]");
        with.channels = Some(vec!["sms".into(), "sms".into()]);
        assert_eq!(field_of(with.clone()), "channels[1]");
        // stored specs without the field still read
        let stored: PolicySpec = serde_json::from_value(serde_json::json!({
            "sla_seconds": 86400, "warning": {"kind": "before", "seconds": 7200},
            "levels": [{"target": "manager", "sla_seconds": 86400}]
        }))
        .unwrap();
        assert_eq!(stored.channels, None);
    }

    /// A 3,000-character target was accepted; every workflow reaching it was refused by the
    /// assignee index and set aside every five minutes for ever. `"user: bob"` was a user of
    /// its own next to `"user:bob"`.
    #[test]
    fn user_targets_fit_an_index_and_have_no_surrounding_spaces() {
        let field_of = |spec: &PolicySpec| check_targets(spec).expect_err("refused").field;
        let mut with = spec();
        with.levels = vec![user(&"b".repeat(MAX_ID_CHARS), 14_400)];
        check_targets(&with).unwrap();
        with.levels = vec![user(&"b".repeat(MAX_ID_CHARS + 1), 14_400)];
        assert_eq!(field_of(&with), "levels[0].target");
        with.levels = vec![user("carol", 14_400), user(" bob", 14_400)];
        assert_eq!(field_of(&with), "levels[1].target");
        with.levels = vec![user("bo\tb", 14_400)];
        assert_eq!(field_of(&with), "levels[0].target");
        // what was stored before the check is still read
        Policy::new(with).unwrap();
    }

    #[test]
    fn a_valid_spec_is_accepted_and_exposes_its_levels() {
        let policy = Policy::new(spec()).unwrap();
        assert_eq!(policy.level_count(), 2);
        assert_eq!(policy.sla_seconds(0), Some(86_400));
        assert_eq!(policy.sla_seconds(1), Some(43_200));
        assert_eq!(policy.sla_seconds(2), Some(14_400));
        assert_eq!(policy.sla_seconds(3), None);
        assert_eq!(policy.target(0), None);
        assert_eq!(policy.target(1), Some(&Target::Manager));
        assert_eq!(policy.target(2), Some(&Target::User("carol".into())));
        assert_eq!(policy.target(3), None);
        assert_eq!(policy.warn_offset_seconds(0), Some(79_200));
        assert_eq!(policy.warn_offset_seconds(2), Some(7_200));
        assert_eq!(policy.warn_offset_seconds(3), None);
    }

    #[test]
    fn percent_warnings_are_a_share_of_each_level_sla() {
        let policy = Policy::new(PolicySpec {
            warning: Warning::Percent { percent: 75 },
            ..spec()
        })
        .unwrap();
        assert_eq!(policy.warn_offset_seconds(0), Some(64_800));
        assert_eq!(policy.warn_offset_seconds(1), Some(32_400));
        assert_eq!(policy.warn_offset_seconds(2), Some(10_800));
    }

    #[test]
    fn the_default_policy_is_the_seed_and_is_valid() {
        let policy = Policy::default_policy();
        assert_eq!(Policy::new(policy.spec().clone()), Ok(policy.clone()));
        assert_eq!(policy.sla_seconds(0), Some(86_400));
        assert_eq!(policy.warn_offset_seconds(0), Some(79_200));
        assert_eq!(policy.level_count(), 1);
        assert_eq!(policy.target(1), Some(&Target::Manager));
        assert_eq!(policy.sla_seconds(1), Some(86_400));
        assert_eq!(policy.spec().after_last, AfterLast::Stop);
        assert_eq!(policy.spec().calendar_id, None);
    }

    #[test]
    fn a_non_positive_sla_is_rejected() {
        for sla_seconds in [0, -1] {
            assert_eq!(
                field_of(PolicySpec {
                    sla_seconds,
                    ..spec()
                }),
                "sla_seconds"
            );
        }
    }

    #[test]
    fn an_sla_beyond_a_century_is_rejected() {
        let spec = PolicySpec {
            sla_seconds: MAX_DURATION_SECONDS + 1,
            ..spec()
        };
        assert_eq!(field_of(spec), "sla_seconds");
    }

    #[test]
    fn an_empty_chain_is_rejected() {
        let spec = PolicySpec {
            levels: vec![],
            ..spec()
        };
        assert_eq!(field_of(spec), "levels");
    }

    #[test]
    fn a_non_positive_level_sla_is_rejected_with_its_index() {
        let mut spec = spec();
        spec.levels[1].sla_seconds = 0;
        assert_eq!(field_of(spec), "levels[1].sla_seconds");
    }

    #[test]
    fn a_warning_at_or_after_the_deadline_is_rejected() {
        for seconds in [0, -60] {
            let spec = PolicySpec {
                warning: Warning::Before { seconds },
                ..spec()
            };
            assert_eq!(field_of(spec), "warning.seconds");
        }
    }

    #[test]
    fn a_warning_lead_not_shorter_than_every_level_sla_is_rejected() {
        // The shortest SLA is level 2's 4h: a 4h lead would warn when that level starts.
        let too_long = PolicySpec {
            warning: Warning::Before { seconds: 14_400 },
            ..spec()
        };
        assert_eq!(field_of(too_long), "warning.seconds");
        // Level 0 counts too.
        let level_zero_too_short = PolicySpec {
            sla_seconds: 3_600,
            warning: Warning::Before { seconds: 3_600 },
            ..spec()
        };
        assert_eq!(field_of(level_zero_too_short), "warning.seconds");
    }

    #[test]
    fn a_warning_percent_outside_1_to_99_is_rejected() {
        for percent in [0, 100, 255] {
            let spec = PolicySpec {
                warning: Warning::Percent { percent },
                ..spec()
            };
            assert_eq!(field_of(spec), "warning.percent");
        }
        // 50% of a 1 s level rounds down to a warning as the level starts
        let mut instant = spec();
        instant.warning = Warning::Percent { percent: 50 };
        instant.levels[0].sla_seconds = 1;
        assert_eq!(field_of(instant.clone()), "warning.percent");
        instant.levels[0].sla_seconds = 2;
        assert!(Policy::new(instant).is_ok());
    }

    #[test]
    fn a_non_positive_repeat_interval_is_rejected() {
        let zero = PolicySpec {
            after_last: AfterLast::Repeat { every_seconds: 0 },
            ..spec()
        };
        assert_eq!(field_of(zero), "after_last.every_seconds");
        let every = |every_seconds| PolicySpec {
            after_last: AfterLast::Repeat { every_seconds },
            ..spec()
        };
        assert_eq!(field_of(every(59)), "after_last.every_seconds");
        assert!(Policy::new(every(60)).is_ok());
        // a version stored before the rule is read, and renotifies no faster than it allows
        let stored = Policy::stored(every(1)).unwrap();
        assert_eq!(stored.repeat_every_seconds(), Some(MIN_REPEAT_SECONDS));
        assert_eq!(
            Policy::new(every(90)).unwrap().repeat_every_seconds(),
            Some(90)
        );
    }

    #[test]
    fn an_empty_user_target_is_rejected() {
        let mut spec = spec();
        spec.levels[0] = user("", 3_600 * 12);
        assert_eq!(field_of(spec), "levels[0].target");
    }

    #[test]
    fn escalating_a_user_to_themselves_is_rejected() {
        let mut spec = spec();
        spec.levels = vec![user("carol", 14_400), user("carol", 14_400)];
        let err = Policy::new(spec).unwrap_err();
        assert_eq!(err.field, "levels[1].target");
        assert!(err.message.contains("themselves"), "{err}");
    }

    #[test]
    fn a_circular_chain_is_rejected() {
        let mut spec = spec();
        spec.levels = vec![
            user("carol", 14_400),
            user("dave", 14_400),
            user("carol", 14_400),
        ];
        let err = Policy::new(spec).unwrap_err();
        assert_eq!(err.field, "levels[2].target");
        assert!(err.message.contains("circular"), "{err}");
    }

    #[test]
    fn consecutive_manager_levels_walk_up_the_org_chart() {
        let mut spec = spec();
        spec.levels = vec![
            LevelSpec {
                target: Target::Manager,
                sla_seconds: 14_400,
            },
            LevelSpec {
                target: Target::Manager,
                sla_seconds: 14_400,
            },
        ];
        assert!(Policy::new(spec).is_ok());
    }

    #[test]
    fn targets_round_trip_through_their_string_forms() {
        assert_eq!("manager".parse(), Ok(Target::Manager));
        assert_eq!("user:u-42".parse(), Ok(Target::User("u-42".into())));
        assert_eq!(Target::Manager.to_string(), "manager");
        assert_eq!(Target::User("u-42".into()).to_string(), "user:u-42");
        for bad in ["boss", "Manager", "user:", "user", ""] {
            let err = bad.parse::<Target>().unwrap_err();
            assert_eq!(err.field, "target");
            assert!(
                err.message.contains("\"manager\" or \"user:<id>\""),
                "{err}"
            );
        }
    }

    #[test]
    fn a_policy_spec_round_trips_through_json() {
        let spec = PolicySpec {
            warning: Warning::Percent { percent: 90 },
            after_last: AfterLast::Repeat {
                every_seconds: 3_600,
            },
            calendar_id: Some("uk-office".into()),
            channels: None,
            ..spec()
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "sla_seconds": 86400,
                "warning": {"kind": "percent", "percent": 90},
                "levels": [
                    {"target": "manager", "sla_seconds": 43200},
                    {"target": "user:carol", "sla_seconds": 14400}
                ],
                "after_last": {"kind": "repeat", "every_seconds": 3600},
                "calendar_id": "uk-office"
            })
        );
        assert_eq!(serde_json::from_value::<PolicySpec>(json).unwrap(), spec);
    }

    #[test]
    fn optional_policy_fields_default_to_stop_and_24x7() {
        let spec: PolicySpec = serde_json::from_str(
            r#"{"sla_seconds": 86400, "warning": {"kind": "before", "seconds": 7200},
                "levels": [{"target": "manager", "sla_seconds": 86400}]}"#,
        )
        .unwrap();
        assert_eq!(&spec, Policy::default_policy().spec());
    }

    #[test]
    fn unknown_policy_fields_are_rejected() {
        let cases = [
            // top level
            r#"{"sla_seconds": 1, "warning": {"kind": "before", "seconds": 1},
                "levels": [], "slaSeconds": 2}"#,
            // inside a tagged enum
            r#"{"sla_seconds": 1, "warning": {"kind": "before", "seconds": 1, "percent": 5},
                "levels": []}"#,
            // inside a level
            r#"{"sla_seconds": 1, "warning": {"kind": "before", "seconds": 1},
                "levels": [{"target": "manager", "sla_seconds": 1, "notify": true}]}"#,
        ];
        for json in cases {
            let err = serde_json::from_str::<PolicySpec>(json).unwrap_err();
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
    }

    #[test]
    fn a_bad_target_string_names_the_accepted_forms() {
        let err = serde_json::from_str::<PolicySpec>(
            r#"{"sla_seconds": 1, "warning": {"kind": "before", "seconds": 1},
                "levels": [{"target": "boss", "sla_seconds": 1}]}"#,
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(r#"expected "manager" or "user:<id>", got "boss""#),
            "{message}"
        );
    }
}
