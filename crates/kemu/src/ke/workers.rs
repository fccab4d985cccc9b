//! Small pools of kernel threads: the system worker threads (PASSIVE_LEVEL work items) and the
//! DPC thread (DISPATCH_LEVEL). A job is a closure; the pool only runs it.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::kernel::Shared;
use crate::thread;

type Job = Box<dyn FnOnce() + Send>;

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
}

impl ThreadPool {
    /// Starts `count` threads named `name`.
    pub fn start(self: &Arc<Self>, kernel: &Arc<Shared>, name: &str, count: usize) {
        let mut threads = self.threads.lock().unwrap();
        for i in 0..count {
            let pool = self.clone();
            let weak = Arc::downgrade(kernel);
            threads.push(thread::spawn(kernel, &format!("{name}{i}"), move || {
                pool.run(&weak);
            }));
        }
    }

    fn run(&self, kernel: &std::sync::Weak<Shared>) {
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
            job();
            let mut q = self.queue.lock().unwrap();
            q.running -= 1;
            drop(q);
            if let Some(k) = kernel.upgrade() {
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
