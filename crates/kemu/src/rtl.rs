//! Rtl helpers, debug output (vDbgPrintEx into a per-kernel log the host reads) and
//! KeBugCheckEx.

use std::ffi::c_void;
use std::sync::Mutex;

use ksys::ntdef::{
    NTSTATUS, RTL_OSVERSIONINFOW, STATUS_INVALID_PARAMETER, STATUS_SUCCESS, UNICODE_STRING,
};

use crate::bugcheck::{bugcheck, codes};
use crate::thread::{self, DISPATCH};

/// One line of debugger output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// DPFLTR component id.
    pub component: u32,
    /// DPFLTR level (0 error, 1 warning, 2 trace, 3 info).
    pub level: u32,
    /// The formatted text, without its trailing newline.
    pub text: String,
}

/// Lines the debugger log keeps: the newest ones, as Windows' debug print buffer is a ring
/// (a long-running `serve` under kemu prints a line per connection and must not grow without
/// bound).
pub const LOG_LINES: usize = 65_536;

/// The debugger log of one kernel: the last [`LOG_LINES`] lines and how many went before them.
#[derive(Default)]
pub(crate) struct DebugLog {
    lines: Mutex<LogRing>,
}

#[derive(Default)]
struct LogRing {
    kept: std::collections::VecDeque<LogLine>,
    dropped: u64,
}

/// Whether KEMU_LOG asks for every line on stderr (read once: the environment lock is not
/// taken per line).
fn echo_to_stderr() -> bool {
    static ECHO: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ECHO.get_or_init(|| std::env::var_os("KEMU_LOG").is_some())
}

impl DebugLog {
    pub fn push(&self, line: LogLine) {
        if echo_to_stderr() {
            eprintln!("[kemu dbg {}:{}] {}", line.component, line.level, line.text);
        }
        let mut ring = self.lines.lock().unwrap();
        if ring.kept.len() >= LOG_LINES {
            ring.kept.pop_front();
            ring.dropped += 1;
        }
        ring.kept.push_back(line);
    }

    /// The kept lines, oldest first; when older ones were dropped, a kemu note saying how many
    /// comes first.
    pub fn lines(&self) -> Vec<LogLine> {
        let ring = self.lines.lock().unwrap();
        let mut out = Vec::with_capacity(ring.kept.len() + 1);
        if ring.dropped > 0 {
            out.push(LogLine {
                component: KEMU_COMPONENT,
                level: 1,
                text: format!(
                    "kemu: {} earlier line(s) dropped (the log keeps the last {LOG_LINES})",
                    ring.dropped
                ),
            });
        }
        out.extend(ring.kept.iter().cloned());
        out
    }
}

/// Component id of kemu's own notes in the debugger log.
pub const KEMU_COMPONENT: u32 = 0xFFFF;

/// Writes a kemu note (fault injected, strict choice taken) into the calling kernel's log.
pub(crate) fn note(text: &str) {
    thread::kernel().log.push(LogLine {
        component: KEMU_COMPONENT,
        level: 1,
        text: format!("kemu: {text}"),
    });
}

