//! Small pools of kernel threads: the system worker threads (PASSIVE_LEVEL work items) and the
//! DPC thread (DISPATCH_LEVEL). A job is a closure; the pool only runs it.
//!
//! Work items queued by the WSK poller while it delivers completions are *collected* and run on
//! the poller itself once its batch is delivered (see [`collect_work_items`]): the poller stands
//! for a network interrupt and its DPC, which on Windows run on whatever thread the processor
//! was running, with no context switch; kemu must wake the poller thread for it (one switch),
//! and then runs the work item there instead of waking a worker (a second switch Windows would
//! not have: the worker it readies takes the processor the DPC leaves). One switch per network
//! event in both. The DPC thread and the LSA threads (whose SSPI notify callbacks queue a
//! session's work item) do the same with what their jobs queue. A work item running there that
//! waits first runs what that thread would have delivered meanwhile (socket events on the
//! poller, queued jobs on a pool thread), so no wait depends on its own thread.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::kernel::Shared;
use crate::thread::{self, Rank};

type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    /// Work items this thread keeps to run itself (Some while the poller delivers a batch or
    /// the DPC thread runs a DPC).
    static COLLECTED: RefCell<Option<Vec<Job>>> = const { RefCell::new(None) };
    /// On a thread of a pool that collects ([`ThreadPool::collect_on_its_threads`]): that pool.
    static HOME: RefCell<Option<Arc<ThreadPool>>> = const { RefCell::new(None) };
}

/// Called by a wait on a thread of a collecting pool (a work item the DPC thread runs waits):
/// runs the DPCs queued meanwhile instead of sleeping — they may be what the wait is for, as
/// a Windows processor runs DPCs while its thread waits — then pauses up to 1 ms. False on any
/// other thread (sleep as usual).
pub(crate) fn wait_running_queued(slice: Duration) -> bool {
    let Some(pool) = HOME.with(|h| h.borrow().clone()) else {
        return false;
    };
    let mut ran = false;
    loop {
        let job = {
            let mut q = pool.queue.lock().unwrap();
            let job = q.jobs.pop_front();
            if job.is_some() {
                q.running += 1;
            }
            job
        };
        let Some(job) = job else { break };
        job();
        pool.queue.lock().unwrap().running -= 1;
        ran = true;
    }
    if !ran {
        std::thread::sleep(slice.min(Duration::from_millis(1)));
    }
    true
}

/// From now until [`ThreadPool::run_collected`], work items this thread queues
/// ([`ThreadPool::submit_work_item`]) are kept for it to run.
pub(crate) fn collect_work_items() {
    COLLECTED.with(|c| *c.borrow_mut() = Some(Vec::new()));
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    running: usize,
    /// Threads asleep on `ready` (a submit with none asleep needs no wake-up call).
    sleeping: usize,
    stopping: bool,
}

/// A fixed set of kernel threads draining one FIFO queue.
#[derive(Default)]
pub(crate) struct ThreadPool {
    queue: Mutex<Queue>,
    ready: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The work items a job queues run on the same thread after it (see the module's text).
    collects: AtomicBool,
}

impl ThreadPool {
    /// Starts `count` threads named `name` and their number.
    pub fn start(self: &Arc<Self>, kernel: &Arc<Shared>, name: &str, rank: Rank, count: usize) {
        for i in 0..count {
            self.start_thread(kernel, &format!("{name}{i}"), rank);
        }
    }

    /// Starts one more thread, named `name`.
    pub fn start_thread(self: &Arc<Self>, kernel: &Arc<Shared>, name: &str, rank: Rank) {
        let pool = self.clone();
        let weak = Arc::downgrade(kernel);
        self.threads
            .lock()
            .unwrap()
            .push(thread::spawn(kernel, name, rank, move || {
                pool.run(&weak);
            }));
    }

    /// Whether the calling thread is one of this pool's (a collecting pool's: see
    /// [`Self::collect_on_its_threads`]).
    pub fn is_home(self: &Arc<Self>) -> bool {
        HOME.with(|h| h.borrow().as_ref().is_some_and(|p| Arc::ptr_eq(p, self)))
    }

    /// Makes the work items this pool's jobs queue run on the thread that ran the job, after
    /// it (the DPC thread: a DPC needs no thread switch on Windows, the worker it readies one),
    /// unless the fault plan delays work items. Call before [`Self::start`].
    pub fn collect_on_its_threads(&self) {
        self.collects.store(true, Ordering::Release);
    }

    fn run(self: &Arc<Self>, kernel: &std::sync::Weak<Shared>) {
        let collects = self.collects.load(Ordering::Acquire);
        if collects {
            HOME.with(|h| *h.borrow_mut() = Some(self.clone()));
        }
        loop {
            let job = {
                let mut q = self.queue.lock().unwrap();
                loop {
                    if let Some(job) = q.jobs.pop_front() {
                        q.running += 1;
                        break job;
                    }
                    if q.stopping {
                        return;
                    }
                    q.sleeping += 1;
                    q = self.ready.wait(q).unwrap();
                    q.sleeping -= 1;
                }
            };
            let k = kernel.upgrade();
            let collect = collects && k.as_ref().is_some_and(|k| !k.faults.delays_workers());
            if collect {
                collect_work_items();
            }
            job();
            if let (true, Some(k)) = (collect, &k) {
                k.workers.run_collected(k);
            }
            let mut q = self.queue.lock().unwrap();
            q.running -= 1;
            drop(q);
            if let Some(k) = k {
                k.notify();
            }
        }
    }

    /// Queues a job.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        let mut q = self.queue.lock().unwrap();
        q.jobs.push_back(Box::new(job));
        // A thread that is not asleep takes the job when it next looks at the queue (under
        // this lock), so only a sleeper needs the futex call.
        let wake = q.sleeping > 0;
        drop(q);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Queues a work item's job, or keeps it for this thread if it is collecting them
    /// ([`collect_work_items`]); a kept job counts as running, so the pool is not idle.
    pub fn submit_work_item(&self, job: impl FnOnce() + Send + 'static) {
        let job: Job = Box::new(job);
        let job = COLLECTED.with(|c| match c.borrow_mut().as_mut() {
            Some(kept) => {
                kept.push(job);
                None
            }
            None => Some(job),
        });
        match job {
            Some(job) => self.submit(job),
            None => self.queue.lock().unwrap().running += 1,
        }
    }

    /// Runs the work items this thread kept since [`collect_work_items`], in the order queued,
    /// at PASSIVE_LEVEL; collecting stops first, so what they queue goes to the pool.
    pub fn run_collected(&self, kernel: &Arc<Shared>) {
        let Some(kept) = COLLECTED.with(|c| c.borrow_mut().take()) else {
            return;
        };
        for job in kept {
            job();
            self.queue.lock().unwrap().running -= 1;
            kernel.notify();
        }
    }

    /// Whether no job is queued or running.
    pub fn is_idle(&self) -> bool {
        let q = self.queue.lock().unwrap();
        q.jobs.is_empty() && q.running == 0
    }

    /// Stops the threads after the queued jobs ran; joins those not parked by a bugcheck.
    pub fn stop(&self, join: bool) {
        self.queue.lock().unwrap().stopping = true;
        self.ready.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap());
        if join {
            for t in threads {
                let _ = t.join();
            }
        }
    }
}
