//! The two handlers of a check, as plain async functions over the store: the planner that fans
//! a check out into batches, and the batch that claims, decides and applies. The apalis glue
//! (attempts, dead-lettering) lives in `jobs.rs`; everything here is safe to run twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use escalator_jobs::payload::MAX_FANOUT;
use escalator_jobs::{CheckWorkflows, EscalateBatch, Queues, Scope};
use escalator_policy::{Calendar, Decision, Policy};
use escalator_runtime::metrics as m;
use escalator_store::{Applied, DueWorkflow, Store, StoreError, User};

use crate::plan::{self, BatchRef, Rules};

/// What can go wrong in a handler.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The database failed (retry if transient).
    #[error("store")]
    Store(#[from] StoreError),
    /// The queue refused a push.
    #[error("queue")]
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { batch_size: 500 }
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
    async fn get(&self, store: &Store, id: &str, version: i32) -> Result<Arc<Policy>, StoreError> {
        let key = (id.to_owned(), version);
        if let Some(p) = self.policies.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(p);
        }
        let p = Arc::new(store.get_policy(id, version).await?.policy);
        if let Ok(mut map) = self.policies.lock() {
            map.insert(key, p.clone());
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

impl Engine {
    /// Plans check run `job.check_run_id`: counts due workflows and pushes one batch job per
    /// `batch_size` of them. Batches are pushed before the run is marked planned, each with an
    /// idempotency key, so a planner that crashes half-way and runs again pushes nothing twice
    /// and loses nothing.
    pub async fn check_workflows(&self, job: &CheckWorkflows) -> Result<Planned, EngineError> {
        let run = self.store.get_check_run(job.check_run_id).await?;
        if matches!(run.status.as_str(), "succeeded" | "failed") {
            return Ok(Planned::AlreadyDone);
        }
        if let Scope::Workflow(id) = job.scope {
            self.store.start_check_run(run.id, 1, Utc::now()).await?;
            let batch = EscalateBatch {
                check_run_id: run.id,
                as_of: job.as_of,
                batch_index: 0,
                rounds: 1,
            };
            let outcome = self.batch_round(Some(id), &batch, Some(0)).await?;
            if outcome.applied.run_completed {
                record_run_finished(&self.store, run.id).await;
            }
            return Ok(Planned::Inline(Box::new(outcome)));
        }
        // A planner running for the second time keeps the first plan's batch count.
        let due = self.store.count_due(job.as_of).await?;
        let size = i64::from(self.config.batch_size.max(1));
        let needed = u32::try_from((due + size - 1) / size).unwrap_or(u32::MAX);
        let batches = if run.status == "running" {
            u32::try_from(run.batches).unwrap_or(0)
        } else {
            needed.min(MAX_FANOUT)
        };
        let rounds = if batches == 0 {
            1
        } else {
            needed.div_ceil(batches).max(1)
        };
        let jobs: Vec<EscalateBatch> = (0..batches)
            .map(|i| EscalateBatch {
                check_run_id: run.id,
                as_of: job.as_of,
                batch_index: i32::try_from(i).unwrap_or(i32::MAX),
                rounds,
            })
            .collect();
        let batches = i32::try_from(batches).unwrap_or(i32::MAX);
        self.queues.push_batches(&jobs).await?;
        let run = self
            .store
            .start_check_run(run.id, batches, Utc::now())
            .await?;
        if run.status == "succeeded" {
            record_run_finished(&self.store, run.id).await;
        }
        tracing::info!(check_run_id = run.id, due, batches, as_of = %job.as_of, "check planned");
        Ok(Planned::FannedOut { due, batches })
    }

    /// Runs one batch job: up to `rounds` transactions, each claiming `batch_size` due
    /// workflows (SKIP LOCKED), deciding with the SLA clock and applying every effect
    /// set-wise. The transaction that ends the job records the batch as done. A duplicate job
    /// finds nothing due.
    pub async fn escalate_batch(&self, job: &EscalateBatch) -> Result<BatchOutcome, EngineError> {
        let rounds = job.rounds.max(1);
        let mut total = BatchOutcome {
            applied: Applied::default(),
            failures: 0,
        };
        for round in 1..=rounds {
            // Rounds after the first stop early when the previous one found the queue of due
            // workflows drained; the last transaction always carries the batch's completion.
            let finishing = round == rounds;
            let outcome = self
                .batch_round(None, job, finishing.then_some(job.batch_index))
                .await?;
            let claimed = outcome.applied.counts.checked;
            total.failures += outcome.failures;
            total.applied.changed.extend(outcome.applied.changed);
            total.applied.audits += outcome.applied.audits;
            total.applied.notifications += outcome.applied.notifications;
            total.applied.outbox += outcome.applied.outbox;
            total.applied.run_completed |= outcome.applied.run_completed;
            let c = &mut total.applied.counts;
            c.checked += outcome.applied.counts.checked;
            c.reminded += outcome.applied.counts.reminded;
            c.escalated += outcome.applied.counts.escalated;
            c.failed += outcome.applied.counts.failed;
            if finishing {
                break;
            }
            if i64::from(claimed) < i64::from(self.config.batch_size) {
                // Drained: finish the batch with an empty transaction that records completion.
                let done = self.batch_round(None, job, Some(job.batch_index)).await?;
                total.applied.run_completed |= done.applied.run_completed;
                total.applied.counts.checked += done.applied.counts.checked;
                break;
            }
        }
        Ok(total)
    }

    async fn batch_round(
        &self,
        only: Option<uuid::Uuid>,
        job: &EscalateBatch,
        finishes: Option<i32>,
    ) -> Result<BatchOutcome, EngineError> {
        let started = Instant::now();
        let mut tx = self.store.begin_batch().await?;
        let due: Vec<DueWorkflow> = match only {
            Some(id) => tx.claim_one(id, job.as_of).await?.into_iter().collect(),
            None => tx.claim_due(job.as_of, self.config.batch_size).await?,
        };
        let (policies, calendars) = self.rules_for(&due).await;
        let decisions = plan::decide(
            &due,
            |w| {
                let policy = policies.get(&(w.policy_id.clone(), w.policy_version))?;
                let calendar = match &policy.spec().calendar_id {
                    Some(c) => Some(calendars.get(c)?),
                    None => None,
                };
                Some(Rules { policy, calendar })
            },
            job.as_of,
        );
        let ids = plan::recipients_needed(&due, &decisions);
        let users: HashMap<String, User> = if ids.is_empty() {
            HashMap::new()
        } else {
            tx.users(&ids)
                .await?
                .into_iter()
                .map(|u| (u.id.clone(), u))
                .collect()
        };
        let planned = plan::build(
            &due,
            &decisions,
            &users,
            BatchRef {
                check_run_id: Some(job.check_run_id),
                batch_index: finishes,
            },
            job.as_of,
        );
        let applied = tx.apply(&planned.effects, Utc::now()).await?;
        tx.commit().await?;

        // Metrics count what was committed, so that they reconcile with the audit log (I6).
        let c = applied.counts;
        metrics::counter!(m::CHECKED).increment(u64::try_from(c.checked).unwrap_or(0));
        metrics::counter!(m::ESCALATED).increment(u64::try_from(c.escalated).unwrap_or(0));
        metrics::counter!(m::REMINDED).increment(u64::try_from(c.reminded).unwrap_or(0));
        metrics::counter!(m::OVER_SLA).increment(planned.over_sla);
        if !planned.failures.is_empty() {
            metrics::counter!(m::FAILURES).increment(planned.failures.len() as u64);
            for (id, why) in &planned.failures {
                tracing::warn!(workflow_id = %id, reason = %why, "workflow set aside");
            }
        }
        let changed: std::collections::HashSet<_> = applied.changed.iter().collect();
        for (id, late) in &planned.escalations {
            if changed.contains(id) {
                metrics::histogram!(m::LATENCY)
                    .record(late.num_milliseconds().max(0) as f64 / 1000.0);
            }
        }
        if applied.run_completed {
            record_run_finished(&self.store, job.check_run_id).await;
        }
        tracing::debug!(
            check_run_id = job.check_run_id,
            batch = job.batch_index,
            claimed = due.len(),
            escalated = c.escalated,
            reminded = c.reminded,
            ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        Ok(BatchOutcome {
            failures: planned.failures.len(),
            applied,
        })
    }

    /// The policies and calendars the claimed workflows are pinned to; missing or corrupt
    /// ones are left out (those workflows are set aside and counted as failures).
    async fn rules_for(
        &self,
        due: &[DueWorkflow],
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
            match self.policies.get(&self.store, &key.0, key.1).await {
                Ok(p) => {
                    if let Some(c) = &p.spec().calendar_id
                        && !calendars.contains_key(c)
                    {
                        match self.store.get_calendar(c).await {
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

    /// What a check at `as_of` would do, writing nothing: evaluates up to `limit` due workflows
    /// in a transaction that is rolled back.
    pub async fn dry_run(&self, as_of: DateTime<Utc>, limit: u32) -> Result<DryRun, EngineError> {
        let total_due = self.store.count_due(as_of).await?;
        let mut tx = self.store.begin_batch().await?;
        let due = tx.claim_due(as_of, limit).await?;
        drop(tx);
        let (policies, calendars) = self.rules_for(&due).await;
        let decisions = plan::decide(
            &due,
            |w| {
                let policy = policies.get(&(w.policy_id.clone(), w.policy_version))?;
                let calendar = match &policy.spec().calendar_id {
                    Some(c) => Some(calendars.get(c)?),
                    None => None,
                };
                Some(Rules { policy, calendar })
            },
            as_of,
        );
        let items = due
            .into_iter()
            .zip(decisions)
            .map(|(d, decision)| (d.workflow, decision))
            .collect();
        Ok(DryRun { total_due, items })
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
                metrics::gauge!(m::LAST_CHECK).set(done.timestamp() as f64);
                tracing::info!(
                    check_run_id = id,
                    checked = run.checked,
                    reminded = run.reminded,
                    escalated = run.escalated,
                    failed = run.failed,
                    seconds = secs,
                    "check run finished"
                );
            }
        }
        Err(e) => tracing::warn!(check_run_id = id, error = %e, "cannot read finished run"),
    }
}
