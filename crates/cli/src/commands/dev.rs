//! `escalator dev`: the whole system in one process on SQLite — worker, beat (and the api) on
//! the same code paths as production, with the queues in a second SQLite file. `--demo` loads
//! a small org chart and a policy with SLAs of seconds, so that a reminder and an escalation
//! happen within about a minute.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use escalator_beat::Beat;
use escalator_jobs::{QueueNames, Queues};
use escalator_policy::{AfterLast, LevelSpec, Policy, PolicySpec, Target, Warning};
use escalator_runtime::serve::Health;
use escalator_store::{NewWorkflow, Store, StoreConfig, StoreError, User};
use escalator_worker::{Engine, PolicyCache, WorkerConfig};

/// Where `escalator dev` keeps its data unless told (`--db`).
const DEFAULT_DB: &str = "escalator-dev.db";

/// The api's port unless told (`--port`).
const DEFAULT_PORT: u16 = 5000;

/// Arguments of `escalator dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Load a demo org chart and workflows with SLAs of seconds.
    #[arg(long)]
    demo: bool,
    /// The SQLite database file (the queues go next to it, in `<file>.queue`).
    #[arg(long, default_value = DEFAULT_DB)]
    db: PathBuf,
    /// Port of the api (1–65535: the printed URLs name it).
    #[arg(long, default_value_t = DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
}

/// The `sqlite://` URL of the file at `path`. sqlx decodes percent escapes in the path and
/// reads what follows a `?` as options, so `%`, `?` and `#` are escaped: `--db 'a%20b.db'`
/// opened `a b.db` while the banner and the mail folder named `a%20b.db`.
fn sqlite_url(path: &str) -> String {
    let mut url = String::from("sqlite://");
    for c in path.chars() {
        match c {
            '%' => url.push_str("%25"),
            '?' => url.push_str("%3F"),
            '#' => url.push_str("%23"),
            c => url.push(c),
        }
    }
    url
}

