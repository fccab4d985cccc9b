//! The ntoskrnl `Ke*`/`Ex*` subset: pool, spin locks, events and waits, timers and DPCs, time,
//! and the worker and DPC threads that run deferred work.

pub(crate) mod deliver;
pub(crate) mod pool;
pub(crate) mod processors;
pub(crate) mod sync;
pub(crate) mod timer;
pub(crate) mod workers;
