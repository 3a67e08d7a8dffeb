//! The beat process: a fenced singleton. It holds the database lease, records one check run
//! per cron slot (coalescing slots missed while no beat ran), wakes up at the earliest
//! workflow deadline to enqueue a deadline check, and stays idle but ready while another beat
//! leads.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use escalator_jobs::{CheckWorkflows, DeliverNotifications, Queues, Scope, UNQUEUED, within};
use escalator_runtime::metrics as m;
use escalator_runtime::serve::Health;
use escalator_store::{Fenced, Lease, NewCheckRun, Store};

use crate::plan::plan_slots;
use crate::schedule::Schedule;

/// Beat settings.
#[derive(Debug, Clone)]
pub struct BeatConfig {
    /// The cron schedule.
    pub schedule: Schedule,
    /// Missed slots younger than this are run (coalesced) when a beat starts.
    pub catchup: Duration,
    /// Lease period: a standby takes over within it when the leader stops renewing.
    pub lease_ttl: Duration,
    /// The earliest deadline is re-read at least this often (new workflows, transitions).
    pub deadline_recheck: Duration,
    /// This process's identity in the lease.
    pub holder: String,
    /// Finished jobs older than this are pruned from the queues by the sweep
    /// ([`DONE_JOB_RETENTION`] in the services).
    pub done_retention: Duration,
    /// Delivered messages sent longer ago than this are deleted from the outbox by the sweep;
    /// None keeps them for ever (`ESCALATOR_OUTBOX_RETENTION`, [`OUTBOX_RETENTION`] by default).
    pub outbox_retention: Option<Duration>,
}

