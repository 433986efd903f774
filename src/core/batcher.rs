//! Dynamic batching: a bounded queue of decoded images (admitted a whole request at a time), drained by inference workers that each
//! own a session on a dedicated OS thread (never the async runtime).
//!
//! A worker takes whatever is queued, up to `max_batch_size`; with a `max_queue_delay` above zero it
//! waits that long at most for a batch to fill. Jobs whose caller went away (its receiver dropped)
//! are skipped before inference. Normalisation writes each image straight into the worker's
//! pre-allocated batch buffer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use fer_contract::{Pixels, Preprocessor};
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::oneshot;

use crate::backend::BackendError;

/// Runs one batch: `rows` images laid out NCHW in `input` → `rows × classes` scores in `output`.
pub trait Engine: Send + 'static {
    fn run(
        &mut self,
        input: &[f32],
        rows: usize,
        output: &mut Vec<f32>,
    ) -> Result<(), BackendError>;
}

impl Engine for crate::backend::OnnxSession {
    fn run(
        &mut self,
        input: &[f32],
        rows: usize,
        output: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        crate::backend::OnnxSession::run(self, input, rows, output)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_batch_size: usize,
    /// How long a worker waits for more jobs once it has one; zero takes what is there.
    pub max_queue_delay: Duration,
    pub queue_capacity: usize,
    /// Pad every batch to this size (graphs with a fixed batch dimension).
    pub fixed_batch: Option<usize>,
}

/// Per-model metric handles, resolved once.
#[derive(Clone)]
pub struct BatchMetrics {
    pub queue_wait: Histogram,
    pub inference: Histogram,
    pub batch_size: Histogram,
    pub queue_depth: IntGauge,
    pub cancelled: IntCounter,
}

/// The scores of one image, or why it has none (shared by every image of the failed batch).
pub type JobResult = Result<Vec<f32>, Arc<BackendError>>;

/// One image for the model: decoded pixels (normalised by the worker, straight into the batch
/// buffer), or a row the client already normalised (the raw tensor of the inference protocol).
pub enum JobInput {
    Pixels(Pixels),
    /// Exactly one input row (`channels × height × width` values).
    Tensor(Vec<f32>),
}

impl From<Pixels> for JobInput {
    fn from(pixels: Pixels) -> Self {
        JobInput::Pixels(pixels)
    }
}

struct Job {
    input: JobInput,
    enqueued: Instant,
    reply: oneshot::Sender<JobResult>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    Full,
    Closed,
    /// A tensor row whose length is not the model's input size.
    WrongLength {
        /// Which of the submitted images.
        index: usize,
        expected: usize,
        got: usize,
    },
}

pub struct Batcher {
    sender: Sender<Job>,
    /// Images the queue holds at most (one larger request may wait alone).
    capacity: usize,
    row_len: usize,
    depth: Arc<AtomicUsize>,
    metrics: BatchMetrics,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Batcher {
    /// Starts one worker thread per engine; all drain the same queue.
    pub fn start<E: Engine>(
        name: &str,
        engines: Vec<E>,
        preprocessor: Preprocessor,
        classes: usize,
        policy: BatchPolicy,
        metrics: BatchMetrics,
    ) -> std::io::Result<Self> {
        // Unbounded: `reserve` bounds what is queued, whole requests at a time.
        let (sender, receiver) = crossbeam_channel::unbounded();
        let depth = Arc::new(AtomicUsize::new(0));
        let row_len = preprocessor.input_len();
        let preprocessor = Arc::new(preprocessor);
        let mut workers = Vec::new();
        for (i, engine) in engines.into_iter().enumerate() {
            let worker = Worker {
                receiver: receiver.clone(),
                engine,
                preprocessor: Arc::clone(&preprocessor),
                classes,
                policy,
                depth: Arc::clone(&depth),
                metrics: metrics.clone(),
            };
            workers.push(
                std::thread::Builder::new()
                    .name(format!("infer-{name}-{i}"))
                    .spawn(move || worker.run())?,
            );
        }
        Ok(Self {
            sender,
            capacity: policy.queue_capacity.max(1),
            row_len,
            depth,
            metrics,
            workers,
        })
    }

    /// Queues one image; the receiver yields its scores. Dropping the receiver cancels it.
    pub fn submit(
        &self,
        input: impl Into<JobInput>,
    ) -> Result<oneshot::Receiver<JobResult>, SubmitError> {
        let mut receivers = self.submit_all(vec![input.into()])?;
        receivers.pop().ok_or(SubmitError::Closed)
    }

    /// Queues all of a request's images or none of them: a refused request leaves nothing behind
    /// in the queue. A request larger than the whole queue is let in only when the queue is empty,
    /// so it is served (one at a time) instead of refused forever.
    pub fn submit_all(
        &self,
        inputs: Vec<JobInput>,
    ) -> Result<Vec<oneshot::Receiver<JobResult>>, SubmitError> {
        for (index, input) in inputs.iter().enumerate() {
            if let JobInput::Tensor(row) = input
                && row.len() != self.row_len
            {
                return Err(SubmitError::WrongLength {
                    index,
                    expected: self.row_len,
                    got: row.len(),
                });
            }
        }
        let n = inputs.len();
        let depth = self.reserve(n)?;
        let now = Instant::now();
        let mut receivers = Vec::with_capacity(n);
        for (sent, input) in inputs.into_iter().enumerate() {
            let (reply, receiver) = oneshot::channel();
            let job = Job {
                input,
                enqueued: now,
                reply,
            };
            if self.sender.send(job).is_err() {
                self.depth.fetch_sub(n - sent, Ordering::SeqCst);
                return Err(SubmitError::Closed);
            }
            receivers.push(receiver);
        }
        self.metrics.queue_depth.set(depth as i64);
        Ok(receivers)
    }

    /// Claims room for `n` images in one step; the depth after the claim.
    fn reserve(&self, n: usize) -> Result<usize, SubmitError> {
        let capacity = self.capacity;
        let mut current = self.depth.load(Ordering::SeqCst);
        loop {
            let fits = current + n <= capacity || current == 0;
            if !fits {
                return Err(SubmitError::Full);
            }
            match self.depth.compare_exchange_weak(
                current,
                current + n,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Ok(current + n),
                Err(actual) => current = actual,
            }
        }
    }

    /// Images waiting now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // Closing the queue ends the workers once they drain it.
        let (closed, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.sender, closed));
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

struct Worker<E> {
    receiver: Receiver<Job>,
    engine: E,
    preprocessor: Arc<Preprocessor>,
    classes: usize,
    policy: BatchPolicy,
    depth: Arc<AtomicUsize>,
    metrics: BatchMetrics,
}

impl<E: Engine> Worker<E> {
    fn run(mut self) {
        let row = self.preprocessor.input_len();
        let capacity = self
            .policy
            .fixed_batch
            .unwrap_or(self.policy.max_batch_size)
            .max(1);
        let mut input = vec![0.0f32; capacity * row];
        let mut output = Vec::with_capacity(capacity * self.classes);
        let mut jobs = Vec::with_capacity(capacity);
        while let Some(batch) = self.next_batch(&mut jobs) {
            let now = Instant::now();
            let depth = self.depth.fetch_sub(batch, Ordering::SeqCst) - batch;
            self.metrics.queue_depth.set(depth as i64);
            let before = jobs.len();
            jobs.retain(|job| !job.reply.is_closed());
            self.metrics.cancelled.inc_by((before - jobs.len()) as u64);
            if jobs.is_empty() {
                continue;
            }
            for (job, dst) in jobs.iter().zip(input.chunks_mut(row)) {
                self.metrics
                    .queue_wait
                    .observe(now.duration_since(job.enqueued).as_secs_f64());
                match &job.input {
                    JobInput::Pixels(pixels) => self.preprocessor.normalise_into(pixels, dst),
                    // `submit` refuses rows of another length.
                    JobInput::Tensor(row) if row.len() == dst.len() => dst.copy_from_slice(row),
                    JobInput::Tensor(_) => dst.fill(0.0),
                }
            }
            let rows = self.policy.fixed_batch.unwrap_or(jobs.len());
            input[jobs.len() * row..rows * row].fill(0.0);
            let started = Instant::now();
            let result = self.engine.run(&input[..rows * row], rows, &mut output);
            self.metrics
                .inference
                .observe(started.elapsed().as_secs_f64());
            self.metrics.batch_size.observe(jobs.len() as f64);
            match result {
                Ok(()) => {
                    for (job, scores) in jobs.drain(..).zip(output.chunks(self.classes)) {
                        let _ = job.reply.send(Ok(scores.to_vec()));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "inference failed");
                    let error = Arc::new(error);
                    for job in jobs.drain(..) {
                        let _ = job.reply.send(Err(Arc::clone(&error)));
                    }
                }
            }
        }
    }

