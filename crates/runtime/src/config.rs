//! Typed configuration from environment variables. Every value is parsed once at start-up; a
//! bad value is an error naming the variable, never a panic later.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A configuration value that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={:?}: {reason}", shown(.name, .value))]
pub struct ConfigError {
    /// The environment variable.
    pub name: &'static str,
    /// What it held.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

/// What an error may print of a value: nothing of a secret (tokens, keys, passwords, and
/// webhook URLs, whose path is their credential), and a URL without the password of its user
/// part.
fn shown(name: &str, value: &str) -> String {
    if ["TOKEN", "SECRET", "KEY", "PASSWORD", "WEBHOOK"]
        .iter()
        .any(|s| name.contains(s))
    {
        "(hidden)".into()
    } else {
        redact(value)
    }
}

/// An address as shown to those who may not use it: a URL (a webhook, whose path and query
/// are its credential) as its scheme, host and port alone, `https://hooks.slack.com/…`, user
/// info left out; anything else (a member id, an email address) as it is.
pub fn host_only(address: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = address.split_once("://") else {
        return address.into();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}/…").into()
}

/// The URL with any password replaced, safe for messages and logs: the one in its user info
/// (`user:***@host`), and the values of query parameters that name a password, secret or
/// token (`?password=…`, which PostgreSQL and Redis URLs accept as well, was shown whole).
pub fn redact(url: &str) -> String {
    // the user info runs to the last `@`: a password left unencoded may hold `/`, `?` or `@`
    // (a generated one often does), and cutting the authority at the first of them showed it
    let masked = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    };
    let (base, query) = match masked.split_once('?') {
        Some((base, query)) => (base.to_owned(), Some(query.to_owned())),
        None => (masked, None),
    };
    let mut out = base;
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if secret_name(key) => format!("{key}=***"),
                _ => param.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// Whether a query parameter of that name carries a secret.
fn secret_name(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "key"]
        .iter()
        .any(|s| key.contains(s))
        && !key.ends_with("cert")
        && key != "sslrootcert"
}

/// Where variables come from: the process environment, or a map in tests.
pub trait Source {
    /// The value of `name`, if set and not empty.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl<S: std::hash::BuildHasher> Source for std::collections::HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name).cloned()
    }
}

/// Parses `name` with `FromStr`, or returns `default` when unset.
pub fn parse<T>(src: &dyn Source, name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match src.get(name) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|e: T::Err| ConfigError {
            name,
            reason: e.to_string(),
            value,
        }),
    }
}

/// A switch: `1`, `true`, `yes`, `on` or `0`, `false`, `no`, `off` (any case), `default`
/// when unset. One spelling for every switch: `ESCALATOR_EVENTS=1`, as `.env.example` wrote
/// it, was refused while `ESCALATOR_API_INSECURE` wanted exactly that.
pub fn flag(src: &dyn Source, name: &'static str, default: bool) -> Result<bool, ConfigError> {
    let Some(raw) = src.get(name) else {
        return Ok(default);
    };
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError {
            name,
            value: raw,
            reason: "expected 1 or 0 (or true/false, yes/no, on/off)".into(),
        }),
    }
}

/// A positive integer within `range`.
pub fn bounded(
    src: &dyn Source,
    name: &'static str,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ConfigError> {
    let v: u32 = parse(src, name, default)?;
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError {
            name,
            value: v.to_string(),
            reason: format!("must be between {} and {}", range.start(), range.end()),
        })
    }
}

/// A duration in seconds (fractions allowed), greater than zero.
pub fn seconds(
    src: &dyn Source,
    name: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(value) = src.get(name) else {
        return Ok(default);
    };
    match value.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        _ => Err(ConfigError {
            name,
            value,
            reason: "expected a number of seconds greater than 0".into(),
        }),
    }
}

/// A number of seconds where `0` means "never" (None): a retention that can be turned off.
pub fn seconds_or_never(
    src: &dyn Source,
    name: &'static str,
    default: Duration,
) -> Result<Option<Duration>, ConfigError> {
    match src.get(name) {
        Some(v) if v.trim().parse::<f64>() == Ok(0.0) => Ok(None),
        _ => seconds(src, name, default)
            .map(Some)
            .map_err(|e| ConfigError {
                reason: "expected 0 (never) or a number of seconds greater than 0".into(),
                ..e
            }),
    }
}

/// A socket address such as `0.0.0.0:9100`.
pub fn addr(
    src: &dyn Source,
    name: &'static str,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let value = src.get(name).unwrap_or_else(|| default.to_owned());
    value.trim().parse().map_err(|_| ConfigError {
        name,
        reason: "expected an IP address and a port, e.g. 0.0.0.0:9100 or 127.0.0.1:9100 \
                 (a host name such as localhost is not accepted)"
            .into(),
        value,
    })
}