/// `word` as a POSIX shell reads it back: quoted unless it is plain.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs until Ctrl-C. `ignored_database_url` is a `--database-url` / `DATABASE_URL` given for
/// the other commands: dev keeps its data in `--db`, and says so instead of ignoring it.
pub async fn run(args: DevArgs, ignored_database_url: Option<&str>) -> anyhow::Result<()> {
    // the same variables as the worker and the beat, checked the same way (a bad value stops
    // dev at start-up, naming it); dev only re-reads deadlines more often when unset
    let env = escalator_runtime::config::ProcessEnv;
    let mut settings = crate::config::WorkerSettings::from_env(&env)?;
    // four pollers every 25 ms kept an idle dev at about an eighth of a core on a laptop; a
    // tenth of a second is no wait a person notices
    if escalator_runtime::config::Source::get(&env, "ESCALATOR_POLL_INTERVAL").is_none() {
        settings.worker.poll_interval = Duration::from_millis(100);
    }
    let mut beat_config = crate::config::BeatSettings::from_env(&env)?.beat;
    // the api's own variables, as `escalator api` reads them: tokens set and then silently
    // ignored left an api open that its user believed protected
    let tokens = crate::config::api_tokens(&env)?;
    let api_timeout = crate::config::api_timeout(&env)?;
    let ignored_api = set_among(&env, &["ESCALATOR_API_ADDR", "ESCALATOR_API_INSECURE"]);
    let ignored_queue = set_among(&env, &["REDIS_URL", "ESCALATOR_QUEUE_URL"]);
    if escalator_runtime::config::Source::get(&env, "ESCALATOR_DEADLINE_RECHECK").is_none() {
        beat_config.deadline_recheck = beat_config.deadline_recheck.min(Duration::from_secs(2));
    }
    // the port first: a clash found after the demo was loaded and the worker started added
    // three demo workflows at every failed start, and orphaned any job fetched meanwhile
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (is another escalator dev running? try --port)")
    })?;
    let url = sqlite_url(&args.db.display().to_string());
    let mut config = StoreConfig::new(url.clone());
    config.max_connections = 8;
    let store = Store::connect(&config)
        .await
        .with_context(|| format!("opening {}", args.db.display()))?;
    store
        .migrate()
        .await
        .context("migrating the dev database")?;
    let queue_file = crate::config::queue_file_beside(&args.db.display().to_string());
    let queues = Queues::connect(&sqlite_url(&queue_file), QueueNames::default())
        .await
        .with_context(|| format!("opening the queue database {queue_file}"))?;
    if args.demo {
        demo(&store).await.context("loading the demo data")?;
    }
    let metrics =
        escalator_runtime::metrics::install().context("installing the metrics recorder")?;
    for emitter in [
        escalator_runtime::metrics::Emitter::Worker,
        escalator_runtime::metrics::Emitter::Beat,
    ] {
        escalator_runtime::metrics::start_at_zero(emitter);
    }
    // one each: sharing one, a beat stepping every few seconds kept a wedged worker "ok"
    let worker_health = Health::new(Duration::from_secs(300));
    let beat_health = Health::new(Duration::from_secs(300));
    let engine = Engine {
        store: store.clone(),
        queues: queues.clone(),
        config: settings.engine,
        policies: PolicyCache::default(),
    };
    let worker_config = WorkerConfig {
        name: "dev".into(),
        ..settings.worker
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    // email goes to a folder next to the database unless SMTP is configured
    let mut delivery =
        crate::config::DeliverySettings::from_env(&escalator_runtime::config::ProcessEnv)?;
    let mail_dir = PathBuf::from(format!("{}.mail", args.db.display()));
    if delivery.email == crate::config::EmailConfig::None {
        delivery.email = crate::config::EmailConfig::Files {
            dir: mail_dir.clone(),
            from: "escalator dev <escalator@localhost>".into(),
        };
    }
    escalator_worker::message::configure(delivery.message_settings()?);
    let deliverer = delivery.deliverer(&store)?;
    // Ctrl-C from here on stops gracefully: the banner below invites it
    let signals = escalator_runtime::shutdown::listen();
    // every part runs until the stop signal; one that ends before it is a failure of `dev`
    let mut parts = tokio::task::JoinSet::new();
    {
        let (engine, health, stop) = (engine, worker_health.clone(), stopped());
        parts.spawn(async move {
            let r = escalator_worker::run(engine, worker_config, deliverer, health, stop).await;
            ("worker", r.map(|_| ()).map_err(|e| e.to_string()))
        });
    }
    {
        let beat = Beat::new(
            store.clone(),
            queues.clone(),
            beat_config,
            beat_health.clone(),
        );
        let stop = stopped();
        parts.spawn(async move { ("beat", beat.run(stop).await.map_err(|e| e.to_string())) });
    }
    // the api on loopback only, the embedded mode being for one person's machine; with tokens
    // if ESCALATOR_API_TOKENS names some, else answering only to local host names
    let authenticated = !tokens.is_empty();
    let state = escalator_api::AppState::new(store.clone(), queues.clone(), tokens, Some(metrics))
        .with_request_timeout(api_timeout)
        .with_engine_health("worker", worker_health)
        .with_engine_health("beat", beat_health)
        .guarding_hosts(true, crate::config::allowed_hosts(&env)?);
    {
        let stop = stopped();
        // as `escalator api`: the requests in flight end within their timeout
        let limits = escalator_runtime::http::Limits {
            drain_timeout: api_timeout + Duration::from_secs(1),
            ..Default::default()
        };
        parts.spawn(async move {
            let r = escalator_runtime::http::serve_with(
                listener,
                escalator_api::router(state),
                stop,
                limits,
            )
            .await;
            ("api", r.map_err(|e| e.to_string()))
        });
    }
    banner(&store, args.port, args.demo, authenticated).await;
    if let crate::config::EmailConfig::Files { dir, .. } = &delivery.email {
        stdout_line!("  email       one .eml per message in {}/", dir.display());
        stdout_line!();
    }
    if let Some(url) = ignored_database_url {
        let shown = escalator_runtime::config::redact(url);
        stdout_line!(
            "  note        --database-url / DATABASE_URL ({shown}) is for the other commands: \
             dev keeps its data in {} (--db)",
            args.db.display()
        );
        stdout_line!();
    }
    if let Some(vars) = ignored_queue {
        // the other commands obey them: pointed at dev's database with REDIS_URL set, they
        // looked at (or enqueued on) a queue no dev worker takes
        stdout_line!(
            "  note        {vars} for the other commands: dev keeps its queues in {queue_file} \
             (unset when pointing other commands at dev's database)"
        );
        stdout_line!();
    }
    if let Some(vars) = ignored_api {
        stdout_line!(
            "  note        {vars} for `escalator api`: dev listens on 127.0.0.1:{} (--port)",
            args.port
        );
        stdout_line!();
    }
    let early = tokio::select! {
        _ = signals.stopped() => None,
        Some(done) = parts.join_next() => Some(done),
    };
    let _ = stop_tx.send(true);
    let mut failure = None;
    if let Some(done) = early {
        let (part, why) = match done {
            Ok((part, Ok(()))) => (part, "it ended on its own".to_owned()),
            Ok((part, Err(e))) => (part, e),
            Err(e) => ("a part", format!("it panicked: {e}")),
        };
        tracing::error!(part, error = %why, "stopped unexpectedly; stopping the rest");
        // what still runs starts nothing more (the outbox drain's sends), as on a signal
        escalator_runtime::shutdown::request_stop();
        failure = Some(format!("the {part} stopped unexpectedly: {why}"));
    }
    while let Some(done) = parts.join_next().await {
        match done {
            Ok((_, Ok(()))) => {}
            Ok((part, Err(e))) => tracing::error!(part, error = %e, "stopped with an error"),
            Err(e) => tracing::error!(error = %e, "a part panicked"),
        }
    }
    store.close().await;
    // the command that opens this data again: a plain `escalator dev` opens the default file
    let mut again = String::from("escalator dev");
    if args.db != std::path::Path::new(DEFAULT_DB) {
        again.push_str(&format!(
            " --db {}",
            shell_word(&args.db.display().to_string())
        ));
    }
    if args.port != DEFAULT_PORT {
        again.push_str(&format!(" --port {}", args.port));
    }
    stdout_line!(
        "stopped; your data is in {} (run `{again}` again to resume)",
        args.db.display()
    );
    match failure {
        Some(f) => anyhow::bail!(f),
        None => Ok(()),
    }
}