/// Reads a NUL-terminated byte string.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
unsafe fn c_str(p: *const u8, max: Option<usize>) -> String {
    if p.is_null() {
        return "(null)".into();
    }
    let mut bytes = Vec::new();
    let mut i = 0;
    // SAFETY: per the contract, reading stops at the NUL (or at `max` bytes).
    unsafe {
        while max.is_none_or(|m| i < m) && *p.add(i) != 0 {
            bytes.push(*p.add(i));
            i += 1;
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Reads a NUL-terminated UTF-16 string.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated UTF-16 string.
unsafe fn wide_str(p: *const u16, max: Option<usize>) -> String {
    if p.is_null() {
        return "(null)".into();
    }
    let mut units = Vec::new();
    let mut i = 0;
    // SAFETY: per the contract.
    unsafe {
        while max.is_none_or(|m| i < m) && *p.add(i) != 0 {
            units.push(*p.add(i));
            i += 1;
        }
    }
    String::from_utf16_lossy(&units)
}

/// Reads a UNICODE_STRING's text.
///
/// # Safety
/// `s` must be NULL or a valid UNICODE_STRING.
pub(crate) unsafe fn unicode_text(s: *const UNICODE_STRING) -> Option<String> {
    if s.is_null() {
        return None;
    }
    // SAFETY: per the contract.
    let s = unsafe { *s };
    if s.Buffer.is_null() || s.Length == 0 {
        return Some(String::new());
    }
    // SAFETY: a valid UNICODE_STRING has Length bytes at Buffer.
    let units = unsafe { std::slice::from_raw_parts(s.Buffer, s.Length as usize / 2) };
    Some(String::from_utf16_lossy(units))
}

/// Formats a printf-style format with a win64 va_list (one 8-byte slot per argument): the
/// conversions DbgPrint supports that drivers use (d i u x X o c s S Z p %, widths, `*`,
/// precision, h l ll I64 I32 z w).
///
/// # Safety
/// `format` is a NUL-terminated string whose conversions match the slots at `args`.
pub(crate) unsafe fn format_printf(format: *const u8, args: *const usize) -> String {
    // SAFETY: per the contract.
    let fmt = unsafe { c_str(format, None) }.into_bytes();
    let mut out = String::new();
    let mut next = 0usize;
    let mut arg = || {
        // SAFETY: per the contract there is a slot for each conversion.
        let v = unsafe { *args.add(next) };
        next += 1;
        v
    };
    let mut i = 0;
    while i < fmt.len() {
        let c = fmt[i];
        i += 1;
        if c != b'%' {
            out.push(c as char);
            continue;
        }
        let mut left = false;
        let mut zero = false;
        let mut plus = false;
        let mut alt = false;
        while i < fmt.len() && matches!(fmt[i], b'-' | b'0' | b'+' | b' ' | b'#') {
            match fmt[i] {
                b'-' => left = true,
                b'0' => zero = true,
                b'+' => plus = true,
                b'#' => alt = true,
                _ => {}
            }
            i += 1;
        }
        let mut width = 0usize;
        if i < fmt.len() && fmt[i] == b'*' {
            width = arg() as u32 as i32 as usize;
            i += 1;
        }
        while i < fmt.len() && fmt[i].is_ascii_digit() {
            width = width * 10 + (fmt[i] - b'0') as usize;
            i += 1;
        }
        let mut precision = None;
        if i < fmt.len() && fmt[i] == b'.' {
            i += 1;
            let mut p = 0usize;
            if i < fmt.len() && fmt[i] == b'*' {
                p = arg() as u32 as i32 as usize;
                i += 1;
            }
            while i < fmt.len() && fmt[i].is_ascii_digit() {
                p = p * 10 + (fmt[i] - b'0') as usize;
                i += 1;
            }
            precision = Some(p);
        }
        let mut wide64 = false;
        let mut wide_char = false;
        let mut short = false;
        loop {
            if fmt[i..].starts_with(b"I64") || fmt[i..].starts_with(b"ll") {
                wide64 = true;
                i += if fmt[i] == b'I' { 3 } else { 2 };
            } else if fmt[i..].starts_with(b"I32") {
                i += 3;
            } else if i < fmt.len() && matches!(fmt[i], b'z' | b'I') {
                wide64 = true;
                i += 1;
            } else if i < fmt.len() && matches!(fmt[i], b'l' | b'w') {
                wide_char = true;
                i += 1;
            } else if i < fmt.len() && fmt[i] == b'h' {
                short = true;
                i += 1;
            } else {
                break;
            }
        }
        let Some(&conv) = fmt.get(i) else { break };
        i += 1;
        let int = |v: usize| -> u64 {
            if wide64 {
                v as u64
            } else if short {
                v as u16 as u64
            } else {
                v as u32 as u64
            }
        };
        let text = match conv {
            b'%' => "%".to_owned(),
            b'd' | b'i' => {
                let v = arg();
                let n: i64 = if wide64 {
                    v as i64
                } else if short {
                    v as i16 as i64
                } else {
                    v as i32 as i64
                };
                if plus && n >= 0 {
                    format!("+{n}")
                } else {
                    n.to_string()
                }
            }
            b'u' => int(arg()).to_string(),
            b'x' => format!("{}{:x}", if alt { "0x" } else { "" }, int(arg())),
            b'X' => format!("{}{:X}", if alt { "0X" } else { "" }, int(arg())),
            b'o' => format!("{:o}", int(arg())),
            b'p' => format!("{:016X}", arg()),
            b'c' => char::from_u32(arg() as u32).unwrap_or('?').to_string(),
            b's' if wide_char => {
                // SAFETY: %ws/%ls takes a NUL-terminated UTF-16 string.
                unsafe { wide_str(arg() as *const u16, precision) }
            }
            b'S' => {
                // SAFETY: %S takes a NUL-terminated UTF-16 string.
                unsafe { wide_str(arg() as *const u16, precision) }
            }
            b's' => {
                // SAFETY: %s takes a byte string, NUL-terminated or bounded by the precision.
                unsafe { c_str(arg() as *const u8, precision) }
            }
            b'Z' => {
                let p = arg() as *const UNICODE_STRING;
                if wide_char {
                    // SAFETY: %wZ takes a PUNICODE_STRING.
                    unsafe { unicode_text(p) }.unwrap_or_else(|| "(null)".into())
                } else if p.is_null() {
                    "(null)".into()
                } else {
                    // SAFETY: %Z takes a PANSI_STRING (same header layout, byte buffer).
                    unsafe {
                        let s = *p;
                        c_str(s.Buffer as *const u8, Some(s.Length as usize))
                    }
                }
            }
            other => format!("%{}", other as char),
        };
        let pad = width.saturating_sub(text.chars().count());
        if left {
            out.push_str(&text);
            out.push_str(&" ".repeat(pad));
        } else if zero && matches!(conv, b'd' | b'i' | b'u' | b'x' | b'X' | b'o') {
            let (sign, digits) =
                text.split_at(usize::from(text.starts_with('-') || text.starts_with('+')));
            out.push_str(sign);
            out.push_str(&"0".repeat(pad));
            out.push_str(digits);
        } else {
            out.push_str(&" ".repeat(pad));
            out.push_str(&text);
        }
    }
    out
}

/// ntoskrnl!vDbgPrintEx.
pub(crate) unsafe extern "win64" fn v_dbg_print_ex(
    component: u32,
    level: u32,
    format: *const u8,
    args: *const usize,
) -> u32 {
    if format.is_null() {
        return 0;
    }
    // SAFETY: the driver's format and va_list.
    let text = unsafe { format_printf(format, args) };
    thread::kernel().log.push(LogLine {
        component,
        level,
        text: text.trim_end_matches('\n').to_owned(),
    });
    0
}

/// The Windows build kemu reports (Windows 11 23H2): kernel Schannel there offers TLS 1.3.
pub const WINDOWS_BUILD: u32 = 22631;

/// ntoskrnl!RtlGetVersion: Windows 10.0, build [`WINDOWS_BUILD`]. A size other than the
/// structure's (276) or the extended one's (284) is STATUS_INVALID_PARAMETER.
pub(crate) unsafe extern "win64" fn rtl_get_version(info: *mut RTL_OSVERSIONINFOW) -> NTSTATUS {
    thread::require_at_most("RtlGetVersion", thread::PASSIVE);
    if info.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: the caller's structure, whose size field it set.
    let size = unsafe { (*info).dwOSVersionInfoSize };
    if size != 276 && size != 284 {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: as above; only the basic fields are written.
    unsafe {
        (*info).dwMajorVersion = 10;
        (*info).dwMinorVersion = 0;
        (*info).dwBuildNumber = WINDOWS_BUILD;
        (*info).dwPlatformId = 2;
        (*info).szCSDVersion = [0; 128];
    }
    STATUS_SUCCESS
}

/// ntoskrnl!RtlInitUnicodeString.
pub(crate) unsafe extern "win64" fn rtl_init_unicode_string(
    destination: *mut UNICODE_STRING,
    source: *const u16,
) {
    thread::require_at_most("RtlInitUnicodeString", DISPATCH);
    let mut units = 0usize;
    if !source.is_null() {
        // SAFETY: a non-NULL source is NUL-terminated.
        unsafe {
            while *source.add(units) != 0 {
                units += 1;
            }
        }
    }
    if units * 2 > 0xFFFC {
        bugcheck(
            codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
            [0x300, source as usize, units, 0],
            "RtlInitUnicodeString: source longer than 32766 characters".into(),
        );
    }
    // SAFETY: the caller passes a writable UNICODE_STRING.
    unsafe {
        *destination = UNICODE_STRING {
            Length: (units * 2) as u16,
            MaximumLength: if source.is_null() {
                0
            } else {
                (units * 2 + 2) as u16
            },
            Buffer: source as *mut u16,
        };
    }
}

/// ntoskrnl!KeBugCheckEx: the driver stops the machine itself.
pub(crate) unsafe extern "win64" fn ke_bug_check_ex(
    code: u32,
    p1: usize,
    p2: usize,
    p3: usize,
    p4: usize,
) -> ! {
    let message = if code == codes::WSKTLS_PANIC && p1 != 0 && p2 < 4096 {
        // SAFETY: the driver's panic handler passes a file name pointer and its length.
        let file = unsafe {
            String::from_utf8_lossy(std::slice::from_raw_parts(p1 as *const u8, p2)).into_owned()
        };
        format!("driver panic at {file}:{p3}:{p4}")
    } else {
        "KeBugCheckEx called by the driver".to_owned()
    };
    bugcheck(code, [p1, p2, p3, p4], message)
}

/// Keeps `c_void` imported for signatures above.
#[allow(dead_code)]
fn _sig(_: *mut c_void) {}
