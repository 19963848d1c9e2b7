//! How a window of time is cut into parts that each read one source: the ledger for the partial
//! minutes at either end, then rollups of whole minutes, hours and (tenant-wide) days. Each part is
//! one index range scan, and none but the two ledger parts (at most a minute each) grows with a
//! tenant's traffic: a window costs about the same for a tenant writing 20,000 rows an hour as for
//! one writing twenty.
//!
//! Boundaries are whole multiples of a minute, hour or day since the Unix epoch — the UTC ones,
//! as the rollups' keys are (UTC has no leap seconds in Postgres or chrono).
//!
//! A window may be open at its end (`to = None`: "from then on"): the windows that end now are
//! read that way, so the current day, hour or minute is read whole from its rollup — it holds
//! every committed ledger row of that period, and no row lies in the future — instead of being
//! cut at an instant that has already passed when the statement runs.

use chrono::{DateTime, TimeDelta, Utc};

/// Where a part of a window is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i16)]
pub enum Source {
    /// `usage_events` itself
    Ledger = 0,
    /// tenant-wide rollups, by kind
    TenantMinutes = 1,
    TenantHours = 2,
    TenantDays = 3,
    /// rollups by user, API key, kind and model
    Minutes = 11,
    Hours = 12,
}

/// Which rollups a window may read: tenant-wide totals have days as well; sums that need a user,
/// key or model have minutes and hours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rollups {
    Tenant,
    Fine,
}

impl Rollups {
    fn levels(self) -> &'static [(Source, i64)] {
        const MINUTE: i64 = 60_000_000;
        const HOUR: i64 = 60 * MINUTE;
        const DAY: i64 = 24 * HOUR;
        match self {
            Rollups::Tenant => {
                &[(Source::TenantMinutes, MINUTE), (Source::TenantHours, HOUR), (Source::TenantDays, DAY)]
            }
            Rollups::Fine => &[(Source::Minutes, MINUTE), (Source::Hours, HOUR)],
        }
    }
}

/// One part of a window: `[from, to)` read from `source`; `to = None` is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub source: Source,
    pub from: DateTime<Utc>,
    pub to: Option<DateTime<Utc>>,
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn at(us: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + TimeDelta::microseconds(us)
}

fn floor(us: i64, step: i64) -> i64 {
    us.div_euclid(step) * step
}

fn ceil(us: i64, step: i64) -> i64 {
    let f = floor(us, step);
    if f == us { us } else { f + step }
}

