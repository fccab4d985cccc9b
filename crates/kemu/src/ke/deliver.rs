//! Delivery of callbacks the real routine may make inline or later, at PASSIVE or DISPATCH_LEVEL:
//! the fault plan decides, within what the routine allows.

use ksys::ntdef::KIRQL;

use crate::thread::{self, DISPATCH};

/// Runs `f` where the fault plan puts it: inline on this thread (at `caller_irql` or raised to
/// DISPATCH_LEVEL) or deferred to the DPC thread (DISPATCH) or a worker thread (PASSIVE).
/// `dispatch_allowed`: the callback's documented ceiling includes DISPATCH_LEVEL.
pub(crate) fn flexible(
    what: &'static str,
    caller_irql: KIRQL,
    dispatch_allowed: bool,
    f: impl FnOnce() + Send + 'static,
) {
    let kernel = thread::kernel();
    let placement = kernel.faults.place(true, dispatch_allowed);
    let run = move |level: KIRQL| {
        thread::with_activity(what, || {
            thread::at_irql(level, f);
        });
        thread::check_balanced(what, thread::irql());
    };
    match (
        placement.inline,
        placement.dispatch || caller_irql >= DISPATCH,
    ) {
        (true, true) => run(DISPATCH),
        (true, false) => run(caller_irql),
        (false, true) => kernel.dpc.submit(None, move || run(DISPATCH)),
        (false, false) => kernel.workers.submit(move || run(thread::PASSIVE)),
    }
}
