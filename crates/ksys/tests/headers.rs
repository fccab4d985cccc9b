//! Cross-checks ksys against an independent C view of the same ABI: clang (through bindgen)
//! parsing Debian's mingw-w64 headers for x86_64-w64-mingw32 (LLP64). Compared wherever both
//! declare the item:
//! - struct sizes and field offsets ([`ksys::layout::LAYOUTS`] vs bindgen's layout tests, whose
//!   numbers clang computed);
//! - constant values (ksys's tables vs the header macros, evaluated by clang as enumerators);
//! - import signatures (parameter count, and each parameter's and the result's size class).
//!
//! Needs libclang and mingw-w64-x86-64-dev. In CI (CI set) their absence is a failure; elsewhere
//! the test skips and says why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

const MINGW_INCLUDE: &str = "/usr/x86_64-w64-mingw32/include";

fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| !v.is_empty() && v != "false" && v != "0")
        .unwrap_or(false)
}

fn skip_or_fail(why: &str) {
    assert!(!in_ci(), "header cross-check cannot run in CI: {why}");
    eprintln!("SKIPPED header cross-check: {why}");
}

fn clang_resource_include() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
        .flat_map(|e| {
            std::fs::read_dir(e.path().join("lib/clang"))
                .into_iter()
                .flatten()
                .filter_map(|v| v.ok())
        })
        .map(|v| v.path().join("include"))
        .filter(|p| p.join("stddef.h").exists())
        .collect();
    found.sort();
    found.pop()
}

/// What clang says about one translation unit.
#[derive(Default, Debug)]
struct CView {
    sizes: BTreeMap<String, usize>,
    offsets: BTreeMap<(String, String), usize>,
    constants: BTreeMap<String, i128>,
    /// function → (parameter types, return type), as bindgen wrote them.
    functions: BTreeMap<String, (Vec<String>, String)>,
    aliases: BTreeMap<String, String>,
}

