//! Faults inside a loaded driver image: a SIGSEGV / SIGBUS / SIGILL on a kernel thread whose
//! instruction pointer (or faulting address) lies in an image stops the kernel with a bugcheck
//! naming the image RVA — and the function, when the image's .pdb lies beside it. Other faults go
//! to the handler that was installed before (Rust's stack-overflow report, or the default).

use std::sync::{Mutex, Once, OnceLock};

use crate::bugcheck::{codes, park_forever};
use crate::thread;

/// A mapped image as fault reports see it.
pub(crate) struct ImageRange {
    pub start: usize,
    pub end: usize,
    pub name: String,
    /// (RVA, length, function name), sorted by RVA.
    pub symbols: Vec<(u32, u32, String)>,
}

static IMAGES: Mutex<Vec<ImageRange>> = Mutex::new(Vec::new());
static PREVIOUS: OnceLock<[libc::sigaction; 3]> = OnceLock::new();
const SIGNALS: [i32; 3] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL];

pub(crate) fn register(image: ImageRange) {
    IMAGES.lock().unwrap_or_else(|e| e.into_inner()).push(image);
}

pub(crate) fn unregister(start: usize) {
    IMAGES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|i| i.start != start);
}

/// `image+0xRVA (function+0xOFF)` for an address inside a registered image.
pub(crate) fn describe(address: usize) -> Option<String> {
    let images = IMAGES.try_lock().ok()?;
    let image = images
        .iter()
        .find(|i| address >= i.start && address < i.end)?;
    let rva = (address - image.start) as u32;
    let function = image
        .symbols
        .iter()
        .rev()
        .find(|(start, len, _)| rva >= *start && rva < start + (*len).max(1))
        .map(|(start, _, name)| format!(" ({name}+{:#x})", rva - start))
        .unwrap_or_default();
    Some(format!("{}+{rva:#x}{function}", image.name))
}

/// Reads the procedures of a PDB: (RVA, length, name), sorted.
pub(crate) fn symbols_from_pdb(path: &std::path::Path) -> Vec<(u32, u32, String)> {
    fn read(path: &std::path::Path) -> Result<Vec<(u32, u32, String)>, pdb::Error> {
        let mut pdb = pdb::PDB::open(std::fs::File::open(path)?)?;
        let map = pdb.address_map()?;
        let dbi = pdb.debug_information()?;
        let mut modules = dbi.modules()?;
        let mut out = Vec::new();
        use pdb::FallibleIterator;
        while let Some(module) = modules.next()? {
            let Some(info) = pdb.module_info(&module)? else {
                continue;
            };
            let mut symbols = info.symbols()?;
            while let Some(symbol) = symbols.next()? {
                if let Ok(pdb::SymbolData::Procedure(p)) = symbol.parse() {
                    if let Some(rva) = p.offset.to_rva(&map) {
                        out.push((rva.0, p.len, p.name.to_string().into_owned()));
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
    read(path).unwrap_or_default()
}

extern "C" fn on_fault(signal: i32, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t and ucontext_t to an SA_SIGINFO handler.
    let (rip, address, write) = unsafe {
        let uc = &*(context as *const libc::ucontext_t);
        (
            uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize,
            (*info).si_addr() as usize,
            uc.uc_mcontext.gregs[libc::REG_ERR as usize] & 2 != 0,
        )
    };
    if let Some(state) = thread::try_state() {
        let at = describe(rip);
        let target = describe(address);
        if at.is_some() || target.is_some() {
            let code = if signal == libc::SIGILL {
                0xC000_001Du32
            } else {
                0xC000_0005
            };
            let what = if signal == libc::SIGILL {
                "illegal instruction".to_owned()
            } else {
                format!(
                    "access violation {} {address:#x}{}",
                    if write { "writing" } else { "reading" },
                    target.map(|t| format!(" ({t})")).unwrap_or_default()
                )
            };
            let record = crate::bugcheck::Bugcheck {
                code: codes::KMODE_EXCEPTION_NOT_HANDLED,
                parameters: [code as usize, rip, usize::from(write), address],
                message: format!("{what} at {}", at.unwrap_or_else(|| format!("{rip:#x}"))),
                thread: format!(
                    "{} ({})",
                    std::thread::current().name().unwrap_or("unnamed"),
                    state
                        .activity
                        .try_borrow()
                        .map(|a| a.clone())
                        .unwrap_or_default()
                ),
            };
            if std::env::var_os("KEMU_QUIET").is_none() {
                eprintln!("kemu kernel {}: {record}", state.kernel.id);
            }
            state.kernel.record_bugcheck(record);
            park_forever();
        }
    }
    // Not ours: restore the previous handler and let the instruction fault again into it.
    if let (Some(previous), Some(i)) = (PREVIOUS.get(), SIGNALS.iter().position(|&s| s == signal)) {
        // SAFETY: reinstalling the action that was in place before kemu's.
        unsafe { libc::sigaction(signal, &previous[i], std::ptr::null_mut()) };
    }
}

/// Installs the fault handler (once per process).
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: sigaction with a zeroed, then filled, action; the previous actions are kept.
        unsafe {
            let mut previous: [libc::sigaction; 3] = std::mem::zeroed();
            for (i, &signal) in SIGNALS.iter().enumerate() {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_fault as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, &mut previous[i]);
            }
            let _ = PREVIOUS.set(previous);
        }
    });
}
