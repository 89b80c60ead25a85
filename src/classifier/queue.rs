//! Queue admission: the one queue every caller's job goes through to the workers, with its
//! bound (load shedding) and the slots a job holds while it waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::Sender;

use super::{ClassifierError, EncodedPair, HeadValues};

/// The workers' queue, as callers see it.
pub(super) struct Queue {
    pub(super) jobs: Sender<Job>,
    /// Pairs admitted (being tokenized or queued) and not yet taken by a worker.
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) max_queued_rows: usize,
    /// Worker threads running.
    pub(super) live: Arc<AtomicUsize>,
}

impl Queue {
    /// Worker threads running.
    pub(super) fn live_workers(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Pairs admitted and waiting for a worker.
    pub(super) fn queued_rows(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Takes queue slots for `rows` pairs before any work on them, unless the queue is full
    /// (see [`ClassifierOptions::max_queued_rows`](super::ClassifierOptions::max_queued_rows))
    /// or no worker is left to serve it.
    pub(super) fn reserve(&self, rows: usize) -> Result<Slots, ClassifierError> {
        if self.live_workers() == 0 {
            return Err(ClassifierError::WorkersGone);
        }
        let limit = self.max_queued_rows;
        let before = self.queued.fetch_add(rows, Ordering::AcqRel);
        queued_gauge(before.saturating_add(rows));
        let slots = Slots { queued: self.queued.clone(), rows };
        // A job arriving at an empty queue is always taken, however large.
        if before > 0 && before.saturating_add(rows) > limit {
            crate::telemetry::metrics().classifier_shed.inc();
            return Err(ClassifierError::Overloaded { queued: before, limit });
        }
        Ok(slots)
    }

    /// Queues a job in the slots taken for it; the worker that takes it gives them back.
    pub(super) fn submit(&self, job: Job, mut slots: Slots) -> Result<(), ClassifierError> {
        self.jobs.send(job).map_err(|_| ClassifierError::WorkersGone)?;
        slots.rows = 0;
        Ok(())
    }
}

/// Pairs to run, already tokenized and packed by the caller, and where the answer goes.
pub(super) struct Job {
    /// Already tokenized and packed by the caller.
    pub(super) pairs: Vec<EncodedPair>,
    pub(super) reply: Reply,
}

pub(super) type Answer = Result<Vec<HeadValues>, ClassifierError>;

/// Async callers await a oneshot; blocking callers (the CLI, model loading, which may run
/// inside a runtime) wait on a plain channel, which is safe anywhere.
pub(super) enum Reply {
    Async(tokio::sync::oneshot::Sender<Answer>),
    Blocking(crossbeam_channel::Sender<Answer>),
}

impl Reply {
    /// Whether nobody waits for the answer any more.
    pub(super) fn abandoned(&self) -> bool {
        match self {
            Reply::Async(tx) => tx.is_closed(),
            Reply::Blocking(_) => false,
        }
    }

    pub(super) fn send(self, answer: Answer) {
        // The caller may have gone away (a cancelled request); nothing to do then.
        let _ = match self {
            Reply::Async(tx) => tx.send(answer).map_err(drop),
            Reply::Blocking(tx) => tx.send(answer).map_err(drop),
        };
    }
}

/// Queue slots held for a job from before its pairs are tokenized until it is queued (then a
/// worker gives them back when it takes the job); dropped early (an error, a cancelled
/// caller), they are given back at once.
pub(super) struct Slots {
    queued: Arc<AtomicUsize>,
    rows: usize,
}

impl Drop for Slots {
    fn drop(&mut self) {
        let before = self.queued.fetch_sub(self.rows, Ordering::AcqRel);
        if self.rows > 0 {
            queued_gauge(before.saturating_sub(self.rows));
        }
    }
}

/// Publishes the queue's length (`rulegate_classifier_queued_rows`).
pub(super) fn queued_gauge(rows: usize) {
    crate::telemetry::metrics().classifier_queued.set(i64::try_from(rows).unwrap_or(i64::MAX));
}