fn generate(prelude: &str, constant_names: &[&str], resource: &Path) -> Result<CView, String> {
    let mut header = String::from(prelude);
    for name in constant_names {
        header.push_str(&format!(
            "#ifdef {name}\nenum {{ ksysck_{name} = (long long)({name}) }};\n#endif\n"
        ));
    }
    let mut builder = bindgen::Builder::default()
        .header_contents("ksys_check.h", &header)
        .clang_arg("--target=x86_64-w64-mingw32")
        .clang_arg(format!("-isystem{}", resource.display()))
        .clang_arg(format!("-I{MINGW_INCLUDE}"))
        .clang_arg("-Wno-everything")
        // Target Windows 10: mingw-w64 defaults to XP and hides newer declarations.
        .clang_arg("-D_WIN32_WINNT=0x0A00")
        .clang_arg("-DWINVER=0x0A00")
        .clang_arg("-DNTDDI_VERSION=0x0A00000C")
        .layout_tests(true)
        .generate_comments(false)
        .allowlist_var("ksysck_.*")
        .allowlist_item("ksysck_.*");
    for layout in ksys::layout::LAYOUTS {
        builder = builder.allowlist_type(format!("^{}$", layout.c_tag));
    }
    for import in ksys::imports::IMPORT_DIRECTORY {
        builder = builder.allowlist_function(format!("^{}$", import.rust_name));
    }
    let code = builder
        .generate()
        .map_err(|e| format!("bindgen failed: {e}"))?
        .to_string();
    if let Ok(dir) = std::env::var("KSYS_DUMP_BINDINGS") {
        let name = if prelude.contains("wdm.h") {
            "kernel.rs"
        } else {
            "user.rs"
        };
        std::fs::write(Path::new(&dir).join(name), &code).map_err(|e| e.to_string())?;
    }

    let mut view = CView::default();
    let size = Regex::new(r#"\["Size of (\w+)"\]\s*\[[^\]]*?-\s*(\d+)usize\]"#).unwrap();
    for c in size.captures_iter(&code) {
        view.sizes.insert(c[1].to_string(), c[2].parse().unwrap());
    }
    let offset =
        Regex::new(r#"\["Offset of field: (\w+)::(\w+)"\]\s*\[[^\]]*?-\s*(\d+)usize\]"#).unwrap();
    for c in offset.captures_iter(&code) {
        view.offsets
            .insert((c[1].to_string(), c[2].to_string()), c[3].parse().unwrap());
    }
    let constant = Regex::new(r"pub const ksysck_(\w+)\s*:\s*[\w:]+\s*=\s*(-?\d+)\s*;").unwrap();
    for c in constant.captures_iter(&code) {
        view.constants
            .insert(c[1].to_string(), c[2].parse().unwrap());
    }
    let function = Regex::new(r"pub fn (\w+)\s*\(([^;]*?)\)\s*(->\s*([^;]+?))?\s*;").unwrap();
    for c in function.captures_iter(&code) {
        let params = split_top_level(&c[2])
            .into_iter()
            .map(|p| {
                p.split_once(':')
                    .map_or(p.clone(), |(_, t)| t.trim().to_string())
            })
            .collect();
        view.functions.insert(
            c[1].to_string(),
            (
                params,
                c.get(4)
                    .map_or("()".into(), |m| m.as_str().trim().to_string()),
            ),
        );
    }
    let alias = Regex::new(r"pub type (\w+)\s*=\s*([^;]+);").unwrap();
    for c in alias.captures_iter(&code) {
        view.aliases
            .insert(c[1].to_string(), c[2].trim().to_string());
    }
    Ok(view)
}

fn split_top_level(list: &str) -> Vec<String> {
    let (mut parts, mut depth, mut current) = (Vec::new(), 0i32, String::new());
    for ch in list.chars() {
        match ch {
            '(' | '<' | '[' => depth += 1,
            ')' | '>' | ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(current.trim().to_string());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    if !current.trim().is_empty() {
        parts.push(current.trim().to_string());
    }
    parts
}

/// Size class of a type as written: 0 for "no value", else bytes (pointers and fn pointers 8).
fn size_class(
    ty: &str,
    aliases: &BTreeMap<String, String>,
    sizes: &BTreeMap<String, usize>,
) -> Option<usize> {
    let t = ty
        .trim()
        .trim_start_matches("::std::os::raw::")
        .trim_start_matches("::core::ffi::");
    if t.starts_with('*')
        || t.starts_with("::std::option::Option<")
        || t.starts_with("Option<")
        || t.contains("fn(")
    {
        return Some(8);
    }
    let size = match t {
        "()" | "!" | "c_void" => 0,
        "u8" | "i8" | "c_char" | "c_uchar" | "c_schar" | "BOOLEAN" | "KIRQL" => 1,
        "u16" | "i16" | "c_short" | "c_ushort" => 2,
        "u32" | "i32" | "c_int" | "c_uint" | "c_long" | "c_ulong" | "NTSTATUS"
        | "SECURITY_STATUS" => 4,
        "u64" | "i64" | "usize" | "isize" | "c_longlong" | "c_ulonglong" | "TimeStamp"
        | "LARGE_INTEGER" => 8,
        // ksys's function-pointer aliases.
        "PIO_COMPLETION_ROUTINE"
        | "PIO_WORKITEM_ROUTINE"
        | "PKDEFERRED_ROUTINE"
        | "SspiAsyncNotifyCallback" => 8,
        other => {
            if let Some(target) = aliases.get(other) {
                return size_class(target, aliases, sizes);
            }
            return sizes.get(other).copied();
        }
    };
    Some(size)
}

struct Report {
    compared: usize,
    mismatches: Vec<String>,
}

fn compare(
    view: &CView,
    constant_groups: &[&[(&str, i128)]],
    report: &mut Report,
    seen_tags: &mut BTreeSet<String>,
) {
    for layout in ksys::layout::LAYOUTS {
        let Some(&c_size) = view.sizes.get(layout.c_tag) else {
            continue;
        };
        seen_tags.insert(layout.c_tag.to_string());
        report.compared += 1;
        if c_size != layout.size {
            report.mismatches.push(format!(
                "{}: size {} in ksys, {} in C ({})",
                layout.name, layout.size, c_size, layout.c_tag
            ));
        }
        for (field, offset) in layout.fields {
            if field.contains('.') {
                continue;
            }
            if let Some(&c_offset) = view
                .offsets
                .get(&(layout.c_tag.to_string(), field.to_string()))
            {
                report.compared += 1;
                if c_offset != *offset {
                    report.mismatches.push(format!(
                        "{}.{field}: offset {offset} in ksys, {c_offset} in C",
                        layout.name
                    ));
                }
            }
        }
    }
    for group in constant_groups {
        for (name, value) in group.iter() {
            if let Some(&c_value) = view.constants.get(*name) {
                report.compared += 1;
                // C evaluates 32-bit HRESULT/NTSTATUS macros as signed, flag masks as unsigned.
                let same = c_value == *value
                    || (c_value as u32 as i128 == *value)
                    || (*value as u32 as i32 as i128 == c_value);
                if !same {
                    report
                        .mismatches
                        .push(format!("{name}: {value:#x} in ksys, {c_value:#x} in C"));
                }
            }
        }
    }
    let ksys_aliases: BTreeMap<String, String> = BTreeMap::new();
    for import in ksys::imports::IMPORT_DIRECTORY {
        let Some((c_params, c_ret)) = view.functions.get(import.rust_name) else {
            continue;
        };
        report.compared += 1;
        if c_params.len() != import.params.len() {
            report.mismatches.push(format!(
                "{}: {} parameters in ksys, {} in C ({c_params:?})",
                import.rust_name,
                import.params.len(),
                c_params.len()
            ));
            continue;
        }
        let pairs = import
            .params
            .iter()
            .map(|p| p.to_string())
            .zip(c_params.iter().cloned())
            .chain([(import.ret.to_string(), c_ret.clone())]);
        for (i, (ours, theirs)) in pairs.enumerate() {
            let a = size_class(&ours, &ksys_aliases, &BTreeMap::new());
            let b = size_class(&theirs, &view.aliases, &view.sizes);
            if let (Some(a), Some(b)) = (a, b) {
                report.compared += 1;
                if a != b {
                    let what = if i == import.params.len() {
                        "result".to_string()
                    } else {
                        format!("parameter {}", i + 1)
                    };
                    report.mismatches.push(format!(
                        "{}: {what} is {ours} ({a} bytes) in ksys, {theirs} ({b} bytes) in C",
                        import.rust_name
                    ));
                }
            }
        }
    }
}

#[test]
fn ksys_agrees_with_the_mingw_w64_headers() {
    if !Path::new(MINGW_INCLUDE).join("sspi.h").exists() {
        return skip_or_fail("mingw-w64 headers missing (apt-get install mingw-w64-x86-64-dev)");
    }
    let Some(resource) = clang_resource_include() else {
        return skip_or_fail("no clang resource include directory (apt-get install libclang-dev)");
    };
    let user_prelude = "#define SECURITY_KERNEL\n#define SCHANNEL_USE_BLACKLISTS\n#include <winsock2.h>\n#include <ws2tcpip.h>\n\
                        #include <windows.h>\n#include <winternl.h>\n#include <sspi.h>\n#include <schannel.h>\n";
    let kernel_prelude = "#include <ntdef.h>\n#include <ddk/wdm.h>\n";
    let all_constants: Vec<&[(&str, i128)]> = ksys::constant_tables().to_vec();
    let statuses: Vec<(&str, i128)> = ksys::ntdef::STATUS_NAMES
        .iter()
        .map(|(n, v)| (*n, v.0 as i128))
        .collect();
    let user_names: Vec<&str> = all_constants
        .iter()
        .flat_map(|g| g.iter().map(|(n, _)| *n))
        .collect();
    let kernel_names: Vec<&str> = statuses.iter().map(|(n, _)| *n).collect();

    let user = match generate(user_prelude, &user_names, &resource) {
        Ok(v) => v,
        Err(e) if e.contains("libclang") || e.contains("clang") && !in_ci() => {
            return skip_or_fail(&e);
        }
        Err(e) => panic!("user-mode headers: {e}"),
    };
    let kernel = generate(kernel_prelude, &kernel_names, &resource)
        .unwrap_or_else(|e| panic!("kernel headers: {e}"));

    let mut report = Report {
        compared: 0,
        mismatches: Vec::new(),
    };
    let mut seen = BTreeSet::new();
    compare(&user, &all_constants, &mut report, &mut seen);
    compare(&kernel, &[&statuses], &mut report, &mut seen);

    let unseen: Vec<&str> = ksys::layout::LAYOUTS
        .iter()
        .map(|l| l.c_tag)
        .filter(|t| !seen.contains(*t))
        .collect();
    eprintln!(
        "compared {} facts; constants {} + {} found in headers; structs compared {}; not declared by mingw-w64: {}",
        report.compared,
        user.constants.len(),
        kernel.constants.len(),
        seen.len(),
        unseen.join(", ")
    );
    assert!(
        report.mismatches.is_empty(),
        "ksys disagrees with the headers:\n  {}",
        report.mismatches.join("\n  ")
    );
    // The comparison must have had something to compare: these are known to be in mingw-w64.
    for tag in [
        "_SecBuffer",
        "_SCH_CREDENTIALS",
        "_SCHANNEL_CERT_HASH_STORE",
        "_IRP",
        "_IO_STACK_LOCATION",
        "_MDL",
        "_DRIVER_OBJECT",
        "sockaddr_in6",
        "_SEC_APPLICATION_PROTOCOLS",
    ] {
        assert!(
            seen.contains(tag),
            "{tag} was not found in the headers: the cross-check did not really run"
        );
    }
    assert!(
        user.constants.len() >= 100,
        "only {} SSPI/Schannel/WSK constants evaluated",
        user.constants.len()
    );
    assert!(
        kernel.constants.len() >= 30,
        "only {} NTSTATUS constants evaluated",
        kernel.constants.len()
    );
    assert!(
        user.functions.len() >= 10,
        "only {} SSPI prototypes found",
        user.functions.len()
    );
}

/// The comparison itself must notice a disagreement (independent of libclang).
#[test]
fn comparison_reports_disagreements() {
    let mut view = CView::default();
    view.sizes.insert("_SecBuffer".into(), 24);
    view.offsets
        .insert(("_SecBuffer".into(), "pvBuffer".into()), 4);
    view.constants.insert("SEC_E_OK".into(), 1);
    view.constants.insert(
        "SEC_E_INVALID_HANDLE".into(),
        0x8009_0301_u32 as i32 as i128,
    );
    view.functions.insert(
        "IoFreeIrp".into(),
        (vec!["PIRP".into(), "ULONG".into()], "()".into()),
    );
    view.functions
        .insert("KeGetCurrentIrql".into(), (vec![], "ULONG".into()));
    view.aliases.insert("PIRP".into(), "*mut _IRP".into());
    view.aliases
        .insert("ULONG".into(), "::std::os::raw::c_ulong".into());
    let mut report = Report {
        compared: 0,
        mismatches: Vec::new(),
    };
    let groups = ksys::constant_tables();
    compare(&view, &groups, &mut report, &mut BTreeSet::new());
    let text = report.mismatches.join("\n");
    assert!(
        text.contains("SecBuffer: size 16 in ksys, 24 in C"),
        "{text}"
    );
    assert!(
        text.contains("SecBuffer.pvBuffer: offset 8 in ksys, 4 in C"),
        "{text}"
    );
    assert!(text.contains("SEC_E_OK"), "{text}");
    assert!(
        !text.contains("SEC_E_INVALID_HANDLE"),
        "a signed/unsigned spelling is not a mismatch: {text}"
    );
    assert!(
        text.contains("IoFreeIrp: 1 parameters in ksys, 2 in C"),
        "{text}"
    );
    assert!(
        text.contains("KeGetCurrentIrql: result is KIRQL (1 bytes) in ksys"),
        "{text}"
    );
    assert_eq!(report.mismatches.len(), 5, "{text}");
}
