//! The `escalator` binary: parses the command line and environment, sets up logging, and hands
//! over to the command. Everything worth testing lives in the libraries.

/// `eprintln!` that cannot panic: stderr may be a closed pipe (`escalator status 2>&1 | head
/// -1`), and `eprintln!` then panicked (exit 101) over a message nobody could read.
macro_rules! stderr_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` that cannot panic, for output a reader may stop reading mid-way (`escalator
/// dev | tee log`, then Ctrl-C: the reader goes first, and `println!` panicked, exit 101).
macro_rules! stdout_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod commands;
mod config;
mod telemetry;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// escalator — workflow SLA reminders and escalations, exactly once.
#[derive(Debug, Parser)]
#[command(
    name = "escalator",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = "Exit status: 0 done; 1 failed (a check run failed, violations found, input \
                  refused, an SQLite file missing); 2 a usage error; 3 the database or the queue could not be reached; \
                  4 `enqueue --wait` ran out of --timeout (the run may still finish)."
)]
struct Cli {
    /// Database: postgres://user@host/db or sqlite://path/to/file.db (only `migrate` creates a
    /// missing SQLite file; `dev` uses --db instead).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://escalator.db",
        global = true
    )]
    database_url: String,

    /// Log format: "text" for people, "json" for log collectors.
    #[arg(long, env = "ESCALATOR_LOG_FORMAT", default_value = "text", global = true, value_parser = log_format)]
    log_format: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the database schema (idempotent).
    Migrate,
    /// Load deterministic demo/benchmark data: a 1,000-user org chart and N open workflows,
    /// exactly 15% in WARNING and 15% BREACHED at --now.
    Seed(commands::seed::SeedArgs),
    /// Run the worker role: the check planner and the escalation batches, from the queues.
    Worker,
    /// The whole system in one process on SQLite: the newcomer's first command.
    Dev(commands::dev::DevArgs),
    /// Serve the HTTP api on ESCALATOR_API_ADDR (default 0.0.0.0:5000).
    Api,
    /// Run the beat role: enqueue checks on the cron schedule and at deadlines (a second beat
    /// stands by and takes over when the leader stops).
    Beat,
    /// Enqueue a job from a script (e.g. `enqueue check --wait`).
    Enqueue(commands::enqueue::EnqueueArgs),
    /// Show what a check would do now, writing nothing (`check --dry-run`).
    Check(commands::check::CheckArgs),
    /// Check the invariants (one escalation, one reminder, no stale action, complete audit)
    /// over the whole database; exits 1 listing violations.
    Verify,
    /// Queue depths, dead jobs, due workflows and recent check runs.
    Status,
    /// Dead jobs: list and retry.
    Jobs(commands::jobs::JobsArgs),
    /// Deliveries in the outbox: list (`--dead`) and retry.
    Outbox(commands::outbox::OutboxArgs),
}

/// `--log-format` / `ESCALATOR_LOG_FORMAT`: clap's own refusal named only the flag, though
/// the value mostly comes from the variable.
fn log_format(value: &str) -> Result<String, String> {
    match value {
        // empty counts as unset, as for every other variable (compose and env files leave
        // values empty): it stopped every command
        "" => Ok("text".to_owned()),
        "text" | "json" => Ok(value.to_owned()),
        _ => Err("expected text or json (set by --log-format or ESCALATOR_LOG_FORMAT)".into()),
    }
}

fn main() -> ExitCode {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // given, not defaulted: `escalator dev` names what it does not use
    let database_url_given = matches
        .value_source("database_url")
        .is_some_and(|s| s != clap::parser::ValueSource::DefaultValue);
    let service = matches!(
        cli.command,
        Command::Worker | Command::Api | Command::Beat | Command::Dev(_)
    );
    telemetry::init(&cli.log_format, service);
    if let Some(name) =
        config::placeholder_variable(&escalator_runtime::config::ProcessEnv, &cli.database_url)
    {
        stderr_line!(
            "error: {name} holds a placeholder (REPLACE-ME…, as in deploy/k8s/base/secret.yaml \
             and the production overlay): set the real value"
        );
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            stderr_line!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Migrate => commands::migrate::run(&cli.database_url, database_url_given).await,
            Command::Seed(args) => commands::seed::run(&cli.database_url, args).await,
            Command::Worker => commands::worker::run(&cli.database_url).await,
            Command::Beat => commands::beat::run(&cli.database_url).await,
            Command::Api => commands::api::run(&cli.database_url).await,
            Command::Dev(args) => {
                let ignored = database_url_given.then_some(cli.database_url.as_str());
                commands::dev::run(args, ignored).await
            }
            Command::Enqueue(args) => commands::enqueue::run(&cli.database_url, args).await,
            Command::Check(args) => commands::check::run(&cli.database_url, args).await,
            Command::Verify => commands::verify::run(&cli.database_url).await,
            Command::Status => commands::status::run(&cli.database_url).await,
            Command::Outbox(args) => commands::outbox::run(&cli.database_url, args).await,
            Command::Jobs(args) => commands::jobs::run(&cli.database_url, args).await,
        }
    });
    // tasks left running (jobs abandoned past the grace period) are dropped, not waited for
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // the reader went away (`escalator status | head -1`): nothing more to say
        Err(e) if e.downcast_ref::<commands::StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            let code = if commands::unreachable(&e) {
                ExitCode::from(commands::EXIT_UNREACHABLE)
            } else {
                ExitCode::FAILURE
            };
            // each cause once: sqlx's errors print their source themselves, and `{e:#}` said
            // `database "x" does not exist at line 948` twice
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            stderr_line!("error: {}", escalator_runtime::error::with_causes(e));
            code
        }
    }
}