/// A string, or the default.
pub fn string(src: &dyn Source, name: &'static str, default: &str) -> String {
    src.get(name).unwrap_or_else(|| default.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_take_every_usual_spelling_and_refuse_others() {
        let env = |v: &str| {
            std::collections::HashMap::from([("ESCALATOR_EVENTS".to_owned(), v.to_owned())])
        };
        for on in ["1", "true", "TRUE", " yes ", "on"] {
            assert!(flag(&env(on), "ESCALATOR_EVENTS", false).unwrap(), "{on}");
        }
        for off in ["0", "false", "No", "off"] {
            assert!(!flag(&env(off), "ESCALATOR_EVENTS", true).unwrap(), "{off}");
        }
        let unset = std::collections::HashMap::<String, String>::new();
        assert!(flag(&unset, "ESCALATOR_EVENTS", true).unwrap());
        let e = flag(&env("maybe"), "ESCALATOR_EVENTS", false).unwrap_err();
        assert_eq!((e.name, e.value.as_str()), ("ESCALATOR_EVENTS", "maybe"));
    }
    use std::collections::HashMap;

    #[test]
    fn a_url_is_shown_without_its_passwords_wherever_they_are() {
        for (url, shown) in [
            (
                "postgres://app:s3cret@db:5432/escalator",
                "postgres://app:***@db:5432/escalator",
            ),
            // as a parameter, which PostgreSQL URLs take too: it was shown whole
            (
                "postgres://app@db/escalator?password=s3cret&sslmode=require",
                "postgres://app@db/escalator?password=***&sslmode=require",
            ),
            (
                "postgres://db/e?sslmode=verify-full&sslrootcert=/ca.pem&sslpassword=k3y",
                "postgres://db/e?sslmode=verify-full&sslrootcert=/ca.pem&sslpassword=***",
            ),
            ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
            // unencoded characters a generated password holds
            (
                "postgres://app:s3cret/k3y+x@db/escalator",
                "postgres://app:***@db/escalator",
            ),
            ("postgres://app:s3cret?k3y@db/x", "postgres://app:***@db/x"),
            (
                "redis://:s3cret@k3y/9@redis:6379/0",
                "redis://:***@redis:6379/0",
            ),
            // an @ after the host is no user info
            ("sqlite://data/a@b.db", "sqlite://data/a@b.db"),
            ("sqlite://escalator.db", "sqlite://escalator.db"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
            assert!(!redact(url).contains("s3cret") && !redact(url).contains("k3y"));
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unset_variables_take_their_defaults() {
        let e = env(&[]);
        assert_eq!(
            bounded(&e, "ESCALATOR_BATCH_SIZE", 500, 1..=5000).unwrap(),
            500
        );
        assert_eq!(
            seconds(&e, "X", Duration::from_secs(3)).unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(addr(&e, "A", "0.0.0.0:9100").unwrap().port(), 9100);
        assert_eq!(
            seconds_or_never(&e, "R", Duration::from_secs(9)).unwrap(),
            Some(Duration::from_secs(9))
        );
    }

    #[test]
    fn zero_turns_a_retention_off_and_nonsense_is_refused() {
        let e = env(&[("R", "0"), ("S", "86400"), ("T", "-5"), ("U", "a week")]);
        assert_eq!(
            seconds_or_never(&e, "R", Duration::from_secs(9)).unwrap(),
            None
        );
        assert_eq!(
            seconds_or_never(&e, "S", Duration::from_secs(9)).unwrap(),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            seconds_or_never(&e, "T", Duration::from_secs(9))
                .unwrap_err()
                .name,
            "T"
        );
        let err = seconds_or_never(&e, "U", Duration::from_secs(9)).unwrap_err();
        assert_eq!(err.name, "U");
        assert!(err.reason.contains("0 (never)"), "{err}");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = env(&[
            ("ESCALATOR_BATCH_SIZE", "lots"),
            ("T", "-1"),
            ("A", "nowhere"),
        ]);
        let err = bounded(&e, "ESCALATOR_BATCH_SIZE", 500, 1..=5000).unwrap_err();
        assert!(
            err.to_string().starts_with("ESCALATOR_BATCH_SIZE=\"lots\""),
            "{err}"
        );
        assert_eq!(
            seconds(&e, "T", Duration::from_secs(1)).unwrap_err().name,
            "T"
        );
        assert_eq!(addr(&e, "A", "0.0.0.0:1").unwrap_err().name, "A");
        let e = env(&[("ESCALATOR_BATCH_SIZE", "0")]);
        let err = bounded(&e, "ESCALATOR_BATCH_SIZE", 500, 1..=5000).unwrap_err();
        assert!(err.reason.contains("between 1 and 5000"), "{err}");
    }

    #[test]
    fn an_error_never_prints_a_password_or_a_secret() {
        let url = ConfigError {
            name: "ESCALATOR_SMTP_URL",
            value: "smtpx://mailer:hunter2@relay:25".into(),
            reason: "expected smtp://".into(),
        };
        let shown = url.to_string();
        assert!(shown.contains("mailer:***@relay:25"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let token = ConfigError {
            name: "ESCALATOR_API_TOKENS",
            value: "ops:s3cret-token".into(),
            reason: "expected name:token:scope".into(),
        };
        assert!(!token.to_string().contains("s3cret"), "{token}");
        assert!(token.to_string().starts_with("ESCALATOR_API_TOKENS="));
        // a webhook's path is its credential, with or without its scheme
        let hook = ConfigError {
            name: "ESCALATOR_SLACK_WEBHOOK_URL",
            value: "hooks.slack.com/services/T0/B0/HOOKSECRET".into(),
            reason: "expected https://".into(),
        };
        assert!(!hook.to_string().contains("HOOKSECRET"), "{hook}");
    }

    #[test]
    fn a_url_is_shown_by_its_host_and_anything_else_as_it_is() {
        assert_eq!(
            host_only("https://me:pw@hooks.slack.com:443/services/T0/B0/SECRET?t=1#x"),
            "https://hooks.slack.com:443/…"
        );
        assert_eq!(host_only("http://127.0.0.1:9"), "http://127.0.0.1:9/…");
        assert_eq!(host_only("U024BE7LH"), "U024BE7LH");
    }
}