/// Which of `names` are set, as a sentence's subject ("A is", "A and B are"); None if none is.
fn set_among(env: &dyn escalator_runtime::config::Source, names: &[&str]) -> Option<String> {
    let set: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| env.get(name).is_some())
        .collect();
    match set.as_slice() {
        [] => None,
        [one] => Some(format!("{one} is")),
        many => Some(format!("{} are", many.join(" and "))),
    }
}

/// The demo: an org chart, a policy with SLAs of seconds, three workflows starting now.
async fn demo(store: &Store) -> anyhow::Result<()> {
    let user = |id: &str, name: &str, manager: Option<&str>| User {
        id: id.into(),
        display_name: name.into(),
        email: Some(format!("{id}@demo.escalator.dev")),
        phone: None,
        slack: None,
        manager_id: manager.map(Into::into),
        active: true,
        channels: None,
    };
    store
        .upsert_users(&[
            user("carol", "Carol (department head)", None),
            user("bob", "Bob (manager)", Some("carol")),
            user("alice", "Alice", Some("bob")),
            user("erin", "Erin", Some("bob")),
            user("dave", "Dave", Some("bob")),
        ])
        .await?;
    // 60 s to act, a reminder 30 s before; then the manager gets 60 s; then the department head.
    let spec = PolicySpec {
        sla_seconds: 60,
        warning: Warning::Before { seconds: 30 },
        levels: vec![
            LevelSpec {
                target: Target::Manager,
                sla_seconds: 60,
            },
            LevelSpec {
                target: Target::Manager,
                sla_seconds: 120,
            },
        ],
        after_last: AfterLast::Stop,
        calendar_id: None,
        channels: None,
    };
    let policy = Policy::new(spec)?;
    match store.latest_policy("demo").await {
        Ok(p) if p.policy == policy => {}
        Ok(_) | Err(StoreError::NotFound { .. }) => {
            store
                .create_policy_version("demo", "Demo: 60 s SLA, reminder at 30 s", &policy)
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    let now = Utc::now();
    // unique per start, also on another day at the same time
    let stamp = now.format("%Y%m%d-%H%M%S");
    for (n, (title, assignee, initiator)) in [
        ("Laptop purchase", "alice", "dave"),
        ("Conference travel", "erin", "alice"),
        ("Budget sign-off Q3", "bob", "erin"),
    ]
    .into_iter()
    .enumerate()
    {
        store
            .create_workflow(
                &NewWorkflow {
                    external_id: format!("demo-{stamp}-{n}"),
                    title: title.into(),
                    kind: "approval".into(),
                    stage: "Manager Approval".into(),
                    assignee: assignee.into(),
                    initiator: initiator.into(),
                    escalation_target: None,
                    policy_id: Some("demo".into()),
                    stage_started_at: Some(now),
                    metadata: serde_json::json!({ "demo": true }),
                },
                now,
            )
            .await?;
    }
    Ok(())
}

async fn banner(store: &Store, port: u16, demo: bool, authenticated: bool) {
    let base = format!("http://127.0.0.1:{port}");
    stdout_line!();
    stdout_line!("escalator dev is running (Ctrl-C to stop)");
    stdout_line!("  console     {base}/ui");
    stdout_line!("  api         {base}/api/v1/workflows  (explore it: {base}/docs)");
    stdout_line!("  metrics     {base}/metrics");
    stdout_line!("  health      {base}/healthz");
    if authenticated {
        stdout_line!(
            "  tokens      the api and the console ask for one of ESCALATOR_API_TOKENS \
             (Authorization: Bearer <token>)"
        );
    }
    let empty = store
        .list_workflows(&escalator_store::WorkflowFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .is_ok_and(|list| list.is_empty());
    if !demo && empty {
        stdout_line!(
            "  no workflows yet: `escalator dev --demo` adds three that remind and escalate \
             within minutes, or POST them to {base}/api/v1/workflows"
        );
    }
    if demo {
        let filter = escalator_store::WorkflowFilter {
            status: Some(escalator_policy::Status::Pending),
            limit: 1000,
            ..Default::default()
        };
        if let Ok(list) = store.list_workflows(&filter).await
            && let Some(w) = list.iter().rev().find(|w| w.title == "Laptop purchase")
        {
            stdout_line!("  audit trail {base}/api/v1/workflows/{}/audit", w.id);
            stdout_line!("  manager     {base}/api/v1/notifications?recipient=bob");
            stdout_line!("  dept. head  {base}/api/v1/notifications?recipient=carol");
            stdout_line!(
                "  \"{}\" is assigned to {}, due {}",
                w.title,
                w.assignee,
                w.due_at.format("%H:%M:%S UTC")
            );
        }
        stdout_line!(
            "  watch: a reminder in ~30 s, an escalation to the manager in ~60 s, to the \
             department head in ~2 min"
        );
    }
    stdout_line!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file opened is the file named, whatever characters its name holds.
    #[test]
    fn a_db_path_with_url_characters_opens_that_very_file() {
        for path in ["/tmp/a%20b#c.db", "/tmp/what?.db", "/tmp/sp ace/plain.db"] {
            let options: sqlx::sqlite::SqliteConnectOptions = sqlite_url(path).parse().unwrap();
            assert_eq!(options.get_filename(), std::path::Path::new(path));
        }
    }

    #[test]
    fn the_resume_hint_quotes_what_a_shell_would_split() {
        assert_eq!(shell_word("data/dev.db"), "data/dev.db");
        assert_eq!(shell_word("my data/dev.db"), "'my data/dev.db'");
        assert_eq!(shell_word("it's.db"), r"'it'\''s.db'");
    }
}