    /// Blocks for the next job, then gathers up to a batch; `None` once the queue is closed.
    fn next_batch(&self, jobs: &mut Vec<Job>) -> Option<usize> {
        jobs.clear();
        jobs.push(self.receiver.recv().ok()?);
        let max = self.policy.max_batch_size.max(1);
        let deadline = Instant::now() + self.policy.max_queue_delay;
        while jobs.len() < max {
            match self.receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    if self.policy.max_queue_delay.is_zero() {
                        break;
                    }
                    match self.receiver.recv_deadline(deadline) {
                        Ok(job) => jobs.push(job),
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
        }
        Some(jobs.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fer_contract::Channels;
    use std::sync::Mutex;

    /// A real engine for the batcher's purposes: scores are the mean of each image, so a test can
    /// tell which image an answer belongs to; it records batch sizes and can block on a gate.
    struct MeanEngine {
        sizes: Arc<Mutex<Vec<usize>>>,
        gate: Option<Arc<Mutex<()>>>,
    }

    impl Engine for MeanEngine {
        fn run(
            &mut self,
            input: &[f32],
            rows: usize,
            output: &mut Vec<f32>,
        ) -> Result<(), BackendError> {
            let _held = self.gate.as_ref().map(|g| g.lock().unwrap());
            self.sizes.lock().unwrap().push(rows);
            let row = input.len() / rows;
            output.clear();
            for r in input.chunks(row) {
                let mean = r.iter().sum::<f32>() / row as f32;
                output.extend([mean, -mean]);
            }
            Ok(())
        }
    }

    fn preprocessor() -> Preprocessor {
        let manifest = fer_contract::Manifest::from_json(
            r#"{"format_version":1,"name":"t","version":1,"labels":["a","b"],
            "input":{"name":"x","layout":"NCHW","channels":"gray","height":2,"width":2},
            "output":{"name":"y","kind":"logits"},
            "preprocessing":{"resize":"bilinear","scale":1.0,"mean":[0.0],"std":[1.0]},
            "provenance":{"data":[],"command":"","trainer":""}}"#,
            "test",
        )
        .unwrap();
        Preprocessor::new(&manifest, Default::default())
    }

    fn metrics() -> BatchMetrics {
        let h = || Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).unwrap();
        BatchMetrics {
            queue_wait: h(),
            inference: h(),
            batch_size: h(),
            queue_depth: IntGauge::new("g", "g").unwrap(),
            cancelled: IntCounter::new("c", "c").unwrap(),
        }
    }

    fn image(value: u8) -> Pixels {
        Pixels::new(2, 2, Channels::Gray, vec![value; 4])
    }

    fn start(
        policy: BatchPolicy,
        gate: Option<Arc<Mutex<()>>>,
    ) -> (Batcher, Arc<Mutex<Vec<usize>>>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let engine = MeanEngine {
            sizes: Arc::clone(&sizes),
            gate,
        };
        let b = Batcher::start("t", vec![engine], preprocessor(), 2, policy, metrics()).unwrap();
        (b, sizes)
    }

    fn policy(max: usize, delay_ms: u64, capacity: usize) -> BatchPolicy {
        BatchPolicy {
            max_batch_size: max,
            max_queue_delay: Duration::from_millis(delay_ms),
            queue_capacity: capacity,
            fixed_batch: None,
        }
    }

    #[tokio::test]
    async fn answers_each_image_with_its_own_scores_in_order() {
        let (b, _) = start(policy(4, 0, 64), None);
        let receivers: Vec<_> = (0..10).map(|v| b.submit(image(v * 10)).unwrap()).collect();
        for (v, r) in receivers.into_iter().enumerate() {
            let scores = r.await.unwrap().unwrap();
            assert_eq!(scores, vec![(v * 10) as f32, -((v * 10) as f32)]);
        }
    }

    #[tokio::test]
    // The held guard blocks the worker's engine (another thread), never this task.
    #[allow(clippy::await_holding_lock)]
    async fn forms_batches_up_to_the_maximum_while_the_worker_is_busy() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let (b, sizes) = start(policy(4, 0, 64), Some(Arc::clone(&gate)));
        let first = b.submit(image(1)).unwrap();
        // Let the worker take the first job and block in the engine.
        while b.depth() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let rest: Vec<_> = (0..9).map(|v| b.submit(image(v)).unwrap()).collect();
        drop(held);
        first.await.unwrap().unwrap();
        for r in rest {
            r.await.unwrap().unwrap();
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes, vec![1, 4, 4, 1], "never above max_batch_size");
    }

