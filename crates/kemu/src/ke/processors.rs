//! The processors' DPC queues: one DPC thread per modelled processor, each with its own queue
//! (a DPC runs on the processor it was queued to, and the work items it queues run on that
//! thread after it; see `workers`).
//!
//! A WSK completion deferred to a DPC goes to the processor of its connection — the socket's
//! creation order modulo the processor count — as receive-side scaling keeps each TCP
//! connection's processing on one processor (learn.microsoft.com, "RSS with a Single Hardware
//! Receive Queue": receive processing is distributed over the CPUs, and "the processing for a
//! given connection can be tied to a given CPU"). Two busy connections so run on two threads,
//! as on a two-processor machine, while one connection's completions stay on one thread (no
//! wake-up of another per event). Any other DPC (a timer's, the completion of a call answered
//! at once) is queued to the calling processor: the DPC thread that queues it, else
//! processor 0.

use std::sync::Arc;

use crate::ke::workers::ThreadPool;
use crate::kernel::Shared;
use crate::thread::Rank;

/// One queue and thread per processor.
pub(crate) struct Processors {
    queues: Vec<Arc<ThreadPool>>,
}

impl Processors {
    /// `count` processors (at least one), not started yet.
    pub fn new(count: usize) -> Processors {
        Processors {
            queues: (0..count.max(1))
                .map(|_| Arc::new(ThreadPool::default()))
                .collect(),
        }
    }

    /// Starts each processor's DPC thread (`dpc0`, `dpc1`, ...).
    pub fn start(&self, kernel: &Arc<Shared>) {
        for (i, queue) in self.queues.iter().enumerate() {
            queue.collect_on_its_threads();
            queue.start_thread(kernel, &format!("dpc{i}"), Rank::Kernel);
        }
    }

    /// Queues a DPC: to processor `flow` modulo the count (a connection's), or with `None` to
    /// the calling processor.
    pub fn submit(&self, flow: Option<usize>, job: impl FnOnce() + Send + 'static) {
        let at = match flow {
            Some(flow) => flow % self.queues.len(),
            None => self.current().unwrap_or(0),
        };
        self.queues[at].submit(job);
    }

    /// The processor whose DPC thread is calling, if one is.
    pub fn current(&self) -> Option<usize> {
        self.queues.iter().position(|q| q.is_home())
    }

    /// Whether no DPC is queued or running on any processor.
    pub fn is_idle(&self) -> bool {
        self.queues.iter().all(|q| q.is_idle())
    }

    /// Stops every DPC thread after its queued DPCs ran.
    pub fn stop(&self, join: bool) {
        for q in &self.queues {
            q.stop(join);
        }
    }
}
