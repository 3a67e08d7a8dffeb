//! The console's page shell (navigation, flash message, stylesheet) and the small formatting
//! helpers every page shares. maud escapes every interpolated value; nothing here emits
//! `PreEscaped` except the constant stylesheet.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::session::Session;

/// The whole stylesheet: small, no build step, readable on a laptop and a phone.
const CSS: &str = r#"
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#dde2e8;--bg:#f6f7f9;--card:#fff;--ok:#1f7a3a;--warn:#a55d00;--bad:#b3261e;--link:#1a56b8}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1d2330;color:#fff;padding:.6rem 1rem;display:flex;flex-wrap:wrap;gap:.4rem 1rem;align-items:center}
header a{color:#fff;text-decoration:none;padding:.2rem .4rem;border-radius:4px}
header a.on{background:#3a4558}
header .brand{font-weight:700;margin-right:.5rem}
header form{margin-left:auto}
main{max-width:1100px;margin:0 auto;padding:1rem}
h1{font-size:1.35rem;margin:.2rem 0 1rem}
h2{font-size:1.05rem;margin:1.4rem 0 .5rem}
a{color:var(--link)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:.6rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:.6rem .8rem}
.card b{display:block;font-size:1.4rem}
.card span{color:var(--muted);font-size:.85rem}
.scroll{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:.8rem;color:var(--muted);font-weight:600;white-space:nowrap}
tr:last-child td{border-bottom:0}
.ok{color:var(--ok)}.warning{color:var(--warn)}.breached,.dead,.failed{color:var(--bad)}
.pill{display:inline-block;padding:0 .4rem;border-radius:9px;border:1px solid currentColor;font-size:.8rem;white-space:nowrap}
.muted{color:var(--muted)}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.8rem;max-height:10rem;overflow:auto}
form.inline{display:inline}
form.bar{display:flex;flex-wrap:wrap;gap:.4rem;align-items:end;margin-bottom:.8rem}
label{display:flex;flex-direction:column;font-size:.8rem;color:var(--muted);gap:.15rem}
input,select,button{font:inherit;padding:.3rem .5rem;border:1px solid #b9c1cc;border-radius:4px;background:#fff}
button{background:#1a56b8;color:#fff;border-color:#1a56b8;cursor:pointer}
button.quiet{background:#fff;color:var(--fg);border-color:#b9c1cc}
.flash{background:#e8f3ea;border:1px solid #a9d3b2;padding:.5rem .8rem;border-radius:6px;margin-bottom:1rem}
.error{background:#fbeceb;border:1px solid #e4a9a5;padding:.5rem .8rem;border-radius:6px;margin-bottom:1rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:0}
dt{color:var(--muted)}dd{margin:0}
.actions{display:flex;flex-wrap:wrap;gap:.5rem;margin:.6rem 0}
.pager{margin:.6rem 0}
@media (max-width:600px){body{font-size:14px}main{padding:.6rem}th,td{padding:.3rem .4rem}.hide-sm{display:none}}
"#;

/// The sections of the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// `/ui`.
    Overview,
    /// `/ui/workflows`.
    Workflows,
    /// `/ui/inbox`.
    Inbox,
    /// `/ui/queues`.
    Queues,
    /// `/ui/checks`.
    Checks,
    /// Login and error pages.
    None,
}

/// A whole page: head, navigation (when signed in), optional flash, `body`.
pub fn page(
    title: &str,
    nav: Nav,
    session: Option<&Session>,
    flash: Option<&str>,
    body: Markup,
) -> Markup {
    let link = |href: &str, label: &str, this: Nav| {
        html! { a href=(href) class=[(nav == this).then_some("on")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · escalator" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    span.brand { "escalator" }
                    @if let Some(s) = session {
                        (link("/ui", "Overview", Nav::Overview))
                        (link("/ui/workflows", "Workflows", Nav::Workflows))
                        (link("/ui/inbox", "Inbox", Nav::Inbox))
                        (link("/ui/queues", "Queues", Nav::Queues))
                        (link("/ui/checks", "Checks", Nav::Checks))
                        @if s.signed_in {
                            form.inline method="post" action="/ui/logout" {
                                (csrf_field(s))
                                button.quiet type="submit" title={ "signed in as " (s.actor) } { "Sign out" }
                            }
                        }
                    }
                }
                main {
                    @if let Some(f) = flash {
                        p.flash role="status" { (f) }
                    }
                    (body)
                }
            }
        }
    }
}

/// The hidden CSRF field every POST form carries.
pub fn csrf_field(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// A POST form with one button (and the CSRF field), for actions.
pub fn action_button(s: &Session, action: &str, label: &str, extra: Markup) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(s))
            (extra)
            button type="submit" { (label) }
        }
    }
}

/// An instant as `2026-11-25 12:00:00 UTC`.
pub fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An optional instant, or a dash.
pub fn opt_at(t: Option<DateTime<Utc>>) -> String {
    t.map(at).unwrap_or_else(|| "—".into())
}

/// A duration in seconds as `1h 05m`, `3m 20s` or `12s` (negative: `-`).
pub fn span(seconds: i64) -> String {
    let sign = if seconds < 0 { "-" } else { "" };
    let s = seconds.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{sign}{d}d {h:02}h")
    } else if h > 0 {
        format!("{sign}{h}h {m:02}m")
    } else if m > 0 {
        format!("{sign}{m}m {sec:02}s")
    } else {
        format!("{sign}{sec}s")
    }
}

/// "in 5m 00s" or "3m 00s ago" relative to `now`.
pub fn countdown(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let d = (t - now).num_seconds();
    if d >= 0 {
        format!("in {}", span(d))
    } else {
        format!("{} ago", span(-d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_at_a_glance() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(200), "3m 20s");
        assert_eq!(span(3900), "1h 05m");
        assert_eq!(span(90_000), "1d 01h");
        assert_eq!(span(-61), "-1m 01s");
        let now = Utc::now();
        assert_eq!(
            countdown(now + chrono::Duration::seconds(300), now),
            "in 5m 00s"
        );
        assert_eq!(countdown(now - chrono::Duration::seconds(5), now), "5s ago");
    }
}
