//! The stamped INF agrees with the build: service and binary name, service type and start type,
//! KMDF version, DriverVer version; and nothing is left unstamped.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Sections → (key, value) lines, comments and quotes stripped, keys lower-cased.
fn parse(text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current = String::new();
    for raw in text.lines() {
        let line = raw.split(';').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_ascii_lowercase();
            sections.entry(current.clone()).or_default();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .map_or((line, ""), |(k, v)| (k.trim(), v.trim()));
        sections.entry(current.clone()).or_default().push((
            key.to_ascii_lowercase(),
            value.trim_matches('"').to_string(),
        ));
    }
    sections
}

fn value<'a>(
    sections: &'a BTreeMap<String, Vec<(String, String)>>,
    section: &str,
    key: &str,
) -> &'a str {
    sections
        .get(section)
        .and_then(|lines| lines.iter().find(|(k, _)| k == key))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("[{section}] {key} missing"))
}

#[test]
fn stamped_inf_agrees_with_the_build() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let infs: Vec<PathBuf> = ["debug", "release"]
        .iter()
        .map(|p| {
            root.join("target/x86_64-pc-windows-msvc")
                .join(p)
                .join("wsktls.inf")
        })
        .chain(Some(root.join("target/package/wsktls/wsktls.inf")))
        .filter(|p| p.exists())
        .collect();
    if infs.is_empty() {
        assert!(
            std::env::var("CI").is_err(),
            "no stamped wsktls.inf: CI must run `cargo xtask driver` first"
        );
        eprintln!("SKIPPED: no stamped INF yet (run `cargo xtask driver`)");
        return;
    }
    for path in infs {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains('$') || text.contains("$WINDOWS NT$"),
            "unstamped placeholder in {}",
            path.display()
        );
        assert!(
            !text.replace("$WINDOWS NT$", "").contains('$'),
            "unstamped placeholder in {}",
            path.display()
        );
        // What Microsoft's INF rules ask: ASCII (or UTF-16) text, no file deleted from the
        // driver store's DIRID 13, and no section that nothing references.
        assert!(text.is_ascii(), "{} is not ASCII", path.display());
        assert!(
            !text.to_ascii_lowercase().contains("delfiles"),
            "{}: DelFiles on DIRID 13",
            path.display()
        );
        let lower = text.to_ascii_lowercase();
        for line in lower.lines() {
            let Some(name) = line
                .trim()
                .strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
            else {
                continue;
            };
            let standard = [
                "version",
                "strings",
                "sourcedisksnames",
                "sourcedisksfiles",
                "destinationdirs",
            ];
            let install =
                name.starts_with("defaultinstall") || name.starts_with("defaultuninstall");
            if standard.contains(&name) || install {
                continue;
            }
            let referenced = lower
                .lines()
                .filter(|l| !l.trim_start().starts_with('['))
                .any(|l| l.split_once('=').is_some_and(|(_, v)| v.contains(name)));
            assert!(
                referenced,
                "{}: section [{name}] is not used",
                path.display()
            );
        }
        let inf = parse(&text);
        assert_eq!(value(&inf, "version", "signature"), "$WINDOWS NT$");
        assert_eq!(
            value(&inf, "defaultinstall.ntamd64.services", "addservice"),
            "wsktls,,wsktls.Service"
        );
        assert_eq!(
            value(&inf, "wsktls.service", "servicetype"),
            "1",
            "SERVICE_KERNEL_DRIVER"
        );
        assert_eq!(
            value(&inf, "wsktls.service", "starttype"),
            "3",
            "SERVICE_DEMAND_START"
        );
        assert_eq!(
            value(&inf, "wsktls.service", "servicebinary"),
            "%13%\\wsktls.sys"
        );
        assert_eq!(value(&inf, "sourcedisksfiles", "wsktls.sys"), "1,,");
        let kmdf = format!(
            "{}.{}",
            ksys::wdf::types::KMDF_VERSION_MAJOR,
            ksys::wdf::types::KMDF_VERSION_MINOR
        );
        assert_eq!(value(&inf, "wsktls.wdfsection", "kmdflibraryversion"), kmdf);
        let driver_ver = value(&inf, "version", "driverver");
        let (date, version) = driver_ver
            .split_once(',')
            .expect("DriverVer = date,version");
        assert_eq!(version, format!("{}.0", env!("CARGO_PKG_VERSION")));
        let parts: Vec<u32> = date
            .split('/')
            .map(|p| p.parse().expect("numeric date"))
            .collect();
        assert!(
            parts.len() == 3
                && (1..=12).contains(&parts[0])
                && (1..=31).contains(&parts[1])
                && parts[2] >= 2024,
            "{date}"
        );
    }
}