    #[tokio::test]
    async fn waits_up_to_the_queue_delay_to_fill_a_batch() {
        let (b, sizes) = start(policy(8, 300, 64), None);
        let first = b.submit(image(1)).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let second = b.submit(image(2)).unwrap();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(
            *sizes.lock().unwrap(),
            vec![2],
            "the delay let both into one batch"
        );
    }

    #[tokio::test]
    // The held guard blocks the worker's engine (another thread), never this task.
    #[allow(clippy::await_holding_lock)]
    async fn skips_cancelled_jobs_and_refuses_when_full() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let (b, sizes) = start(policy(8, 0, 3), Some(Arc::clone(&gate)));
        let first = b.submit(image(1)).unwrap();
        while b.depth() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let cancelled = b.submit(image(2)).unwrap();
        let kept = b.submit(image(3)).unwrap();
        let _third = b.submit(image(4)).unwrap();
        assert_eq!(b.submit(image(5)).unwrap_err(), SubmitError::Full);
        drop(cancelled);
        drop(held);
        first.await.unwrap().unwrap();
        assert_eq!(kept.await.unwrap().unwrap()[0], 3.0);
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(
            sizes,
            vec![1, 2],
            "the cancelled image never reached the engine"
        );
        assert_eq!(b.metrics.cancelled.get(), 1);
    }

