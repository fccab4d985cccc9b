//! The threads host calls run on: a user thread entering the kernel (DeviceIoControl,
//! CreateFile, CancelIoEx, ...) runs at PASSIVE_LEVEL on a kernel thread of its own. Threads are
//! kept and reused — spawning an OS thread per call cost more than the calls themselves — and
//! the set grows whenever every kept thread is busy, so a call that blocks never holds up another.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};

use crate::kernel::Shared;
use crate::thread::{self, Rank};

type Job = Box<dyn FnOnce() + Send>;

/// Idle caller threads, each waiting on its own channel.
#[derive(Default)]
pub(crate) struct Callers {
    idle: Mutex<Vec<Sender<Job>>>,
    stopped: AtomicBool,
}

impl Callers {
    /// Runs `job` on an idle caller thread, or on a new one.
    pub fn submit(&self, kernel: &Arc<Shared>, job: Job) {
        let mut job = job;
        loop {
            let idle = self.idle.lock().unwrap().pop();
            match idle {
                Some(tx) => match tx.send(job) {
                    Ok(()) => return,
                    // That thread is gone (it panicked): try the next one.
                    Err(mpsc::SendError(back)) => job = back,
                },
                None => break,
            }
        }
        thread::spawn(kernel, "caller", Rank::Application, move || serve(job));
    }

    /// Lets every idle caller thread end (at kernel stop); busy ones end after their call.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.idle.lock().unwrap().clear();
    }
}

fn serve(first: Job) {
    let mut job = first;
    loop {
        job();
        let kernel = thread::kernel();
        if kernel.callers.stopped.load(Ordering::Acquire) {
            return;
        }
        // Back on the idle list with a fresh channel: the next call reuses this thread, and
        // clearing the list at stop closes the channel, which ends the thread.
        let (tx, rx) = mpsc::channel::<Job>();
        kernel.callers.idle.lock().unwrap().push(tx);
        drop(kernel);
        match rx.recv() {
            Ok(next) => job = next,
            Err(_) => return,
        }
    }
}
