//! fetch: a whole KMDF driver that, when it loads, fetches the HTTPS URL in its service's
//! `Parameters\Url` (REG_SZ) with ktls and logs the response line by line (DbgPrint), using
//! only ktls's front door. `Parameters\Insecure` (REG_DWORD 1) accepts any certificate.
//!
//! `cargo run -p ktls --example fetch -- https://127.0.0.1:PORT/ [--ca ca.pem | --insecure]`
//! runs it under kemu: the runner (`host` below) sets the parameters, trusts `--ca` as a machine
//! root, loads the driver, prints what it logs and unloads it (checking that nothing leaked).

mod driver {
    use alloc::vec::Vec;
    use core::net::IpAddr;

    use ksys::kmdf::{self, ControlDeviceConfig, DPFLTR_INFO_LEVEL, DriverEntryArgs};
    use ksys::ntdef::{NTSTATUS, STATUS_INVALID_PARAMETER};
    use ksys::utf16;
    use ktls::{ClientConfig, Observer, Received, Session, SpinLock, Tls, Verify};

    const DEVICE: ControlDeviceConfig = ControlDeviceConfig {
        name: utf16!("\\Device\\KtlsFetch"),
        symbolic_link: utf16!("\\DosDevices\\KtlsFetch"),
        sddl: utf16!("D:P(A;;GA;;;SY)(A;;GA;;;BA)"),
        file_callbacks: None,
    };

    /// The fetch in progress: dropped at unload, the session first, then the Tls (which waits
    /// until the connection has released everything).
    struct Fetch {
        session: Option<Session<Progress>>,
        line: Vec<u8>,
        tls: Tls,
    }

    static FETCH: SpinLock<Option<Fetch>> = SpinLock::new(None);

    /// The session's observer: every change moves the fetch on.
    struct Progress;
    impl Observer for Progress {
        fn changed(&self) {
            step();
        }
    }

    fn log(args: core::fmt::Arguments<'_>) {
        kmdf::debug_print_args(DPFLTR_INFO_LEVEL, format_args!("fetch: {args}"));
    }

    pub fn driver_entry(args: &DriverEntryArgs) -> Result<(), NTSTATUS> {
        let driver = kmdf::create_non_pnp_driver(args, unload)?;
        let device = kmdf::create_control_device(driver, &DEVICE)?;
        kmdf::finish_initializing(device);
        let key = kmdf::ParametersKey::open(driver)?;
        let mut url = [0u16; 256];
        let n = key.string(utf16!("Url"), &mut url)?;
        let url = char::decode_utf16(url[..n].iter().copied())
            .map(|c| c.unwrap_or('?'))
            .collect::<alloc::string::String>();
        let verify = match key.dword(utf16!("Insecure")) {
            Ok(1) => Verify::InsecureAcceptAnyCertificate,
            _ => Verify::SystemRoots,
        };
        // https://HOST[:PORT][/PATH]
        let rest = url
            .strip_prefix("https://")
            .ok_or(STATUS_INVALID_PARAMETER)?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => v6.split_once(']').ok_or(STATUS_INVALID_PARAMETER)?,
            None => authority.split_once(':').unwrap_or((authority, "")),
        };
        let port = port.trim_start_matches(':');
        let port = if port.is_empty() {
            Ok(443)
        } else {
            port.parse()
        };
        let port: u16 = port.map_err(|_| STATUS_INVALID_PARAMETER)?;

