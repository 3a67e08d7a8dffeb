//! The two handlers of a check, as plain async functions over the store: the planner that fans
//! a check out into batches, and the batch that claims, decides and applies. The apalis glue
//! (attempts, dead-lettering) lives in `jobs.rs`; everything here is safe to run twice.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use escalator_jobs::payload::MAX_FANOUT;
use escalator_jobs::{CheckWorkflows, DeliverNotifications, EscalateBatch, Queues, Scope};
use escalator_policy::{Calendar, Decision, Policy};
use escalator_runtime::metrics as m;
use escalator_store::{
    Applied, BatchTx, DueRange, DueWorkflow, EffectInserts, Store, StoreError, User,
};

use crate::plan::{self, BatchRef, Rules};

/// What can go wrong in a handler.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The database failed (retry if transient).
    #[error("the database")]
    Store(#[from] StoreError),
    /// The queue refused a push.
    #[error("the queue")]
    Queue(#[from] escalator_jobs::QueueError),
}

impl EngineError {
    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Store(e) => e.is_transient(),
            EngineError::Queue(_) => true,
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Workflows per batch (and per transaction).
    pub batch_size: u32,
    /// How long a planner waits for room in a backlogged batches queue before its attempt
    /// fails naming the backlog: less than the attempt's deadline, which otherwise cut it off
    /// first with "attempt timed out".
    pub push_patience: std::time::Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            batch_size: 500,
            push_patience: std::time::Duration::from_secs(60),
        }
    }
}

/// Policy versions are immutable, so a process caches them for its lifetime. Calendars can be
/// edited and are read per batch (only those in use, usually none).
#[derive(Debug, Clone, Default)]
pub struct PolicyCache {
    policies: Arc<Mutex<HashMap<PolicyKey, Arc<Policy>>>>,
}

/// (policy id, version).
type PolicyKey = (String, i32);

impl PolicyCache {
    /// Version `key` of a policy, read through `from` the first time.
    async fn get(&self, from: &mut People<'_>, key: &PolicyKey) -> Result<Arc<Policy>, StoreError> {
        if let Some(p) = self.policies.lock().ok().and_then(|m| m.get(key).cloned()) {
            return Ok(p);
        }
        let p = Arc::new(from.policy(&key.0, key.1).await?);
        if let Ok(mut map) = self.policies.lock() {
            map.insert(key.clone(), p.clone());
        }
        Ok(p)
    }
}

/// Everything the handlers need.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The source of truth.
    pub store: Store,
    /// Where batches are pushed.
    pub queues: Queues,
    /// Settings.
    pub config: EngineConfig,
    /// Policy versions seen so far.
    pub policies: PolicyCache,
}

/// What the planner did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// `batches` batch jobs were pushed for `due` workflows.
    FannedOut {
        /// Due workflows counted.
        due: i64,
        /// Batch jobs pushed.
        batches: i32,
    },
    /// A single-workflow check ran inline.
    Inline(Box<BatchOutcome>),
    /// The run was finished or failed already (a duplicate planner job).
    AlreadyDone,
}

/// What one batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Rows the store wrote.
    pub applied: Applied,
    /// Workflows that could not be evaluated.
    pub failures: usize,
}

impl BatchOutcome {
    fn absorb(&mut self, other: BatchOutcome) {
        self.failures += other.failures;
        let (a, b) = (&mut self.applied, other.applied);
        a.changed.extend(b.changed);
        a.audits += b.audits;
        a.notifications += b.notifications;
        a.outbox += b.outbox;
        a.run_completed |= b.run_completed;
        a.counts.checked += b.counts.checked;
        a.counts.reminded += b.counts.reminded;
        a.counts.escalated += b.counts.escalated;
        a.counts.exhausted += b.counts.exhausted;
        a.counts.renotified += b.counts.renotified;
        a.counts.failed += b.counts.failed;
    }
}

/// A slice is drained in at most this many transactions (a guard: a slice holds about one
/// batch, so it takes one).
const MAX_ROUNDS: usize = 10_000;

