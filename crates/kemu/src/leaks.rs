//! Allocation sites and leak reports.

use std::fmt;

use crate::thread;

/// Where something was allocated: the activity of the allocating thread, a kernel-wide sequence
/// number, and a backtrace when `KEMU_BACKTRACE=1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Activity label of the allocating thread ("DriverEntry", "IOCTL 0x8A576000", ...).
    pub activity: std::sync::Arc<str>,
    /// Kernel-wide allocation sequence number (orders the report).
    pub sequence: u64,
    /// Backtrace of the allocating call, if enabled.
    pub backtrace: Option<String>,
}

impl Site {
    /// The calling thread's site.
    pub(crate) fn here(sequence: u64) -> Site {
        // Read once: an environment lookup takes the process's environment lock, and this
        // runs for every pool block, IRP and timer.
        static BACKTRACES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let wanted = *BACKTRACES
            .get_or_init(|| std::env::var_os("KEMU_BACKTRACE").is_some_and(|v| v == "1"));
        let backtrace = if wanted {
            Some(std::backtrace::Backtrace::force_capture().to_string())
        } else {
            None
        };
        Site {
            activity: thread::activity(),
            sequence,
            backtrace,
        }
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} during {}", self.sequence, self.activity)?;
        if let Some(bt) = &self.backtrace {
            write!(f, "\n{bt}")?;
        }
        Ok(())
    }
}

/// What kind of object leaked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LeakKind {
    /// A pool block (ExAllocatePool2, or framework memory charged to the driver's tag).
    Pool,
    /// An IRP from IoAllocateIrp.
    Irp,
    /// An MDL from IoAllocateMdl.
    Mdl,
    /// An IO_WORKITEM from IoAllocateWorkItem, or one still queued/running.
    WorkItem,
    /// A timer still set.
    Timer,
    /// An open handle (file object) to one of the driver's devices.
    Handle,
    /// A framework object still alive (referenced, or a request never completed).
    WdfObject,
    /// A WSK socket never closed.
    Socket,
    /// A WSK registration never deregistered.
    WskRegistration,
    /// An SSPI object: async context, credential or security context handle, context buffer.
    Sspi,
}

/// One leaked object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    /// Kind of object.
    pub kind: LeakKind,
    /// Its address or handle value.
    pub address: usize,
    /// Pool tag (as text) or object type.
    pub tag: String,
    /// Size in bytes, when meaningful.
    pub size: usize,
    /// Where it was allocated.
    pub site: Site,
}

impl fmt::Display for Leak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {:#x} [{}] {} bytes, allocated {}",
            self.kind, self.address, self.tag, self.size, self.site
        )
    }
}

/// Everything still alive when it should not be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeakReport {
    /// The leaks, in allocation order.
    pub leaks: Vec<Leak>,
}

impl LeakReport {
    /// Whether nothing leaked.
    pub fn is_empty(&self) -> bool {
        self.leaks.is_empty()
    }
}

impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} leak(s):", self.leaks.len())?;
        for leak in &self.leaks {
            writeln!(f, "  {leak}")?;
        }
        Ok(())
    }
}

/// A pool tag as its four characters (little-endian, as WinDbg's !poolused shows it).
pub fn tag_text(tag: u32) -> String {
    tag.to_le_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}