        // SAFETY: our own control device, deleted by the framework after `unload` has dropped
        // the Tls (which waits for everything it started).
        let tls = unsafe { Tls::new(kmdf::wdm_device_object(device)) }.map_err(|e| e.status())?;
        let config = ClientConfig::builder(verify).alpn(["http/1.1"]).build();
        let client = config.and_then(|c| tls.client(c)).map_err(|e| e.status())?;
        let session = match host.parse::<IpAddr>() {
            Ok(ip) => client.connect((ip, port).into(), host, Progress),
            Err(_) => client.connect_by_name(host, port, host, Progress),
        }
        .map_err(|e| e.status())?;
        let path = if path.is_empty() { "/" } else { path };
        let request = alloc::format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ktls-fetch\r\nConnection: close\r\n\r\n"
        );
        // Queued now, sent once the handshake is done. If the connection already failed (the
        // handshake runs on work items and may be over by now), `step` below reports why.
        let _ = session.send(request.as_bytes());
        log(format_args!("GET {url}"));
        *FETCH.lock() = Some(Fetch {
            session: Some(session),
            line: Vec::new(),
            tls,
        });
        // A change reported before the fetch was stored found nothing to move.
        step();
        Ok(())
    }

    /// Logs each complete line received; at the end of the response, says how it ended.
    fn step() {
        let mut guard = FETCH.lock();
        let Some(fetch) = guard.as_mut() else { return };
        let Some(session) = &fetch.session else {
            return;
        };
        let mut buf = [0u8; 512];
        let ended = loop {
            match session.recv(&mut buf) {
                Received::Data(n) => {
                    for &b in &buf[..n] {
                        if b == b'\n' || fetch.line.len() >= 200 {
                            let text = core::str::from_utf8(&fetch.line).unwrap_or("<not UTF-8>");
                            log(format_args!("| {}", text.trim_end_matches('\r')));
                            fetch.line.clear();
                        }
                        if b != b'\n' {
                            fetch.line.push(b);
                        }
                    }
                }
                Received::Pending => break None,
                Received::End => break Some(None),
                Received::Failed(error) => break Some(Some(error)),
            }
        };
        match ended {
            None => {}
            Some(None) => log(format_args!("done ({} bytes)", session.counters().received)),
            Some(Some(error)) => log(format_args!("failed: {error}")),
        }
        if ended.is_some() {
            // Dropped outside the lock (it signals its work item, which ends it).
            let session = fetch.session.take();
            drop(guard);
            drop(session);
        }
    }

    extern "win64" fn unload(_driver: ksys::wdf::types::WDFDRIVER) {
        let fetch = FETCH.lock().take();
        if let Some(Fetch { session, tls, .. }) = fetch {
            drop(session);
            tls.shutdown();
        }
    }
}

extern crate alloc;

ksys::kmdf_driver_entry!(driver::driver_entry);

/// The runner: kemu, the user-mode Windows kernel, loads the driver above.
fn main() -> std::process::ExitCode {
    host::run(std::env::args().skip(1).collect())
}

mod host {
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    use kemu::{Kernel, KernelConfig, NativeDriver};

    const SERVICE: &str = "ktlsfetch";
    const USAGE: &str = "usage: fetch https://HOST[:PORT]/[PATH] [--ca CA.pem | --insecure]";

    pub fn run(args: Vec<String>) -> ExitCode {
        match fetch(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(message) => {
                eprintln!("fetch: {message}");
                ExitCode::from(2)
            }
        }
    }

    fn fetch(args: &[String]) -> Result<bool, String> {
        let (mut url, mut ca, mut insecure) = (None, None, false);
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--ca" => ca = Some(it.next().ok_or(USAGE)?.clone()),
                "--insecure" => insecure = true,
                "-h" | "--help" => return Err(USAGE.into()),
                u if url.is_none() && u.starts_with("https://") => url = Some(u.to_owned()),
                other => return Err(format!("unexpected {other:?}\n{USAGE}")),
            }
        }
        let url = url.ok_or(USAGE)?;
        let kernel = Kernel::boot(KernelConfig::from_env());
        kernel.set_service_string(SERVICE, "Url", &url);
        if insecure {
            kernel.set_service_parameter(SERVICE, "Insecure", 1);
        }
        if let Some(ca) = ca {
            let pem = std::fs::read(&ca).map_err(|e| format!("{ca}: {e}"))?;
            kernel
                .cert_store()
                .add_root_pem(&pem)
                .map_err(|e| format!("{ca}: {e:?}"))?;
        }
        kernel
            .load(NativeDriver {
                service_name: SERVICE,
                entry: super::FxDriverEntry,
                imports: ksys::imports::IMPORT_DIRECTORY,
            })
            .map_err(|e| format!("the driver did not load: {e:?}"))?;
        // Print what the driver logs until it says how the fetch ended.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut printed, mut ok) = (0, None);
        while ok.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let lines = kernel.debug_log();
            for line in &lines[printed..] {
                // ksys's DbgPrint lines start with the service name.
                let text = line.text.strip_prefix(SERVICE).unwrap_or(&line.text);
                if let Some(text) = text.strip_prefix(": fetch: ") {
                    match text.strip_prefix("| ") {
                        Some(response) => println!("{response}"),
                        None => eprintln!("{text}"),
                    }
                    if text.starts_with("done") {
                        ok = Some(true);
                    } else if text.starts_with("failed") {
                        ok = Some(false);
                    }
                }
            }
            printed = lines.len();
        }
        if ok.is_none() {
            eprintln!("no answer within 30 s");
        }
        kernel.unload().map_err(|e| format!("unload: {e:?}"))?;
        kernel.shutdown().map_err(|e| format!("kernel: {e:?}"))?;
        Ok(ok == Some(true))
    }
}