/// How long a batch waits for workflows of its slice that another transaction holds before
/// leaving them to the next check: enough for another copy of the same job to commit its
/// round, not for a transaction left open (an idle session, a cut-off worker) to hold every
/// later check over the slice until its attempts run out.
pub const HELD_ROW_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a transaction of a batch also marks the batch done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// It does: the transaction that only records completion, or a single-workflow check.
    Always(i32),
    /// It does if its claim drained the slice (came back short of the claim limit): the
    /// slice's last effects and its completion then commit together.
    IfDrained(i32),
    /// It does not: one workflow of a slice redone on its own ([`Engine::isolate`]).
    Never,
}

impl Finish {
    /// The batch a transaction marks done, given whether its claim drained the slice.
    fn index(self, drained: bool) -> Option<i32> {
        match self {
            Finish::Always(index) => Some(index),
            Finish::IfDrained(index) => drained.then_some(index),
            Finish::Never => None,
        }
    }
}

impl Engine {
    /// Plans check run `job.check_run_id`: counts the due workflows, cuts them into disjoint
    /// slices of about `batch_size` (at most [`MAX_FANOUT`] slices) and pushes one batch job
    /// per slice. Batches are pushed, keyed by (run, index), before the run is marked
    /// running: a planner that runs twice pushes nothing twice, and one that crashes half-way
    /// is simply run again.
    pub async fn check_workflows(&self, job: &CheckWorkflows) -> Result<Planned, EngineError> {
        let mut run = self.store.get_check_run(job.check_run_id).await?;
        // A planner that died marked its run failed on its last attempt; its job retried
        // (`escalator jobs retry`, the console) found the run failed and did nothing, reported
        // done. It runs the check now: a run that never started is planned again (with the
        // plan it saved, if any), a single-workflow one runs its round again.
        if run.status == "failed"
            && (run.started_at.is_none() || matches!(job.scope, Scope::Workflow(_)))
            && self.store.reopen_check_run(run.id, Utc::now()).await?
        {
            tracing::info!(
                check_run_id = run.id,
                "a failed check run's planner runs again"
            );
            run = self.store.get_check_run(run.id).await?;
        }
        // A single-workflow check marks its run running, then runs its one round: a retry of an
        // attempt that failed in that round finds it running and must run the round again (the
        // round is idempotent, and counts its batch once), or the run would stay running for
        // ever. A fanned-out run that is running has had all its batches pushed.
        let resumed = run.status == "running" && matches!(job.scope, Scope::Workflow(_));
        if run.status != "queued" && !resumed {
            // Finished, failed, or planned by an earlier delivery of this job.
            return Ok(Planned::AlreadyDone);
        }
        if let Scope::Workflow(id) = job.scope {
            self.store.start_check_run(run.id, 1, Utc::now()).await?;
            let batch = EscalateBatch {
                check_run_id: run.id,
                as_of: job.as_of,
                batch_index: 0,
                slice: DueRange::default(),
            };
            // batch_round records the finished run (metrics) itself
            let (outcome, _) = self
                .batch_round(Some(id), &batch, Finish::Always(0))
                .await?;
            if outcome.applied.outbox > 0 {
                self.request_delivery(run.id).await;
            }
            return Ok(Planned::Inline(Box::new(outcome)));
        }
        let due = self.store.count_due(job.as_of).await?;
        let size = i64::from(self.config.batch_size.max(1));
        let fanout = i64::from(MAX_FANOUT);
        let per_slice = size.max((due + fanout - 1) / fanout);
        let cut = self
            .store
            .due_ranges(job.as_of, u32::try_from(per_slice).unwrap_or(u32::MAX))
            .await?;
        // Saved before anything is pushed, and reused by a retry: an attempt that pushed its
        // batches and then failed before recording their number must not be followed by one
        // that re-cuts what is left (fewer slices, once some batches have committed) and so
        // counts fewer batches than are running, reporting the run finished early.
        let slices = self.store.save_check_run_plan(run.id, &cut).await?;
        let jobs: Vec<EscalateBatch> = slices
            .iter()
            .enumerate()
            .map(|(i, r)| EscalateBatch {
                check_run_id: run.id,
                as_of: job.as_of,
                batch_index: i32::try_from(i).unwrap_or(i32::MAX),
                slice: *r,
            })
            .collect();
        let batches = i32::try_from(jobs.len()).unwrap_or(i32::MAX);
        self.queues
            .push_batches_within(&jobs, self.config.push_patience)
            .await?;
        let run = self
            .store
            .start_check_run(run.id, batches, Utc::now())
            .await?;
        tracing::info!(check_run_id = run.id, due, batches, as_of = %job.as_of, "check planned");
        // every batch committed before this start (a planner retried after its push): the run
        // finishes here, and its digests are decided here, as a last batch would
        if run.status == "succeeded" {
            record_run_finished(&self.store, run.id).await;
            self.release_digests(run.id).await;
        }
        Ok(Planned::FannedOut { due, batches })
    }