/// Cuts `[from, to)` (`to = None`: open) into parts, from the earliest; empty parts are left out,
/// and an empty window has none. Going up from `from`, each coarser rollup takes over at its first
/// boundary, as long as that boundary leaves a whole period of it before `to`; coming down to
/// `to`, each finer one takes the rest.
pub fn cut(from: DateTime<Utc>, to: Option<DateTime<Utc>>, rollups: Rollups) -> Vec<Part> {
    let (f, t) = (micros(from), to.map(micros));
    if t.is_some_and(|t| t <= f) {
        return Vec::new();
    }
    let mut parts = Vec::new();
    let mut push = |source, a: i64, b: Option<i64>| {
        if b.is_none_or(|b| a < b) {
            parts.push(Part { source, from: at(a), to: b.map(at) });
        }
    };
    // up: the ledger to the first minute, minutes to the first hour, …
    let mut lo = f;
    let mut source = Source::Ledger;
    let mut reached = 0;
    for &(level, step) in rollups.levels() {
        let up = ceil(lo, step);
        // a coarser rollup only where it holds a whole period before `to`
        if t.is_some_and(|t| up >= floor(t, step)) {
            break;
        }
        push(source, lo, Some(up));
        lo = up;
        source = level;
        reached += 1;
    }
    let Some(t) = t else {
        push(source, lo, None);
        return parts;
    };
    // the coarsest level reached covers up to its last boundary before `to`; then down
    let levels = &rollups.levels()[..reached];
    let mut start = lo;
    for i in (0..=reached).rev() {
        let (src, end) = if i == 0 { (Source::Ledger, t) } else { (levels[i - 1].0, floor(t, levels[i - 1].1)) };
        push(src, start, Some(end));
        start = end;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn show(parts: &[Part]) -> Vec<String> {
        parts
            .iter()
            .map(|p| {
                format!(
                    "{:?} {}..{}",
                    p.source,
                    p.from.format("%dT%H:%M:%S%.f"),
                    p.to.map_or("".into(), |t| t.format("%dT%H:%M:%S%.f").to_string())
                )
            })
            .collect()
    }

    /// Every part lies on its source's boundaries, the parts follow each other without a gap or
    /// an overlap, and they cover exactly the window.
    fn check(from: DateTime<Utc>, to: Option<DateTime<Utc>>, rollups: Rollups) -> Vec<Part> {
        let parts = cut(from, to, rollups);
        if to.is_some_and(|to| to <= from) {
            assert!(parts.is_empty());
            return parts;
        }
        assert_eq!(parts.first().unwrap().from, from, "{:?}", show(&parts));
        assert_eq!(parts.last().unwrap().to, to, "{:?}", show(&parts));
        for w in parts.windows(2) {
            assert_eq!(w[0].to, Some(w[1].from), "{:?}", show(&parts));
        }
        for p in &parts {
            assert!(p.to.is_none_or(|to| p.from < to), "empty part {:?}", show(&parts));
            let step = rollups.levels().iter().find(|(s, _)| *s == p.source).map(|(_, step)| *step);
            if let Some(step) = step {
                assert_eq!(micros(p.from) % step, 0, "{:?}", show(&parts));
                if let Some(to) = p.to {
                    assert_eq!(micros(to) % step, 0, "{:?}", show(&parts));
                }
            } else {
                assert_eq!(p.source, Source::Ledger);
                // a ledger part never holds a whole minute: less than two minutes of rows
                let to = p.to.expect("a ledger part is closed");
                let (a, b) = (micros(p.from), micros(to));
                assert!(ceil(a, 60_000_000) >= floor(b, 60_000_000), "{:?}", show(&parts));
            }
        }
        parts
    }

    #[test]
    fn a_window_inside_hours_reads_minutes_and_the_ledger_only_at_its_ends() {
        let parts = check(t("2026-01-10T10:17:30.5Z"), Some(t("2026-01-12T08:41:10Z")), Rollups::Tenant);
        assert_eq!(
            show(&parts),
            [
                "Ledger 10T10:17:30.500..10T10:18:00",
                "TenantMinutes 10T10:18:00..10T11:00:00",
                "TenantHours 10T11:00:00..11T00:00:00",
                "TenantDays 11T00:00:00..12T00:00:00",
                "TenantHours 12T00:00:00..12T08:00:00",
                "TenantMinutes 12T08:00:00..12T08:41:00",
                "Ledger 12T08:41:00..12T08:41:10",
            ]
        );
        let fine = check(t("2026-01-10T10:17:30.5Z"), Some(t("2026-01-12T08:41:10Z")), Rollups::Fine);
        assert_eq!(fine[2].source, Source::Hours);
        assert_eq!(show(&fine[2..3]), ["Hours 10T11:00:00..12T08:00:00"]);
        assert_eq!(fine.len(), 5);
    }

    #[test]
    fn an_open_window_reads_the_current_periods_whole() {
        let parts = check(t("2026-01-10T10:17:30Z"), None, Rollups::Tenant);
        assert_eq!(
            show(&parts),
            [
                "Ledger 10T10:17:30..10T10:18:00",
                "TenantMinutes 10T10:18:00..10T11:00:00",
                "TenantHours 10T11:00:00..11T00:00:00",
                "TenantDays 11T00:00:00..",
            ]
        );
        let parts = check(t("2026-01-10T10:17:30Z"), None, Rollups::Fine);
        assert_eq!(show(&parts[2..]), ["Hours 10T11:00:00.."]);
        // on a boundary: no ledger part at all
        let parts = check(t("2026-01-10T00:00:00Z"), None, Rollups::Tenant);
        assert_eq!(show(&parts), ["TenantDays 10T00:00:00.."]);
    }

    #[test]
    fn short_and_aligned_windows() {
        let within_a_minute = check(t("2026-01-10T10:17:01Z"), Some(t("2026-01-10T10:17:59Z")), Rollups::Tenant);
        assert_eq!(show(&within_a_minute), ["Ledger 10T10:17:01..10T10:17:59"]);
        let across_a_minute = check(t("2026-01-10T10:17:59Z"), Some(t("2026-01-10T10:18:01Z")), Rollups::Tenant);
        assert_eq!(show(&across_a_minute), ["Ledger 10T10:17:59..10T10:18:01"]);
        let an_hour = check(t("2026-01-10T10:00:00Z"), Some(t("2026-01-10T11:00:00Z")), Rollups::Tenant);
        assert_eq!(show(&an_hour), ["TenantHours 10T10:00:00..10T11:00:00"]);
        let days = check(t("2026-01-01T00:00:00Z"), Some(t("2026-02-01T00:00:00Z")), Rollups::Tenant);
        assert_eq!(show(&days), ["TenantDays 01T00:00:00..01T00:00:00"]);
        let last_microsecond = check(t("2026-01-10T10:00:00Z"), Some(t("2026-01-10T11:00:00.000001Z")), Rollups::Fine);
        assert_eq!(
            show(&last_microsecond),
            ["Hours 10T10:00:00..10T11:00:00", "Ledger 10T11:00:00..10T11:00:00.000001"]
        );
        assert!(cut(t("2026-01-10T10:00:00Z"), Some(t("2026-01-10T10:00:00Z")), Rollups::Tenant).is_empty());
    }

    #[test]
    fn every_window_is_tiled_exactly() {
        // a deterministic spread of edges: on and off every boundary, before and after the epoch
        let base = micros(t("2026-03-01T00:00:00Z"));
        let offsets = [
            0,
            1,
            59_999_999,
            60_000_000,
            61_000_000,
            3_599_999_999,
            3_600_000_000,
            3_660_000_001,
            86_399_999_999,
            86_400_000_000,
            90_061_000_001,
            7 * 86_400_000_000 + 1_234_567,
        ];
        for &a in &offsets {
            for &b in &offsets {
                for rollups in [Rollups::Tenant, Rollups::Fine] {
                    check(at(base + a), Some(at(base + b)), rollups);
                    check(at(-base + a), Some(at(-base + b + 1)), rollups);
                    check(at(base + a), None, rollups);
                }
            }
        }
    }
}