/// What can stop the beat.
#[derive(Debug, thiserror::Error)]
pub enum BeatError {
    /// The database failed.
    #[error("the database (DATABASE_URL) failed")]
    Store(#[from] escalator_store::StoreError),
    /// The queue failed.
    #[error("the queue (REDIS_URL or ESCALATOR_QUEUE_URL) failed")]
    Queue(#[from] escalator_jobs::QueueError),
}

/// The lease's name: one beat leads per database.
pub const LEASE: &str = "beat";

/// One beat.
#[derive(Debug)]
pub struct Beat {
    store: Store,
    queues: Queues,
    config: BeatConfig,
    health: Health,
    lease: Option<Lease>,
    renewed: std::time::Instant,
    /// The latest slot with a run, once leading.
    last_slot: Option<DateTime<Utc>>,
    /// The latest slot already counted missed ([`crate::plan::SlotPlan::counted`]).
    counted_slot: Option<DateTime<Utc>>,
    /// The deadline check in flight, so that one is not enqueued per wake-up.
    deadline_run: Option<InFlight>,
    /// After deadline checks that failed: no new one before this instant, and the pause the
    /// next failure doubles ([`DEADLINE_BACKOFF`]). Cleared by one that succeeds.
    deadline_backoff: Option<(DateTime<Utc>, chrono::TimeDelta)>,
    /// When the outbox was last swept for deliveries whose job was lost.
    swept: Option<std::time::Instant>,
    /// The last sweep failed (the database or Redis unreachable): the leader is not healthy
    /// until one succeeds, even while no slot or deadline needs either.
    sweep_failing: bool,
    /// This process has led for at least one step since taking the lease (its lateness is a
    /// running leader's, not a restart's).
    running: bool,
    /// A slot's or a deadline check's run whose job could not be pushed (Redis down): pushed
    /// again at the next steps, as that run, until it goes or (a slot) the catch-up window
    /// passes. Proposed again, the slot found its run and was counted a duplicate tick; it
    /// never ran. A deadline check was recorded anew at every step, a failed run a second.
    unpushed: Option<Unpushed>,
}

/// A check run recorded but not enqueued.
#[derive(Debug, Clone, Copy)]
struct Unpushed {
    id: i64,
    /// None for a deadline check.
    slot: Option<DateTime<Utc>>,
    as_of: DateTime<Utc>,
}

/// The pause after a failed deadline check before the next, doubled at each failure in a row up
/// to [`DEADLINE_BACKOFF_MAX`]: a planner failing at once (a bad deploy, a database refusing
/// it) was enqueued again at every step, several a second, each a failed run and a dead job.
pub const DEADLINE_BACKOFF: chrono::TimeDelta = chrono::TimeDelta::seconds(10);
/// The longest pause between failing deadline checks (the schedule's slots run regardless).
pub const DEADLINE_BACKOFF_MAX: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// How often the leader looks for due deliveries that no job is coming for.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How long a finished job is kept in its queue (for `escalator status`'s done counts and for
/// `escalator enqueue noop`, which counts completions) before the sweep forgets it.
pub const DONE_JOB_RETENTION: Duration = Duration::from_secs(3_600);
/// Finished jobs looked at per queue per sweep (every 10 s): up to 100 per second per queue.
const PRUNE_SAMPLE: usize = 1_000;
/// How long a delivered message stays in the outbox (for the console and `escalator outbox`)
/// before the sweep deletes it: 30 days.
pub const OUTBOX_RETENTION: Duration = Duration::from_secs(30 * 24 * 3_600);
/// Delivered messages deleted per sweep (every 10 s): up to 500 a second, several times what
/// the busiest deployment sends, in short transactions.
const PRUNE_SENT: u32 = 5_000;

/// A deadline check that has shown no progress (status, batches done) for this long, while
/// no check or batch job waits in the queues, is taken as lost (its job gone with a flushed
/// Redis, say) and no longer waited for: the next due deadline enqueues another. A second
/// check beside a slow one is harmless (I1, I2). With jobs waiting it is waited for again.
pub const DEADLINE_RUN_PATIENCE: chrono::TimeDelta = chrono::TimeDelta::minutes(2);

/// A check run queued or running this long without progress is marked failed by the sweep
/// (`Store::fail_stale_check_runs`): far beyond any job's attempts and backoff, and a run that
/// moves again afterwards (its jobs ran after all) is reopened or completed.
pub const STALE_RUN: chrono::TimeDelta = chrono::TimeDelta::hours(6);

/// A check run that has not moved for this long while no check or batch job waits in the
/// queues has lost its jobs, and is marked failed by the sweep sooner than [`STALE_RUN`]: its
/// held digest messages were otherwise kept an hour (`HOLD_LIMIT`), although losing Redis may
/// delay work by one sweep only (DESIGN §1). Longer than any attempt and its commit (twice the
/// 120 s job timeout by default); a run that moves again is reopened or completed.
pub const LOST_RUN: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// How long a check run that did nothing (no effect, no slot) is kept before the sweep deletes
/// it: a week of `escalator status` and console history. Runs with effects are kept for ever.
pub const EMPTY_RUN_RETENTION: chrono::TimeDelta = chrono::TimeDelta::days(7);
/// Empty check runs deleted per sweep (every 10 s): up to 100 a second, beyond the rate at
/// which deadline checks are made.
const PRUNE_RUNS: u32 = 1_000;

/// Logs what one of the sweep's prunings did; a failure only waits for the next sweep.
fn log_pruned<E: std::fmt::Display>(what: &'static str, pruned: Result<u64, E>) {
    match pruned {
        Ok(0) => {}
        Ok(pruned) => tracing::debug!(pruned, "{what}"),
        Err(e) => tracing::warn!(error = %e, "{what} failed; the next sweep tries again"),
    }
}

/// The deadline check in flight and when it last moved.
#[derive(Debug, Clone, PartialEq)]
struct InFlight {
    id: i64,
    progress: (String, i32),
    moved_at: DateTime<Utc>,
}

impl InFlight {
    /// Run `id`, just enqueued at `now`.
    fn queued(id: i64, now: DateTime<Utc>) -> Self {
        InFlight {
            id,
            progress: ("queued".into(), 0),
            moved_at: now,
        }
    }
}

impl Beat {
    /// A beat that is not leading yet.
    pub fn new(store: Store, queues: Queues, config: BeatConfig, health: Health) -> Self {
        Beat {
            store,
            queues,
            config,
            health,
            lease: None,
            renewed: std::time::Instant::now(),
            last_slot: None,
            counted_slot: None,
            deadline_run: None,
            deadline_backoff: None,
            swept: None,
            sweep_failing: false,
            running: false,
            unpushed: None,
        }
    }

    /// Runs until `shutdown` resolves, then releases the lease so that a standby takes over
    /// at once. Database and queue errors are logged and retried: the beat never dies of them.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), BeatError> {
        tokio::pin!(shutdown);
        tracing::info!(
            schedule = self.config.schedule.expr(),
            timezone = %self.config.schedule.timezone(),
            holder = %self.config.holder,
            "beat started"
        );
        loop {
            let pause = match self.step(Utc::now()).await {
                Ok(pause) => pause,
                Err(e) => {
                    let cause = match e {
                        BeatError::Store(_) => "database",
                        BeatError::Queue(_) => "queue",
                    };
                    metrics::counter!(m::BEAT_STEP_FAILURES, "cause" => cause).increment(1);
                    let error = escalator_runtime::error::with_causes(&e);
                    tracing::warn!(%error, "beat step failed; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if let Some(lease) = self.lease.take() {
            if let Err(e) = self.store.release_lease(&lease).await {
                tracing::warn!(error = %e, "could not release the lease; it expires by itself");
            }
            metrics::gauge!(m::BEAT_LEADER).set(0.0);
        }
        tracing::info!("beat stopped");
        Ok(())
    }

    /// One pass: hold the lease, enqueue what is due, and say how long to sleep.
    pub async fn step(&mut self, now: DateTime<Utc>) -> Result<Duration, BeatError> {
        let idle = self.config.lease_ttl / 3;
        if !self.lead().await? {
            self.health.touch();
            return Ok(idle);
        }
        // scheduled slots
        // a slot a running leader reaches late by no more than its lease (a slow step, a
        // loaded machine) is run, whatever the catch-up window: with ESCALATOR_CATCHUP below
        // that lateness (it takes fractions of a second), slots were counted missed instead
        let window = if self.running {
            self.config.catchup.max(self.config.lease_ttl)
        } else {
            self.config.catchup
        };
        self.running = true;
        // a slot later than now (past a lease's worth of clock difference) was recorded by a
        // beat whose clock ran ahead, or by hand: scheduling after it scheduled nothing at
        // all, on every beat, until that time came, and said nothing
        let skew = chrono::Duration::from_std(self.config.lease_ttl).unwrap_or_default();
        if let Some(last) = self.last_slot.filter(|last| *last > now + skew) {
            tracing::warn!(
                slot = %last,
                "a check run is recorded for a slot in the future by this beat's clock (a beat \
                 whose clock runs ahead?): scheduling from now; keep the beats' clocks in sync"
            );
            self.last_slot = None;
            // nor is such a slot's unpushed run pushed: its check would be as of that time
            if self
                .unpushed
                .is_some_and(|u| u.slot.is_some_and(|s| s > now + skew))
            {
                self.unpushed = None;
            }
        }
        if let Some(u) = self.unpushed {
            self.push_again(u, window, now).await?;
        }
        let plan = plan_slots(
            &self.config.schedule,
            self.last_slot,
            self.counted_slot,
            now,
            chrono::Duration::from_std(window).unwrap_or(chrono::Duration::hours(1)),
        );
        if plan.missed > 0 {
            metrics::counter!(m::MISSED_TICKS).increment(plan.missed);
            tracing::warn!(
                missed = plan.missed,
                "scheduled slots missed (coalesced or older than the catch-up window)"
            );
        }
        self.counted_slot = plan.counted;
        match plan.run {
            Some((slot, coalesced)) => {
                let run = self.enqueue(Some(slot), "beat", coalesced, now).await?;
                self.last_slot = Some(slot);
                // the slot's check covers every due deadline too: a deadline check beside it
                // doubled the planning and claiming at the busiest moments
                if let Some(id) = run
                    && self.deadline_run.is_none()
                {
                    self.deadline_run = Some(InFlight::queued(id, now));
                }
            }
            // all older than the window: none will run, and they are counted
            None => self.last_slot = plan.newest.max(self.last_slot),
        }
        // deadlines
        if let Some(mut flight) = self.deadline_run.take() {
            let run = self.store.get_check_run(flight.id).await?;
            let progress = (run.status.clone(), run.batches_done);
            if progress != flight.progress {
                flight.progress = progress;
                flight.moved_at = now;
            }
            let finished = matches!(run.status.as_str(), "succeeded" | "failed");
            let stuck = !finished && now - flight.moved_at > DEADLINE_RUN_PATIENCE;
            // jobs still waiting in the queues are not lost: no worker has taken them yet
            // (none runs, or all are busy). Another check beside them only queued up too: with
            // no worker, one every two minutes, each to be planned once workers came back.
            let waiting = if stuck {
                let looked =
                    within(self.patience(), self.queues.checks_and_batches_waiting()).await;
                match looked {
                    Ok(waiting) => waiting,
                    // the queue cannot say: kept, and asked again at the next step (dropped, it
                    // was enqueued again beside itself, the duplicate this look is to avoid)
                    Err(e) => {
                        self.deadline_run = Some(flight);
                        return Err(e.into());
                    }
                }
            } else {
                0
            };
            if finished {
                // done: the next due deadline gets a new check, after a pause if this one
                // failed (doubling while they keep failing)
                self.deadline_backoff = if run.status == "failed" {
                    let pause = self
                        .deadline_backoff
                        .map_or(DEADLINE_BACKOFF, |(_, p)| (p * 2).min(DEADLINE_BACKOFF_MAX));
                    tracing::warn!(
                        check_run_id = flight.id,
                        error = run.error.as_deref().unwrap_or(""),
                        pause_seconds = pause.num_seconds(),
                        "the deadline check failed; the next one waits"
                    );
                    Some((now + pause, pause))
                } else {
                    None
                };
            } else if stuck && waiting > 0 {
                tracing::warn!(
                    check_run_id = flight.id,
                    status = %run.status,
                    waiting,
                    "the deadline check has not moved for {} s, but check and batch jobs wait \
                     for a worker: waiting on (are workers running?)",
                    DEADLINE_RUN_PATIENCE.num_seconds()
                );
                flight.moved_at = now;
                self.deadline_run = Some(flight);
            } else if stuck {
                tracing::warn!(
                    check_run_id = flight.id,
                    status = %run.status,
                    batches_done = run.batches_done,
                    "the deadline check has not moved for {} s; enqueueing deadline checks again",
                    DEADLINE_RUN_PATIENCE.num_seconds()
                );
            } else {
                self.deadline_run = Some(flight);
            }
        }
        let earliest = self.store.earliest_next_check().await?;
        let paused_until = self
            .deadline_backoff
            .map(|(until, _)| until)
            .filter(|until| *until > now);
        if self.deadline_run.is_none()
            && self.unpushed.is_none()
            && paused_until.is_none()
            && earliest.is_some_and(|t| t <= now)
        {
            self.deadline_run = self
                .enqueue(None, "deadline", 1, now)
                .await?
                .map(|id| InFlight::queued(id, now));
        }
        if self.swept.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
            // the pushes above may have taken their patience: renewed (if due) before the
            // sweep's own calls, so that a slow step never outlasts the lease
            if !self.lead().await? {
                return Ok(idle);
            }
            self.swept = Some(std::time::Instant::now());
            self.fail_stale_runs(now).await;
            let swept = self.sweep_outbox(now).await;
            self.sweep_failing = swept.is_err();
            swept?;
            if tokio::time::timeout(self.patience(), self.prune_done_jobs())
                .await
                .is_err()
            {
                tracing::warn!("pruning finished jobs timed out; the next sweep tries again");
            }
            self.prune_sent_deliveries(now).await;
            let pruned = self
                .store
                .prune_empty_check_runs(now - EMPTY_RUN_RETENTION, PRUNE_RUNS)
                .await;
            log_pruned("deleting check runs that did nothing, a week old", pruned);
        }
        // sleep until the next slot, the next deadline or the next re-read, whichever first
        let mut wake =
            now + chrono::Duration::from_std(self.config.deadline_recheck).unwrap_or_default();
        if let Some(next) = self
            .config
            .schedule
            .next_after(self.last_slot.unwrap_or(now).max(now))
        {
            wake = wake.min(next);
        }
        if self.deadline_run.is_some() {
            wake = wake.min(now + chrono::Duration::milliseconds(100));
        } else if let Some(t) = earliest.filter(|t| *t > now) {
            wake = wake.min(t);
        } else if let (Some(_), Some(until)) = (earliest, paused_until) {
            // due, and waiting out the pause after a failed deadline check
            wake = wake.min(until);
        }
        let until_wake = (wake - now).to_std().unwrap_or_default();
        // a leader's step that completes is progress, whether or not a slot was due: touched
        // only when it enqueued, a schedule with uneven gaps (`0 */15 8-18 * * Mon-Fri`)
        // left a working leader unhealthy all night, and its liveness probe restarted it. A
        // failing sweep (every 10 s, it needs the database and Redis) keeps it unhealthy.
        if !self.sweep_failing {
            self.health.touch();
        }
        Ok(until_wake.min(idle).max(Duration::from_millis(10)))
    }

    /// Enqueues a delivery job when deliveries are due and none is queued: a lost delivery job
    /// (or a retry whose time has come, or a held digest whose run failed) only waits for the
    /// next sweep.
    async fn sweep_outbox(&mut self, now: DateTime<Utc>) -> Result<(), BeatError> {
        // held digests left behind (the worker that finished their run crashed before
        // deciding them, the run failed, or it is stuck past the hold limit) become
        // deliveries here too, so they do not wait for unrelated traffic
        let released = self
            .store
            .release_stale_held(now, escalator_store::HOLD_LIMIT)
            .await?;
        if released > 0 {
            tracing::info!(released, "released held deliveries of unfinished runs");
        }
        let backlog = self.store.outbox_backlog(now).await?;
        metrics::gauge!(m::OUTBOX_PENDING).set(backlog.waiting as f64);
        metrics::gauge!(m::OUTBOX_OVERDUE).set(backlog.overdue_seconds(now));
        let due = backlog.due;
        if due == 0 {
            return Ok(());
        }
        // the queue's calls bounded, as a push of a check is (the database's are by its pool)
        within(self.patience(), async {
            if self.queues.deliveries_waiting().await? == 0 {
                self.queues
                    .push_delivery(&DeliverNotifications::default())
                    .await?;
                tracing::debug!(due, "outbox sweep enqueued a delivery job");
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Marks failed the runs that stopped moving six hours ago ([`STALE_RUN`]), or ten minutes
    /// ago when no check or batch job waits in the queues ([`LOST_RUN`]), so that they stop
    /// reading `running` (and waiters, dashboards and the run's held digests stop waiting for
    /// them). Their digests are released by the outbox sweep right after.
    async fn fail_stale_runs(&self, now: DateTime<Utc>) {
        // nothing waiting for a worker: a run that has not moved for ten minutes has lost its
        // jobs (and the six-hour runs are among those); else only the six-hour ones. A queue
        // that cannot say is taken as one with jobs waiting.
        let waiting = within(self.patience(), self.queues.checks_and_batches_waiting()).await;
        if let Err(e) = &waiting {
            tracing::warn!(error = %e, "cannot look at the queues for lost check runs");
        }
        let (failed, patience) = if matches!(waiting, Ok(0)) {
            (
                self.store.fail_lost_check_runs(now, LOST_RUN).await,
                LOST_RUN,
            )
        } else {
            (
                self.store.fail_stale_check_runs(now, STALE_RUN).await,
                STALE_RUN,
            )
        };
        match failed {
            Ok(ids) if ids.is_empty() => {}
            Ok(ids) => tracing::warn!(
                runs = ?ids,
                minutes = patience.num_minutes(),
                "check runs without progress marked failed: their jobs were lost or died \
                 unrecorded; their held messages are released, their workflows stay due for \
                 the next check"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot look for stale check runs"),
        }
    }

    /// Forgets jobs that finished over `done_retention` ago, a bounded number per sweep,
    /// so that Redis does not grow with every job run.
    async fn prune_done_jobs(&self) {
        let pruned = self
            .queues
            .prune_done(self.config.done_retention, PRUNE_SAMPLE)
            .await;
        log_pruned("pruning finished jobs from the queues", pruned);
    }

    /// Deletes delivered messages older than `outbox_retention`, a bounded number per sweep.
    async fn prune_sent_deliveries(&self, now: DateTime<Utc>) {
        let before = self
            .config
            .outbox_retention
            .and_then(|keep| chrono::Duration::from_std(keep).ok())
            .and_then(|keep| now.checked_sub_signed(keep));
        if let Some(before) = before {
            let pruned = self.store.prune_sent_deliveries(before, PRUNE_SENT).await;
            log_pruned("deleting delivered messages past their retention", pruned);
        }
    }

    /// Acquires or renews the lease; false while another beat leads.
    async fn lead(&mut self) -> Result<bool, BeatError> {
        let ttl = self.config.lease_ttl;
        if let Some(lease) = &self.lease {
            if self.renewed.elapsed() < ttl / 3 {
                return Ok(true);
            }
            match self.store.renew_lease(lease, ttl).await {
                Ok(true) => {
                    self.renewed = std::time::Instant::now();
                    return Ok(true);
                }
                Ok(false) => {
                    tracing::warn!(epoch = lease.epoch, "lease lost: another beat leads now");
                    self.stand_down();
                }
                Err(e) => {
                    // the lease has run out in the database by now: this beat schedules
                    // nothing, and must not go on reporting itself the leader (NoBeatLeader
                    // stayed silent for as long as a lone beat could not reach the database)
                    if self.renewed.elapsed() >= ttl {
                        tracing::warn!(
                            epoch = lease.epoch,
                            "lease not renewed within its time to live: no longer leading"
                        );
                        self.stand_down();
                    }
                    return Err(e.into());
                }
            }
        }
        match self
            .store
            .acquire_lease(LEASE, &self.config.holder, ttl)
            .await?
        {
            Some(lease) => {
                tracing::info!(
                    epoch = lease.epoch,
                    "leading: this beat enqueues the checks"
                );
                self.renewed = std::time::Instant::now();
                self.lease = Some(lease);
                self.last_slot = self.store.last_scheduled_slot().await?;
                self.counted_slot = None;
                self.deadline_run = None;
                self.running = false;
                self.unpushed = self.unpushed_slot_run().await?;
                metrics::gauge!(m::BEAT_LEADER).set(1.0);
                self.health.touch();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Records a check run under the lease and enqueues it. Returns the run id, if recorded.
    async fn enqueue(
        &mut self,
        slot: Option<DateTime<Utc>>,
        requested_by: &'static str,
        coalesced: i32,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, BeatError> {
        let Some(lease) = &self.lease else {
            return Ok(None);
        };
        let new = NewCheckRun {
            slot,
            requested_by,
            scope: Scope::All.to_string(),
            as_of: now,
            dry_run: false,
            coalesced,
            now,
        };
        match self.store.create_check_run_fenced(&new, lease).await? {
            Fenced::Created(run) => {
                let job = CheckWorkflows {
                    check_run_id: run.id,
                    as_of: now,
                    scope: Scope::All,
                };
                // a failed push marks the run failed; its slot is taken (proposed again it would
                // be a duplicate), so the next steps push that run again
                // A deadline check's run is pushed again too: recorded anew at each step, a Redis
                // that refused pushes for an hour left a failed run per second
                if let Err(e) = self
                    .queues
                    .push_check_or_fail_run_within(&self.store, &job, self.patience())
                    .await
                {
                    if slot.is_some() {
                        self.last_slot = slot;
                    }
                    if slot.is_some() || self.unpushed.is_none() {
                        self.unpushed = Some(Unpushed {
                            id: run.id,
                            slot,
                            as_of: now,
                        });
                    }
                    return Err(e.into());
                }
                metrics::gauge!(m::BEAT_LAST_ENQUEUE).set(now.timestamp() as f64);
                self.health.touch();
                tracing::info!(
                    check_run_id = run.id,
                    ?slot,
                    requested_by,
                    coalesced,
                    "check enqueued"
                );
                Ok(Some(run.id))
            }
            Fenced::DuplicateSlot => {
                metrics::counter!(m::DUPLICATE_TICKS).increment(1);
                tracing::info!(?slot, "slot already has a run; not enqueued again");
                // this beat's own insert, committed but its answer lost, is such a run: it is
                // pushed at the next step if it waits for a push
                if let Some(slot) = slot
                    && self.unpushed.is_none()
                {
                    self.unpushed = self.unpushed_run_of(slot).await?;
                }
                Ok(None)
            }
            Fenced::NotLeader => {
                tracing::warn!("lease lost before enqueueing; standing down");
                self.stand_down();
                Ok(None)
            }
        }
    }

    /// The latest slot's run, if its job may never have been pushed ([`Beat::unpushed_run_of`]).
    async fn unpushed_slot_run(&self) -> Result<Option<Unpushed>, BeatError> {
        match self.last_slot {
            Some(slot) => self.unpushed_run_of(slot).await,
            None => Ok(None),
        }
    }

    /// Slot `slot`'s run, if its job may never have been pushed: it never started, and it is
    /// failed for want of a push (a beat whose push failed lost the lease, or was restarted,
    /// before it could push it again), or still queued (a beat killed between recording the run
    /// and pushing it, or whose insert committed but whose answer was lost). Such a run was
    /// taken for done, and its slot never checked. Pushing a run that was pushed after all
    /// changes nothing: its job's key (`check:{id}:{as_of}`) makes the second push a duplicate.
    async fn unpushed_run_of(&self, slot: DateTime<Utc>) -> Result<Option<Unpushed>, BeatError> {
        let Some(r) = self.store.slot_check_run(slot).await? else {
            return Ok(None);
        };
        let unqueued =
            r.status == "failed" && r.error.as_deref().is_some_and(|e| e.starts_with(UNQUEUED));
        Ok(
            (r.started_at.is_none() && (r.status == "queued" || unqueued)).then_some(Unpushed {
                id: r.id,
                slot: Some(slot),
                as_of: r.as_of,
            }),
        )
    }

    /// Pushes again the job of a slot's run whose push failed, the run back to `queued`; still
    /// failing, it is kept for the next step. Past the catch-up `window` the slot is given up
    /// and counted missed (its run stays failed, naming why; the due workflows are checked by
    /// the next slot or deadline check).
    async fn push_again(
        &mut self,
        u: Unpushed,
        window: Duration,
        now: DateTime<Utc>,
    ) -> Result<(), BeatError> {
        // kept until it is pushed or given up: a database that fails here is tried again
        let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::hours(1));
        // pushed only while it waits for a start: one started meanwhile (pushed by another
        // leader, retried by hand) is left alone
        let run = self.store.get_check_run(u.id).await?;
        let failed = run.status == "failed";
        if run.started_at.is_some() || !(failed || run.status == "queued") {
            self.unpushed = None;
            return Ok(());
        }
        if let Some(slot) = u.slot
            && now - slot > window
        {
            self.unpushed = None;
            if failed {
                metrics::counter!(m::MISSED_TICKS).increment(1);
                tracing::warn!(check_run_id = u.id, %slot, "a slot whose check could not be enqueued is past the catch-up window: missed");
            } else {
                // queued: its job may be waiting in a backlog, and runs when a worker takes it
                tracing::info!(check_run_id = u.id, %slot, "a slot's queued run is past the catch-up window: not pushed again");
            }
            return Ok(());
        }
        let job = CheckWorkflows {
            check_run_id: u.id,
            as_of: u.as_of,
            scope: Scope::All,
        };
        if failed {
            // back to queued, then pushed; a push that fails marks it failed again
            self.store.reopen_check_run(u.id, now).await?;
            self.queues
                .push_check_or_fail_run_within(&self.store, &job, self.patience())
                .await?;
        } else {
            // queued, perhaps pushed before and waiting in a backlog: a push that fails leaves
            // it queued (marked failed, it read as failed while its job waited to run)
            let bound = self.patience().saturating_add(Duration::from_secs(1));
            within(bound, self.queues.push_check_within(&job, self.patience())).await?;
        }
        self.unpushed = None;
        metrics::gauge!(m::BEAT_LAST_ENQUEUE).set(now.timestamp() as f64);
        self.health.touch();
        tracing::info!(check_run_id = u.id, slot = ?u.slot, "check enqueued after its push had failed");
        if self.deadline_run.is_none() {
            self.deadline_run = Some(InFlight::queued(u.id, now));
        }
        Ok(())
    }

    /// How long one push (or the outbox sweep's queue calls) may take: a third of the lease,
    /// so that a step whose queue hangs still renews its lease in time (a Redis that accepted
    /// and never answered held a step for about 30 s against a 15 s lease: two beats took
    /// turns leading, and a slot's run was left failed and never pushed again).
    fn patience(&self) -> Duration {
        self.config.lease_ttl / 3
    }

    /// Stops leading: no lease, and the gauges only a leader keeps up to date are cleared (a
    /// standby's last outbox count, frozen, won the fleet's `max()` and kept OutboxBacklog
    /// firing while the real backlog drained).
    fn stand_down(&mut self) {
        self.lease = None;
        metrics::gauge!(m::BEAT_LEADER).set(0.0);
        metrics::gauge!(m::OUTBOX_PENDING).set(0.0);
        metrics::gauge!(m::OUTBOX_OVERDUE).set(0.0);
    }
}