    /// Runs one batch job: transactions of up to `batch_size` + 1 due workflows of its slice —
    /// claim (SKIP LOCKED), decide with the SLA clock, apply every effect set-wise — until the
    /// slice is drained. A duplicate job finds its slice empty.
    pub async fn escalate_batch(&self, job: &EscalateBatch) -> Result<BatchOutcome, EngineError> {
        let mut total = BatchOutcome {
            applied: Applied::default(),
            failures: 0,
        };
        // The transaction that drains the slice also marks the batch done, so a run is never
        // reported finished while one of its batches is still writing. A slice holds about
        // `batch_size` workflows and a claim takes up to one more, so a slice is normally
        // drained, and its batch done, in one transaction.
        let mut done = false;
        for _ in 0..MAX_ROUNDS {
            let (outcome, drained) = self
                .batch_round(None, job, Finish::IfDrained(job.batch_index))
                .await?;
            total.absorb(outcome);
            if drained {
                done = true;
                break;
            }
        }
        if !done {
            // the guard ran out: a transaction of its own marks the batch done
            let (outcome, _) = self
                .batch_round(
                    Some(uuid::Uuid::nil()),
                    job,
                    Finish::Always(job.batch_index),
                )
                .await?;
            total.absorb(outcome);
        }
        if total.applied.outbox > 0 {
            self.request_delivery(job.check_run_id).await;
        }
        Ok(total)
    }

    /// One transaction of a batch, written with plain inserts ([`EffectInserts::Fresh`]). If a
    /// notification or outbox key exists already, which the conditional UPDATE rules out unless
    /// rows were written by hand, the transaction is rolled back and the round is redone with
    /// idempotent inserts, which skip such rows.
    /// Returns whether the claim drained the slice.
    async fn batch_round(
        &self,
        only: Option<uuid::Uuid>,
        job: &EscalateBatch,
        finish: Finish,
    ) -> Result<(BatchOutcome, bool), EngineError> {
        let result = match self
            .round_with(only, job, finish, EffectInserts::Fresh)
            .await
        {
            Err(EngineError::Store(e)) if e.is_duplicate_key() => {
                tracing::warn!(
                    check_run_id = job.check_run_id,
                    batch = job.batch_index,
                    error = ?e,
                    "an effect of this batch exists already; redoing it with idempotent inserts"
                );
                self.round_with(only, job, finish, EffectInserts::Idempotent)
                    .await
            }
            other => other,
        };
        match result {
            Err(EngineError::Store(e)) if only.is_none() && !e.is_transient() => {
                tracing::warn!(
                    check_run_id = job.check_run_id,
                    batch = job.batch_index,
                    error = ?e,
                    "the database refused this batch for good; redoing it one workflow at a time"
                );
                self.isolate(job, finish).await
            }
            other => other,
        }
    }

