//! Admission of inference requests, for every transport: refuse while shutting down (503 /
//! UNAVAILABLE), shed load above the concurrency limit (429 + `Retry-After` / RESOURCE_EXHAUSTED),
//! bound each request's time (504 / DEADLINE_EXCEEDED; dropping the request's future drops its
//! queued images, which the batcher then skips), and count what is in flight so that shutdown can
//! wait for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::error::Error;

pub struct Admission {
    permits: Option<Arc<Semaphore>>,
    limit: usize,
    timeout: Option<Duration>,
    in_flight: AtomicUsize,
}

impl Admission {
    /// `max_concurrent` 0: no limit; `timeout` zero: none.
    pub fn new(max_concurrent: usize, timeout: Duration) -> Self {
        Self {
            permits: (max_concurrent > 0).then(|| Arc::new(Semaphore::new(max_concurrent))),
            limit: max_concurrent,
            timeout: (!timeout.is_zero()).then_some(timeout),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Inference requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Resolves once no admitted request is left (new ones are refused once shutdown began).
    pub async fn drained(&self) {
        while self.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Counts one request in flight for as long as it lives.
struct InFlight<'a> {
    admission: &'a Admission,
    gauge: &'a prometheus::IntGauge,
}

impl<'a> InFlight<'a> {
    fn enter(admission: &'a Admission, gauge: &'a prometheus::IntGauge) -> Self {
        admission.in_flight.fetch_add(1, Ordering::SeqCst);
        gauge.inc();
        Self { admission, gauge }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.admission.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.gauge.dec();
    }
}

impl Admission {
    /// Runs one inference request under the admission rules (HTTP and gRPC alike).
    pub async fn run<T>(
        &self,
        shutting_down: &std::sync::atomic::AtomicBool,
        gauge: &prometheus::IntGauge,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        // Counted before the shutdown check, so a drain that saw zero cannot miss this request.
        let _in_flight = InFlight::enter(self, gauge);
        if shutting_down.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        let _permit =
            match &self.permits {
                Some(permits) => Some(Arc::clone(permits).try_acquire_owned().map_err(|_| {
                    Error::Overloaded {
                        limit: self.limit,
                        retry_after_secs: 1,
                    }
                })?),
                None => None,
            };
        match self.timeout {
            Some(limit) => tokio::time::timeout(limit, work)
                .await
                .unwrap_or(Err(Error::Timeout {
                    limit_ms: limit.as_millis() as u64,
                })),
            None => work.await,
        }
    }
}
