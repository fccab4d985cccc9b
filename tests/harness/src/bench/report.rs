//! The report: text for people, JSON for scripts.

use super::*;

pub(super) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The report as text: one table, the anchor last, ratios against it.
pub fn report_text(drivers: &[DriverFigures], anchor: &Figures, options: &BenchOptions) -> String {
    let mut out = format!(
        "wsktls bench — {} parallel clients, {:.1} s per phase\n",
        options.connections, options.seconds
    );
    out += &format!(
        "{:<44} {:>12} {:>10} {:>12} {:>12} {:>14}\n",
        "subject", "handshakes/s", "bulk MB/s", "echo p50 µs", "echo p99 µs", "pool/conn KiB"
    );
    for d in drivers {
        out += &format!(
            "{:<44} {:>12.0} {:>10.0} {:>12.0} {:>12.0} {:>14.1}\n",
            d.subject,
            d.figures.handshakes_per_second,
            d.figures.bulk_mb_per_second,
            d.figures.echo_p50_us,
            d.figures.echo_p99_us,
            d.pool_per_connection / 1024.0
        );
    }
    out += &format!(
        "{:<44} {:>12.0} {:>10.0} {:>12.0} {:>12.0} {:>14}\n",
        "plain rustls over loopback TCP",
        anchor.handshakes_per_second,
        anchor.bulk_mb_per_second,
        anchor.echo_p50_us,
        anchor.echo_p99_us,
        "-"
    );
    for d in drivers {
        out += &format!(
            "ratio {} / rustls: handshakes {:.2}×, bulk {:.2}×, echo p50 {:.2}× the time\n",
            d.subject,
            ratio(
                d.figures.handshakes_per_second,
                anchor.handshakes_per_second
            ),
            ratio(d.figures.bulk_mb_per_second, anchor.bulk_mb_per_second),
            ratio(d.figures.echo_p50_us, anchor.echo_p50_us),
        );
    }
    let spent = |f: &Figures| match (f.per_handshake, f.per_64k) {
        (Some(h), Some(b)) => Some(format!(
            "{:.1} context switches and {:.0} µs CPU per handshake pair, {:.1} and {:.0} µs per 64 KiB of bulk",
            h.switches, h.cpu_us, b.switches, b.cpu_us
        )),
        _ => None,
    };
    for (subject, figures) in drivers
        .iter()
        .map(|d| (d.subject.as_str(), &d.figures))
        .chain([("plain rustls", anchor)])
    {
        if let Some(text) = spent(figures) {
            out += &format!("spent, {subject}: {text}\n");
        }
    }
    for d in drivers {
        if let (Some(h), Some(b), Some(ah), Some(ab)) = (
            d.figures.per_handshake,
            d.figures.per_64k,
            anchor.per_handshake,
            anchor.per_64k,
        ) {
            out += &format!(
                "CPU per unit, rustls / {}: handshakes {:.2}×, bulk {:.2}× (the rate ratio if both kept the same CPUs busy)\n",
                d.subject,
                ratio(ah.cpu_us, h.cpu_us),
                ratio(ab.cpu_us, b.cpu_us),
            );
        }
    }
    for d in drivers {
        if let Some((p50, p99)) = d.echo_with_idle {
            out += &format!(
                "echo beside {} idle connections, {}: p50 {p50:.0} µs, p99 {p99:.0} µs ({:.2}× the p50 with none)\n",
                options.idle,
                d.subject,
                ratio(p50, d.figures.echo_p50_us),
            );
        }
    }
    if let [image, native] = drivers {
        out += &format!(
            "ratio image / native: handshakes {:.2}×, bulk {:.2}×, echo p50 {:.2}× the time\n",
            ratio(
                image.figures.handshakes_per_second,
                native.figures.handshakes_per_second
            ),
            ratio(
                image.figures.bulk_mb_per_second,
                native.figures.bulk_mb_per_second
            ),
            ratio(image.figures.echo_p50_us, native.figures.echo_p50_us),
        );
    }
    out += &format!(
        "negotiated: driver {}; rustls {}\n",
        drivers
            .first()
            .map(|d| d.figures.negotiated.as_str())
            .unwrap_or("-"),
        anchor.negotiated
    );
    out
}

pub(super) fn figures_json(f: &Figures) -> serde_json::Value {
    serde_json::json!({
        "handshakes_per_second": f.handshakes_per_second,
        "bulk_mb_per_second": f.bulk_mb_per_second,
        "echo_p50_us": f.echo_p50_us,
        "echo_p99_us": f.echo_p99_us,
        "negotiated": f.negotiated,
        "context_switches_per_handshake_pair": f.per_handshake.map(|p| p.switches),
        "context_switches_per_64k_bulk": f.per_64k.map(|p| p.switches),
        "cpu_us_per_handshake_pair": f.per_handshake.map(|p| p.cpu_us),
        "cpu_us_per_64k_bulk": f.per_64k.map(|p| p.cpu_us),
    })
}

/// The report as JSON (for scripts and CI dashboards).
pub fn report_json(drivers: &[DriverFigures], anchor: &Figures, options: &BenchOptions) -> String {
    let drivers: Vec<_> = drivers
        .iter()
        .map(|d| {
            serde_json::json!({
                "subject": d.subject,
                "figures": figures_json(&d.figures),
                "pool_bytes_per_idle_connection": d.pool_per_connection,
                "echo_with_idle": d.echo_with_idle.map(|(p50, p99)| serde_json::json!({
                    "idle_connections": options.idle,
                    "echo_p50_us": p50,
                    "echo_p99_us": p99,
                    "p50_ratio_to_none": ratio(p50, d.figures.echo_p50_us),
                })),
                "ratio_to_rustls": {
                    "handshakes": ratio(d.figures.handshakes_per_second, anchor.handshakes_per_second),
                    "bulk": ratio(d.figures.bulk_mb_per_second, anchor.bulk_mb_per_second),
                    "echo_p50": ratio(d.figures.echo_p50_us, anchor.echo_p50_us),
                },
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "connections": options.connections,
        "seconds_per_phase": options.seconds,
        "drivers": drivers,
        "rustls": figures_json(anchor),
    }))
    .expect("JSON of plain values")
}