    /// Redoes a round that the database refused for good (not a lost connection, not an
    /// existing key) one workflow per transaction. One workflow whose effects cannot be
    /// written, say an id too long for an index, would otherwise fail its whole slice on every
    /// attempt and every check, and the others would never be reminded or escalated (I1). A
    /// workflow refused on its own is set aside for [`plan::SET_ASIDE`] and counted as a
    /// failure, with the database's reason in the log; the batch then finishes as usual.
    async fn isolate(
        &self,
        job: &EscalateBatch,
        finish: Finish,
    ) -> Result<(BatchOutcome, bool), EngineError> {
        let limit = self.config.batch_size.saturating_add(1);
        let ids: Vec<uuid::Uuid> = {
            let mut tx = self.store.begin_batch().await?;
            let due = tx.claim_due_in(job.as_of, &job.slice, limit).await?;
            if let Err(e) = tx.rollback().await {
                tracing::warn!(error = ?e, "rollback of a read-only claim failed");
            }
            due.iter().map(|d| d.workflow.id).collect()
        };
        let drained = ids.len() < limit as usize;
        let mut total = BatchOutcome {
            applied: Applied::default(),
            failures: 0,
        };
        for id in ids {
            match self
                .round_with(Some(id), job, Finish::Never, EffectInserts::Idempotent)
                .await
            {
                Ok((outcome, _)) => total.absorb(outcome),
                Err(EngineError::Store(e)) if !e.is_transient() => {
                    total.absorb(self.set_aside(job, id, &e).await?);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(index) = finish.index(drained) {
            let (outcome, _) = self
                .round_with(
                    Some(uuid::Uuid::nil()),
                    job,
                    Finish::Always(index),
                    EffectInserts::Fresh,
                )
                .await?;
            total.absorb(outcome);
        }
        Ok((total, drained))
    }

    /// Moves workflow `id`'s next check [`plan::SET_ASIDE`] ahead without any other effect,
    /// counting it as a failure of the run: its own effects were refused with `cause`.
    async fn set_aside(
        &self,
        job: &EscalateBatch,
        id: uuid::Uuid,
        cause: &StoreError,
    ) -> Result<BatchOutcome, EngineError> {
        let mut tx = self.store.begin_batch().await?;
        let Some(due) = tx.claim_one(id, job.as_of).await? else {
            // no longer due (changed meanwhile): nothing to set aside
            return Ok(BatchOutcome {
                applied: Applied::default(),
                failures: 0,
            });
        };
        let why = format!("the database refused its effects: {cause}");
        let planned = plan::set_aside(
            &due.workflow,
            BatchRef {
                check_run_id: Some(job.check_run_id),
                batch_index: None,
            },
            plan::applied_at(job.as_of, Utc::now()),
            why.clone(),
        );
        let applied = tx
            .apply_with(&planned.effects, Utc::now(), EffectInserts::Idempotent)
            .await?;
        escalator_jobs::attempt::committing(tx.commit()).await?;
        metrics::counter!(m::FAILURES).increment(1);
        tracing::error!(
            workflow_id = %id,
            check_run_id = job.check_run_id,
            error = ?cause,
            "workflow set aside: the database refuses its effects"
        );
        Ok(BatchOutcome {
            applied,
            failures: 1,
        })
    }

    async fn round_with(
        &self,
        only: Option<uuid::Uuid>,
        job: &EscalateBatch,
        finish: Finish,
        inserts: EffectInserts,
    ) -> Result<(BatchOutcome, bool), EngineError> {
        let started = Instant::now();
        let mut tx = self.store.begin_batch().await?;
        let limit = self.config.batch_size.saturating_add(1);
        let mut held_elsewhere = false;
        let due: Vec<DueWorkflow> = match only {
            // the nil id claims nothing: a transaction that only records completion
            Some(id) if id.is_nil() => Vec::new(),
            Some(id) => tx.claim_one(id, job.as_of).await?.into_iter().collect(),
            None => {
                let mut due = tx.claim_due_in(job.as_of, &job.slice, limit).await?;
                // A short claim drains the slice unless another transaction holds some of its
                // rows (SKIP LOCKED passed them over): another copy of this job, run twice, or
                // a transition. Marking the batch done then reported the run finished while
                // that copy was still writing. Holding nothing, this round waits for them (a
                // copy's round commits within a second or so); holding rows, it commits its
                // own and the next round waits. Rows held past HELD_ROW_PATIENCE (a
                // transaction left open) are left for the next check, as before.
                if due.len() < limit as usize
                    && tx.others_due_in(job.as_of, &job.slice, due.len()).await?
                {
                    if due.is_empty() {
                        match tx
                            .claim_due_waiting_in(job.as_of, &job.slice, limit, HELD_ROW_PATIENCE)
                            .await?
                        {
                            Some(taken) => due = taken,
                            None => tracing::warn!(
                                check_run_id = job.check_run_id,
                                batch = job.batch_index,
                                "workflows of this batch are held by a transaction open for over \
                                 {HELD_ROW_PATIENCE:?}: they stay due for the next check"
                            ),
                        }
                    } else {
                        held_elsewhere = true;
                    }
                }
                due
            }
        };
        let drained = due.len() < limit as usize && !held_elsewhere;
        let finishes = finish.index(drained);
        let (policies, calendars) = self.rules_for(&due, &mut People::Batch(&mut tx)).await;
        // a late check (a backlog, an outage) escalates what was due at its as_of, and starts
        // the new levels' clocks now
        let when = plan::Dated::new(job.as_of, Utc::now());
        let rules = RulesFound {
            policies: &policies,
            calendars: &calendars,
        };
        let (decisions, users) = rules.decide(&due, when, People::Batch(&mut tx)).await?;
        let channels: plan::PolicyChannels = policies
            .iter()
            .filter_map(|(k, p)| p.spec().channels.clone().map(|c| (k.clone(), c)))
            .collect();
        let planned = plan::build(
            &due,
            &decisions,
            &users,
            BatchRef {
                check_run_id: Some(job.check_run_id),
                batch_index: finishes,
            },
            when,
            &crate::message::settings(),
            &channels,
        );
        let claimed_at = started.elapsed();
        let applied = match tx.apply_with(&planned.effects, Utc::now(), inserts).await {
            Ok(applied) => applied,
            Err(e) => {
                // release the claimed rows now: a redo claims them again with SKIP LOCKED
                if let Err(r) = tx.rollback().await {
                    tracing::warn!(error = ?r, "rollback after a failed batch failed");
                }
                return Err(e.into());
            }
        };
        let applied_at = started.elapsed();
        // shielded from the attempt's deadline: a COMMIT once sent takes effect, and what it
        // wrote must then be counted (I6) and the job reported done, not dead
        escalator_jobs::attempt::committing(tx.commit()).await?;
        escalator_runtime::failpoint::hit("batch-committed");

        // Metrics count what was committed, so that they reconcile with the audit log (I6).
        let c = applied.counts;
        metrics::counter!(m::CHECKED).increment(u64::try_from(c.checked).unwrap_or(0));
        metrics::counter!(m::ESCALATED).increment(u64::try_from(c.escalated).unwrap_or(0));
        metrics::counter!(m::REMINDED).increment(u64::try_from(c.reminded).unwrap_or(0));
        // as the counts: only workflows whose change committed (one completed through the api
        // while its batch was in flight is skipped, I4, and is not counted either)
        let changed: std::collections::HashSet<_> = applied.changed.iter().collect();
        let over_sla = planned
            .over_sla
            .iter()
            .filter(|id| changed.contains(id))
            .count();
        metrics::counter!(m::OVER_SLA).increment(over_sla as u64);
        if !planned.failures.is_empty() {
            metrics::counter!(m::FAILURES).increment(planned.failures.len() as u64);
            for (id, why) in &planned.failures {
                tracing::warn!(workflow_id = %id, reason = %why, "workflow set aside");
            }
        }
        // exhausted for want of anyone to escalate to (the assignee has no manager among the
        // users, a level's user is missing or has left): the chain stops until one appears,
        // which only the audit trail said; workflows whose people were no users went quiet
        let stranded: Vec<_> = due
            .iter()
            .zip(&decisions)
            .filter(|(d, decision)| {
                matches!(
                    decision,
                    Some(Decision::Exhausted {
                        reason: escalator_policy::Exhaustion::NoTarget,
                        ..
                    })
                ) && changed.contains(&d.workflow.id)
            })
            .map(|(d, _)| d.workflow.id)
            .collect();
        if let Some(example) = stranded.first() {
            tracing::warn!(
                count = stranded.len(),
                %example,
                "workflows have no one to escalate to (the assignee has no manager among the \
                 users, or a level's user is missing or inactive): their chains stop until \
                 someone is there (PUT /api/v1/users); their audit trails say `no_target`"
            );
        }
        for (id, late) in &planned.escalations {
            if changed.contains(id) {
                metrics::histogram!(m::LATENCY)
                    .record(late.num_milliseconds().max(0) as f64 / 1000.0);
            }
        }
        if applied.run_completed {
            record_run_finished(&self.store, job.check_run_id).await;
            self.release_digests(job.check_run_id).await;
        }
        tracing::debug!(
            check_run_id = job.check_run_id,
            batch = job.batch_index,
            claimed = due.len(),
            escalated = c.escalated,
            reminded = c.reminded,
            claim_ms = claimed_at.as_millis() as u64,
            apply_ms = (applied_at - claimed_at).as_millis() as u64,
            commit_ms = (started.elapsed() - applied_at).as_millis() as u64,
            "batch committed"
        );
        Ok((
            BatchOutcome {
                failures: planned.failures.len(),
                applied,
            },
            drained,
        ))
    }

    /// Decides the digests of a run that just finished: its held deliveries become outbox
    /// rows or digests, then a delivery job is pushed. On failure the delivery drains and the
    /// beat's outbox sweep release them (they look for held rows of finished runs).
    async fn release_digests(&self, run: i64) {
        match self.store.release_run_held(run, Utc::now()).await {
            Ok(0) => {}
            Ok(written) => {
                tracing::debug!(check_run_id = run, written, "digests decided");
                self.request_delivery(run).await;
            }
            Err(e) => {
                tracing::warn!(check_run_id = run, error = %e, "digests not decided; the outbox sweep will")
            }
        }
    }

    /// Pushes a delivery job for what run `run` wrote. A lost push only delays delivery: the
    /// beat's outbox sweep enqueues one later.
    async fn request_delivery(&self, run: i64) {
        let deliver = DeliverNotifications {
            check_run_id: Some(run),
        };
        if let Err(e) = self.queues.push_delivery(&deliver).await {
            tracing::warn!(error = %e, "could not enqueue delivery; the sweep will");
        }
    }

    /// The policies and calendars the claimed workflows are pinned to, read through `from`;
    /// missing or corrupt ones are left out (those workflows are set aside and counted as
    /// failures).
    async fn rules_for(
        &self,
        due: &[DueWorkflow],
        from: &mut People<'_>,
    ) -> (
        HashMap<(String, i32), Arc<Policy>>,
        HashMap<String, Calendar>,
    ) {
        let mut policies = HashMap::new();
        let mut calendars = HashMap::new();
        for d in due {
            let key = (d.workflow.policy_id.clone(), d.workflow.policy_version);
            if policies.contains_key(&key) {
                continue;
            }
            match self.policies.get(from, &key).await {
                Ok(p) => {
                    if let Some(c) = &p.spec().calendar_id
                        && !calendars.contains_key(c)
                    {
                        match from.calendar(c).await {
                            Ok(cal) => {
                                calendars.insert(c.clone(), cal);
                            }
                            Err(e) => {
                                tracing::error!(calendar = %c, error = %e, "calendar unavailable")
                            }
                        }
                    }
                    policies.insert(key, p);
                }
                Err(e) => {
                    tracing::error!(policy = %key.0, version = key.1, error = %e, "policy unavailable")
                }
            }
        }
        (policies, calendars)
    }

    /// What a check of `scope` at `as_of` would do, writing nothing and locking nothing:
    /// evaluates up to `limit` due workflows.
    pub async fn dry_run(
        &self,
        scope: Scope,
        as_of: DateTime<Utc>,
        limit: u32,
    ) -> Result<DryRun, EngineError> {
        // read, never claimed: a dry run locks nothing that a real check's batch would then
        // pass over as taken
        let (total_due, due) = match scope {
            Scope::All => {
                let due = self.store.peek_due(as_of, limit).await?;
                (self.store.count_due(as_of).await?, due)
            }
            Scope::Workflow(id) => {
                let due: Vec<DueWorkflow> =
                    self.store.peek_one(id, as_of).await?.into_iter().collect();
                (due.len() as i64, due)
            }
        };
        let (policies, calendars) = self.rules_for(&due, &mut People::Store(&self.store)).await;
        let rules = RulesFound {
            policies: &policies,
            calendars: &calendars,
        };
        let (decisions, _) = rules
            .decide(
                &due,
                plan::Dated::new(as_of, Utc::now()),
                People::Store(&self.store),
            )
            .await?;
        let items = due
            .into_iter()
            .zip(decisions)
            .map(|(d, decision)| (d.workflow, decision))
            .collect();
        Ok(DryRun { total_due, items })
    }
}

/// Where a batch reads the users, policies and calendars it decides with.
enum People<'a> {
    /// In the batch's transaction, in one query.
    Batch(&'a mut BatchTx),
    /// Outside any transaction (a dry run, which must lock nothing).
    Store(&'a Store),
}

impl People<'_> {
    /// The users among `ids` that exist.
    async fn load(&mut self, ids: &[String]) -> Result<Vec<User>, StoreError> {
        match self {
            People::Batch(tx) => tx.users(ids).await,
            People::Store(store) => store.users_by_id(ids).await,
        }
    }

    /// Version `version` of policy `id`.
    async fn policy(&mut self, id: &str, version: i32) -> Result<Policy, StoreError> {
        Ok(match self {
            People::Batch(tx) => tx.policy(id, version).await?,
            People::Store(store) => store.get_policy(id, version).await?,
        }
        .policy)
    }

    /// Calendar `id`.
    async fn calendar(&mut self, id: &str) -> Result<Calendar, StoreError> {
        match self {
            People::Batch(tx) => tx.calendar(id).await,
            People::Store(store) => store.get_calendar(id).await,
        }
    }
}

/// The policies and calendars a batch's workflows are pinned to, as found.
struct RulesFound<'a> {
    policies: &'a HashMap<PolicyKey, Arc<Policy>>,
    calendars: &'a HashMap<String, Calendar>,
}

impl RulesFound<'_> {
    /// Evaluates every claimed workflow with its pinned policy and calendar: due at `when.as_of`,
    /// applied at `when.at`; with the users the effects need, read from `people`. An escalation to a user who has left (`active: false`: they would
    /// hold the workflow and be told nothing) is decided again with that user passed over, so
    /// the next level, or no one (`no_target`), takes their place. Each round passes over at
    /// least one more user, so this ends; a batch whose targets are all active decides once.
    async fn decide(
        &self,
        due: &[DueWorkflow],
        when: plan::Dated,
        mut people: People<'_>,
    ) -> Result<(Vec<Option<Decision>>, HashMap<String, User>), StoreError> {
        let mut gone = BTreeSet::new();
        let mut users: HashMap<String, User> = HashMap::new();
        loop {
            let decisions = plan::decide(
                due,
                |w| {
                    let policy = self
                        .policies
                        .get(&(w.policy_id.clone(), w.policy_version))?;
                    let calendar = match &policy.spec().calendar_id {
                        Some(c) => Some(self.calendars.get(c)?),
                        None => None,
                    };
                    Some(Rules { policy, calendar })
                },
                &gone,
                when.as_of,
                when.at,
            );
            let missing: Vec<String> = plan::recipients_needed(due, &decisions)
                .into_iter()
                .filter(|id| !users.contains_key(id))
                .collect();
            if !missing.is_empty() {
                let found = people.load(&missing).await?;
                users.extend(found.into_iter().map(|u| (u.id.clone(), u)));
            }
            let left: Vec<&String> = decisions
                .iter()
                .filter_map(|d| match d {
                    Some(Decision::Escalate { target, .. }) => Some(target),
                    _ => None,
                })
                .filter(|target| users.get(*target).is_some_and(|u| !u.active))
                .collect();
            if left.is_empty() {
                return Ok((decisions, users));
            }
            gone.extend(left.into_iter().cloned());
        }
    }
}

/// A dry run's findings.
#[derive(Debug, Clone)]
pub struct DryRun {
    /// Workflows due at the instant.
    pub total_due: i64,
    /// The evaluated ones with their decision (None: their policy is unreadable).
    pub items: Vec<(escalator_store::Workflow, Option<Decision>)>,
}

/// Records the duration of a finished run and the last-check timestamp.
async fn record_run_finished(store: &Store, id: i64) {
    match store.get_check_run(id).await {
        Ok(run) => {
            if let Some(done) = run.finished_at {
                let secs = (done - run.created_at).num_milliseconds().max(0) as f64 / 1000.0;
                metrics::histogram!(m::DURATION).record(secs);
                // a check of one workflow is no sweep: it says nothing about the others
                if run.scope == "all" {
                    metrics::gauge!(m::LAST_CHECK).set(done.timestamp() as f64);
                }
                tracing::info!(
                    check_run_id = id,
                    checked = run.checked,
                    reminded = run.reminded,
                    escalated = run.escalated,
                    exhausted = run.exhausted,
                    renotified = run.renotified,
                    failed = run.failed,
                    seconds = secs,
                    "check run finished"
                );
            }
        }
        Err(e) => tracing::warn!(check_run_id = id, error = %e, "cannot read finished run"),
    }
}
