//! The report: text for people, JSON for scripts.

use super::*;

pub(super) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The report as text: the first round's table, then every round's ratios and their medians.
pub fn report_text(rounds: &[Round], options: &BenchOptions) -> String {
    let Some(first) = rounds.first() else {
        return String::new();
    };
    let mut out = round_text(&first.drivers, &first.anchor, options);
    out += &format!(
        "host copies: {} (see docs/performance.md)\n",
        crate::host_copy::describe()
    );
    out += &format!("host threads: {}\n", crate::host_threads::describe());
    if rounds.len() < 2 {
        return out;
    }
    let cpu = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}×"));
    for (at, driver) in first.drivers.iter().enumerate() {
        out += &format!(
            "each round, {} / rustls: rate of handshakes, of bulk; CPU per unit of handshakes, of bulk\n",
            driver.subject
        );
        let all: Vec<Ratios> = rounds
            .iter()
            .map(|r| Ratios::of(&r.drivers[at].figures, &r.anchor))
            .collect();
        for (n, r) in all.iter().enumerate() {
            out += &format!(
                "  round {}: {:.2}×, {:.2}×; {}, {}\n",
                n + 1,
                r.handshakes,
                r.bulk,
                cpu(r.cpu_handshakes),
                cpu(r.cpu_bulk)
            );
        }
        let m = Ratios::median(&all);
        out += &format!(
            "median of {} rounds, {} / rustls: handshakes {:.2}×, bulk {:.2}×, echo p50 {:.2}× the time; CPU per unit: handshakes {}, bulk {}\n",
            rounds.len(),
            driver.subject,
            m.handshakes,
            m.bulk,
            m.echo_p50,
            cpu(m.cpu_handshakes),
            cpu(m.cpu_bulk),
        );
        if let (Some(h), Some(b)) = (m.switches_per_pair, m.switches_per_64k) {
            out += &format!(
                "median of {} rounds, {}: {h:.1} context switches per handshake pair, {b:.1} per 64 KiB of bulk\n",
                rounds.len(),
                driver.subject,
            );
        }
    }
    out
}

/// One driver subject against the rustls anchor of the same round.
#[derive(Clone, Copy, Debug, Default)]
struct Ratios {
    handshakes: f64,
    bulk: f64,
    /// Time, not rate: above 1 is slower.
    echo_p50: f64,
    /// rustls's CPU per unit over the driver's (None where not counted).
    cpu_handshakes: Option<f64>,
    cpu_bulk: Option<f64>,
    /// The driver's own, not a ratio: the context-switch goals are absolute.
    switches_per_pair: Option<f64>,
    switches_per_64k: Option<f64>,
}

impl Ratios {
    fn of(driver: &Figures, anchor: &Figures) -> Ratios {
        let cpu = |d: Option<Spent>, a: Option<Spent>| Some(ratio(a?.cpu_us, d?.cpu_us));
        Ratios {
            handshakes: ratio(driver.handshakes_per_second, anchor.handshakes_per_second),
            bulk: ratio(driver.bulk_mb_per_second, anchor.bulk_mb_per_second),
            echo_p50: ratio(driver.echo_p50_us, anchor.echo_p50_us),
            cpu_handshakes: cpu(driver.per_handshake, anchor.per_handshake),
            cpu_bulk: cpu(driver.per_64k, anchor.per_64k),
            switches_per_pair: driver.per_handshake.map(|s| s.switches),
            switches_per_64k: driver.per_64k.map(|s| s.switches),
        }
    }

    /// Each figure's median across rounds, on its own.
    fn median(all: &[Ratios]) -> Ratios {
        let of = |pick: &dyn Fn(&Ratios) -> Option<f64>| -> Option<f64> {
            let mut v: Vec<f64> = all.iter().filter_map(pick).collect();
            if v.is_empty() {
                return None;
            }
            v.sort_by(f64::total_cmp);
            let mid = v.len() / 2;
            Some(if v.len() % 2 == 1 {
                v[mid]
            } else {
                (v[mid - 1] + v[mid]) / 2.0
            })
        };
        Ratios {
            handshakes: of(&|r| Some(r.handshakes)).unwrap_or(0.0),
            bulk: of(&|r| Some(r.bulk)).unwrap_or(0.0),
            echo_p50: of(&|r| Some(r.echo_p50)).unwrap_or(0.0),
            cpu_handshakes: of(&|r| r.cpu_handshakes),
            cpu_bulk: of(&|r| r.cpu_bulk),
            switches_per_pair: of(&|r| r.switches_per_pair),
            switches_per_64k: of(&|r| r.switches_per_64k),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "handshakes": self.handshakes,
            "bulk": self.bulk,
            "echo_p50": self.echo_p50,
            "cpu_per_handshake_pair": self.cpu_handshakes,
            "cpu_per_64k_bulk": self.cpu_bulk,
            "context_switches_per_handshake_pair": self.switches_per_pair,
            "context_switches_per_64k_bulk": self.switches_per_64k,
        })
    }
}

/// One round as text: one table, the anchor last, ratios against it.
fn round_text(drivers: &[DriverFigures], anchor: &Figures, options: &BenchOptions) -> String {
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

/// The report as JSON (for scripts and CI dashboards): the first round's figures, as with one
/// round, plus `rounds` (each round's ratios) and `median_ratio_to_rustls` per subject.
pub fn report_json(rounds: &[Round], options: &BenchOptions) -> String {
    let Some(first) = rounds.first() else {
        return "{}".to_string();
    };
    let (drivers, anchor) = (&first.drivers, &first.anchor);
    let each_round: Vec<_> = rounds
        .iter()
        .map(|r| {
            r.drivers
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "subject": d.subject,
                        "ratio_to_rustls": Ratios::of(&d.figures, &r.anchor).json(),
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let medians: Vec<_> = drivers
        .iter()
        .enumerate()
        .map(|(at, d)| {
            let all: Vec<Ratios> = rounds
                .iter()
                .map(|r| Ratios::of(&r.drivers[at].figures, &r.anchor))
                .collect();
            serde_json::json!({
                "subject": d.subject,
                "median_ratio_to_rustls": Ratios::median(&all).json(),
            })
        })
        .collect();
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
        "host_copies": crate::host_copy::describe(),
        "host_threads": crate::host_threads::describe(),
        "rounds": each_round,
        "medians": medians,
    }))
    .expect("JSON of plain values")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratios(handshakes: f64, cpu: Option<f64>) -> Ratios {
        Ratios {
            handshakes,
            cpu_handshakes: cpu,
            ..Ratios::default()
        }
    }

    #[test]
    fn the_median_takes_each_figure_on_its_own_and_skips_the_uncounted() {
        let odd = Ratios::median(&[
            ratios(0.9, None),
            ratios(0.3, Some(0.5)),
            ratios(0.5, Some(0.7)),
        ]);
        assert_eq!(odd.handshakes, 0.5);
        // Of the two counted CPU figures: their mean.
        assert_eq!(odd.cpu_handshakes, Some(0.6));
        assert_eq!(odd.cpu_bulk, None);
        let even = Ratios::median(&[ratios(0.2, None), ratios(0.8, None)]);
        assert_eq!(even.handshakes, 0.5);
        assert_eq!(even.switches_per_pair, None);
    }
}