    #[tokio::test]
    // The held guard blocks the worker's engine (another thread), never this task.
    #[allow(clippy::await_holding_lock)]
    async fn admits_a_whole_request_or_none_of_it() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let (b, sizes) = start(policy(8, 0, 4), Some(Arc::clone(&gate)));
        let images = |n: u8| (0..n).map(|v| JobInput::from(image(v))).collect::<Vec<_>>();
        // Larger than the queue, but the queue is empty: it is let in.
        let big = b.submit_all(images(6)).unwrap();
        assert_eq!(b.submit_all(images(1)).unwrap_err(), SubmitError::Full);
        drop(held);
        for r in big {
            r.await.unwrap().unwrap();
        }
        let held = gate.lock().unwrap();
        let first = b.submit(image(9)).unwrap();
        while b.depth() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let three = b.submit_all(images(3)).unwrap();
        // Two more would overflow: refused, and nothing of them is queued.
        assert_eq!(b.submit_all(images(2)).unwrap_err(), SubmitError::Full);
        assert_eq!(b.depth(), 3);
        let one = b.submit_all(images(1)).unwrap();
        drop(held);
        first.await.unwrap().unwrap();
        for r in three.into_iter().chain(one) {
            r.await.unwrap().unwrap();
        }
        assert_eq!(b.depth(), 0);
        assert_eq!(*sizes.lock().unwrap(), vec![6, 1, 4]);
    }

    #[tokio::test]
    async fn takes_normalised_rows_as_they_are_and_refuses_wrong_lengths() {
        let (b, _) = start(policy(4, 0, 16), None);
        let row = JobInput::Tensor(vec![1.0, 2.0, 3.0, 6.0]);
        assert_eq!(
            b.submit(row).unwrap().await.unwrap().unwrap(),
            vec![3.0, -3.0]
        );
        assert_eq!(
            b.submit(JobInput::Tensor(vec![1.0; 5])).unwrap_err(),
            SubmitError::WrongLength {
                index: 0,
                expected: 4,
                got: 5
            }
        );
    }

    #[tokio::test]
    async fn pads_fixed_batch_graphs() {
        let mut p = policy(4, 0, 16);
        p.fixed_batch = Some(4);
        let (b, sizes) = start(p, None);
        assert_eq!(b.submit(image(7)).unwrap().await.unwrap().unwrap()[0], 7.0);
        assert_eq!(*sizes.lock().unwrap(), vec![4]);
    }
}
