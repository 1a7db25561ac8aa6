//! Automatic snapshots, as LXD's `snapshots.*` instance keys:
//!
//! - `snapshots.schedule`: a 5-field cron expression, an alias (`@hourly`, `@daily`,
//!   `@midnight`, `@weekly`, `@monthly`, `@annually`, `@yearly`, `@startup`, `@never`), or a list
//!   of them separated by `", "` (a bare comma is a list inside one cron field). Times are the
//!   host's local time, as LXD's. The aliases other than `@startup` and `@never` run at a minute
//!   (and hour) spread over instances by a stable hash, as LXD spreads them, so that `@daily` on
//!   many instances does not snapshot them all at midnight.
//! - `snapshots.schedule.stopped`: whether stopped instances are snapshotted too.
//! - `snapshots.pattern`: the name of automatic (and unnamed) snapshots: a pongo2 template with
//!   `{{ creation_date|date:'<Go layout>' }}`, and `%d` for one past the highest number already
//!   used by names of that form (LXD's rule), `snap%d` by default.
//! - `snapshots.expiry`: `1M 2H 3d 4w 5m 6y` (minutes, hours, days, weeks, months, years): when
//!   automatic snapshots, and manual ones created without an explicit expiry, are deleted.
//!
//! [`spawn`] starts the scheduler: a task that wakes on every minute, takes the snapshots due
//! (through [`Instances::create_snapshot`], so a running instance is frozen while copied) and
//! deletes every instance snapshot whose `expires_at` has passed, whatever made it; and that
//! takes the `@startup` snapshots when an instance starts. The decisions are pure functions
//! ([`Schedule::is_due`], [`is_due`], [`expired`], [`snapshot_name`], [`Expiry::after`]); one run
//! is [`run_at`].
//!
//! Tests only: with `CORRAL_SNAPSHOT_TICK_SECS=N` in the daemon's environment the scheduler wakes
//! every N seconds instead, and each wake stands for the next minute of a clock that starts at
//! the current minute: schedules are matched, and automatic expiries computed and checked,
//! against that fast clock, so a test sees a minute's schedule and expiry in seconds.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, FixedOffset, Local, NaiveDate, NaiveDateTime, Timelike, Utc};

use crate::events::{Events, Lifecycle};
use crate::instances::{Instances, Result, ServiceError, DEFAULT_PROJECT};
use crate::snapshots::SnapshotRecord;

/// The environment variable that makes the scheduler tick fast (tests only).
pub const TICK_ENV: &str = "CORRAL_SNAPSHOT_TICK_SECS";

/// The pattern of automatic snapshots when `snapshots.pattern` is unset.
pub const DEFAULT_PATTERN: &str = "snap%d";

// ---------------------------------------------------------------------------------------------
// Cron expressions

/// One cron field: its name in messages, its range, and the names it accepts (the value of
/// `names[i]` is `min + i`).
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
/// 0 to 7: both 0 and 7 are Sunday.
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

const CRON_FORM: &str = "<minute> <hour> <day-of-month> <month> <day-of-week>";

/// A parsed 5-field cron expression: each field as the set of values it allows (bit `n` for
/// value `n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minute: u64,
    hour: u64,
    day_of_month: u64,
    month: u64,
    /// Sunday is bit 0 (a 7 is folded into it).
    day_of_week: u64,
    /// Whether the day fields start with `*` (or `?`): as in Vixie cron, a day matches when
    /// both day fields match if either is unrestricted, and when either matches if both are
    /// restricted (`0 0 1 * 1`: the 1st of the month and every Monday).
    day_of_month_star: bool,
    day_of_week_star: bool,
}

impl Cron {
    /// Parses `<minute> <hour> <day-of-month> <month> <day-of-week>`: each field `*`, a value, a
    /// range `a-b`, a step `*/n`, `a-b/n` or `a/n` (from a to the end), or a comma-separated list
    /// of those; months and days of the week also by name (`jan`, `mon-fri`).
    pub fn parse(spec: &str) -> std::result::Result<Cron, String> {
        let fields: Vec<&str> = spec.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "{spec:?} has {} field{}; a schedule is {CRON_FORM}, an alias such as @daily, or a list of them separated by \", \"",
                fields.len(),
                if fields.len() == 1 { "" } else { "s" }
            ));
        }
        let star = |f: &str| f.starts_with('*') || f.starts_with('?');
        let mut day_of_week = parse_field(fields[4], &DAY_OF_WEEK)?;
        if day_of_week & (1 << 7) != 0 {
            day_of_week = (day_of_week & !(1 << 7)) | 1;
        }
        Ok(Cron {
            minute: parse_field(fields[0], &MINUTE)?,
            hour: parse_field(fields[1], &HOUR)?,
            day_of_month: parse_field(fields[2], &DAY_OF_MONTH)?,
            month: parse_field(fields[3], &MONTH)?,
            day_of_week,
            day_of_month_star: star(fields[2]),
            day_of_week_star: star(fields[4]),
        })
    }

    /// Whether the minute of `t` (a local wall-clock time) is one the expression names.
    pub fn matches(&self, t: NaiveDateTime) -> bool {
        let has = |set: u64, v: u32| set & (1 << v) != 0;
        let dom = has(self.day_of_month, t.day());
        let dow = has(self.day_of_week, t.weekday().num_days_from_sunday());
        let day = if self.day_of_month_star || self.day_of_week_star {
            dom && dow
        } else {
            dom || dow
        };
        day && has(self.minute, t.minute()) && has(self.hour, t.hour()) && has(self.month, t.month())
    }
}

/// One field of a cron expression as a bit set.
fn parse_field(field: &str, spec: &FieldSpec) -> std::result::Result<u64, String> {
    let bad = |why: String| format!("{} field {field:?}: {why}", spec.name);
    let mut set = 0u64;
    for item in field.split(',') {
        if item.is_empty() {
            return Err(bad("an empty item in the list".into()));
        }
        let (range, step) = match item.split_once('/') {
            None => (item, None),
            Some((r, s)) => {
                let step: u32 = match s.parse() {
                    Ok(n) if s.bytes().all(|b| b.is_ascii_digit()) => n,
                    _ => return Err(bad(format!("step {s:?} is not a number"))),
                };
                if step == 0 {
                    return Err(bad("a step must be at least 1".into()));
                }
                (r, Some(step))
            }
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (spec.min, spec.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (field_value(a, spec).map_err(bad)?, field_value(b, spec).map_err(bad)?);
            if a > b {
                return Err(bad(format!("the range {range} runs backwards")));
            }
            (a, b)
        } else {
            let v = field_value(range, spec).map_err(bad)?;
            // `a/n`: from a to the end of the range.
            (v, if step.is_some() { spec.max } else { v })
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            set |= 1 << v;
            v += step;
        }
    }
    Ok(set)
}

/// A number or name in a cron field, checked against the field's range.
fn field_value(s: &str, spec: &FieldSpec) -> std::result::Result<u32, String> {
    if let Some(i) = spec.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(spec.min + i as u32);
    }
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        let names = if spec.names.is_empty() {
            String::new()
        } else {
            format!(" or a name ({}-{})", spec.names[0], spec.names[spec.names.len() - 1])
        };
        return Err(format!(
            "{s:?} is not a number{names} (use values {}-{}, ranges a-b, steps */n, lists a,b)",
            spec.min, spec.max
        ));
    }
    match s.parse::<u32>() {
        Ok(v) if (spec.min..=spec.max).contains(&v) => Ok(v),
        _ => Err(format!("{s} is out of range {}-{}", spec.min, spec.max)),
    }
}

// ---------------------------------------------------------------------------------------------
// Schedules

/// The aliases of `snapshots.schedule` that stand for a cron expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alias {
    Hourly,
    Daily,
    Midnight,
    Weekly,
    Monthly,
    Yearly,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Trigger {
    Cron(Cron),
    Alias(Alias),
    Startup,
}

/// A parsed `snapshots.schedule`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schedule {
    triggers: Vec<Trigger>,
}

const ALIASES: &str = "@hourly, @daily, @midnight, @weekly, @monthly, @annually, @yearly, @startup, @never";

impl Schedule {
    /// Parses a schedule: `""` (none), a cron expression, an alias, or a list of them separated
    /// by `", "`. Case does not matter (LXD lowercases it).
    pub fn parse(value: &str) -> std::result::Result<Schedule, String> {
        let value = value.trim().to_ascii_lowercase();
        let mut triggers = Vec::new();
        if value.is_empty() {
            return Ok(Schedule { triggers });
        }
        for part in value.split(", ").map(str::trim) {
            if part.is_empty() {
                return Err("an empty schedule in the list (schedules are separated by \", \")".into());
            }
            let trigger = match part {
                "@hourly" => Trigger::Alias(Alias::Hourly),
                "@daily" => Trigger::Alias(Alias::Daily),
                "@midnight" => Trigger::Alias(Alias::Midnight),
                "@weekly" => Trigger::Alias(Alias::Weekly),
                "@monthly" => Trigger::Alias(Alias::Monthly),
                "@annually" | "@yearly" => Trigger::Alias(Alias::Yearly),
                "@startup" => Trigger::Startup,
                "@never" => continue,
                alias if alias.starts_with('@') => {
                    return Err(format!("unknown alias {alias:?} (use {ALIASES})"));
                }
                cron => Trigger::Cron(Cron::parse(cron)?),
            };
            triggers.push(trigger);
        }
        Ok(Schedule { triggers })
    }

    /// Whether a snapshot of `subject` (what spreads the aliases' minute and hour: the
    /// instance's `volatile.uuid`, or its name) is due in the minute of local time `at`.
    pub fn is_due(&self, subject: &str, at: NaiveDateTime) -> bool {
        self.triggers.iter().any(|t| match t {
            Trigger::Cron(c) => c.matches(at),
            Trigger::Alias(a) => alias_cron(*a, subject).matches(at),
            Trigger::Startup => false,
        })
    }

    /// Whether the instance is snapshotted when it starts (`@startup`).
    pub fn on_startup(&self) -> bool {
        self.triggers.contains(&Trigger::Startup)
    }
}

/// The cron expression an alias stands for, at the minute and hour [`spread`] picks for
/// `subject` (LXD: `%s * * * *`, `%s %s * * *`, `%s 0 * * *`, `%s %s * * 0`, `%s %s 1 * *`,
/// `%s %s 1 1 *`).
fn alias_cron(alias: Alias, subject: &str) -> Cron {
    let (minute, hour) = spread(subject);
    let spec = match alias {
        Alias::Hourly => format!("{minute} * * * *"),
        Alias::Daily => format!("{minute} {hour} * * *"),
        Alias::Midnight => format!("{minute} 0 * * *"),
        Alias::Weekly => format!("{minute} {hour} * * 0"),
        Alias::Monthly => format!("{minute} {hour} 1 * *"),
        Alias::Yearly => format!("{minute} {hour} 1 1 *"),
    };
    Cron::parse(&spec).expect("the aliases are valid cron expressions")
}

/// A minute (0-59) and an hour (0-23) that depend only on `subject` (FNV-1a, stable across
/// restarts and builds).
fn spread(subject: &str) -> (u64, u64) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in subject.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % 60, (h / 60) % 24)
}

/// What spreads an instance's aliases: its `volatile.uuid` (kept across renames), else its name.
fn subject<'a>(name: &'a str, config: &'a BTreeMap<String, String>) -> &'a str {
    config
        .get("volatile.uuid")
        .map(String::as_str)
        .filter(|u| !u.is_empty())
        .unwrap_or(name)
}

/// Whether an instance with expanded `config` is due for an automatic snapshot in the minute of
/// local time `at`: it has a schedule that names that minute, and it runs or
/// `snapshots.schedule.stopped` is true. An invalid schedule is never due.
pub fn is_due(name: &str, config: &BTreeMap<String, String>, running: bool, at: NaiveDateTime) -> bool {
    let Some(spec) = config.get("snapshots.schedule").filter(|s| !s.trim().is_empty()) else {
        return false;
    };
    if !running && !crate::config::flag(config, "snapshots.schedule.stopped") {
        return false;
    }
    Schedule::parse(spec).is_ok_and(|s| s.is_due(subject(name, config), at))
}

/// Whether an instance with expanded `config` is snapshotted when it starts.
pub fn snapshots_on_startup(config: &BTreeMap<String, String>) -> bool {
    config
        .get("snapshots.schedule")
        .and_then(|s| Schedule::parse(s).ok())
        .is_some_and(|s| s.on_startup())
}

/// The snapshots (instance, snapshot) whose `expires_at` is at or before `now`.
pub fn expired(snapshots: &BTreeMap<String, Vec<SnapshotRecord>>, now: DateTime<Utc>) -> Vec<(String, String)> {
    snapshots
        .values()
        .flatten()
        .filter(|s| s.expires_at.is_some_and(|e| e <= now))
        .map(|s| (s.instance.clone(), s.name.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Expiry

/// A parsed `snapshots.expiry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expiry {
    pub minutes: i64,
    pub hours: i64,
    pub days: i64,
    pub weeks: i64,
    pub months: i64,
    pub years: i64,
}

const EXPIRY_FORM: &str =
    "a number and a unit: M (minutes), H (hours), d (days), w (weeks), m (months), y (years), as in \"1M 2H 3d 4w\"";

impl Expiry {
    /// Parses `1M 2H 3d 4w 5m 6y` (any subset, any order, each unit once). `None` for `""`.
    pub fn parse(value: &str) -> std::result::Result<Option<Expiry>, String> {
        let mut e = Expiry::default();
        let mut seen = String::new();
        for part in value.split_whitespace() {
            let unit = part.chars().last().unwrap_or_default();
            let num = &part[..part.len() - unit.len_utf8()];
            if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{part:?} is not {EXPIRY_FORM}"));
            }
            let n: i64 = num
                .parse()
                .ok()
                .filter(|n| *n <= 1_000_000)
                .ok_or_else(|| format!("{part:?} is too large"))?;
            let slot = match unit {
                'M' => &mut e.minutes,
                'H' => &mut e.hours,
                'd' => &mut e.days,
                'w' => &mut e.weeks,
                'm' => &mut e.months,
                'y' => &mut e.years,
                _ => return Err(format!("{part:?} has an unknown unit {unit:?}: {EXPIRY_FORM}")),
            };
            if seen.contains(unit) {
                return Err(format!("the unit {unit:?} appears more than once"));
            }
            seen.push(unit);
            *slot = n;
        }
        if seen.is_empty() {
            return Ok(None);
        }
        // Refuse what no date can hold.
        let reference = DateTime::from_timestamp(0, 0).expect("the epoch");
        if e.after(reference).is_none() {
            return Err("the expiry is too far in the future".into());
        }
        Ok(Some(e))
    }

    /// `from` plus this expiry, as Go's `AddDate(years, months, days + 7*weeks)` and then the
    /// hours and minutes (as LXD computes it: a month after January 31 is March 2 or 3).
    pub fn after(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let naive = from.naive_utc();
        let months = i64::from(naive.year()) * 12 + i64::from(naive.month0()) + self.years * 12 + self.months;
        let year = i32::try_from(months.div_euclid(12)).ok()?;
        let first = NaiveDate::from_ymd_opt(year, months.rem_euclid(12) as u32 + 1, 1)?;
        let days = i64::from(naive.day()) - 1 + self.days + self.weeks * 7;
        let date = first.checked_add_signed(chrono::TimeDelta::try_days(days)?)?;
        let shifted = date.and_time(naive.time()).and_utc();
        let rest =
            chrono::TimeDelta::try_hours(self.hours)?.checked_add(&chrono::TimeDelta::try_minutes(self.minutes)?)?;
        shifted.checked_add_signed(rest)
    }
}

/// When a snapshot made at `from` expires under the expanded `config`: `None` without
/// `snapshots.expiry` (or with an invalid one).
pub fn expiry_from(config: &BTreeMap<String, String>, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let value = config.get("snapshots.expiry")?;
    Expiry::parse(value).ok().flatten().and_then(|e| e.after(from))
}

// ---------------------------------------------------------------------------------------------
// Patterns

/// Renders the template part of a pattern: every `{{ creation_date|date:'<Go layout>' }}` (or
/// `"<layout>"`), and `{{ creation_date }}` (Go's default time format). `%d` is left as is.
pub fn render_pattern(pattern: &str, created: &DateTime<FixedOffset>) -> std::result::Result<String, String> {
    if pattern.contains("{%") {
        return Err("template tags ({% ... %}) are not supported; use {{ creation_date|date:'2006-01-02' }}".into());
    }
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("an unclosed {{{{ in {pattern:?}"))?;
        out.push_str(&render_expression(after[..end].trim(), created)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One `{{ ... }}` of a pattern.
fn render_expression(expr: &str, created: &DateTime<FixedOffset>) -> std::result::Result<String, String> {
    let unsupported = || {
        format!(
            "unsupported template expression {{{{ {expr} }}}}: use {{{{ creation_date|date:'2006-01-02_15-04-05' }}}}"
        )
    };
    let (var, filter) = match expr.split_once('|') {
        Some((v, f)) => (v.trim(), Some(f.trim())),
        None => (expr, None),
    };
    if var != "creation_date" {
        return Err(unsupported());
    }
    let layout = match filter {
        None => "2006-01-02 15:04:05.999999999 -0700 MST",
        Some(f) => {
            let arg = f
                .strip_prefix("date")
                .map(str::trim_start)
                .and_then(|a| a.strip_prefix(':'))
                .map(str::trim)
                .ok_or_else(unsupported)?;
            let quoted = arg.len() >= 2
                && ((arg.starts_with('\'') && arg.ends_with('\'')) || (arg.starts_with('"') && arg.ends_with('"')));
            if !quoted {
                return Err(unsupported());
            }
            &arg[1..arg.len() - 1]
        }
    };
    let mut out = String::new();
    std::fmt::Write::write_fmt(
        &mut out,
        format_args!("{}", created.format(&go_layout_to_strftime(layout, created))),
    )
    .map_err(|_| format!("cannot format the date with the layout {layout:?}"))?;
    Ok(out)
}

/// Go's reference-time layout (`2006-01-02 15:04:05`) as a chrono format string. The zone
/// forms starting with `Z` and the fractional seconds depend on the time itself (`Z` for UTC,
/// trailing zeros trimmed for `.999`), so they are written as literal text for `t`.
pub fn go_layout_to_strftime(layout: &str, t: &DateTime<FixedOffset>) -> String {
    // Chunks in the order Go's `nextStdChunk` tries them at a position.
    const CHUNKS: &[(&str, &str)] = &[
        ("January", "%B"),
        ("Jan", "%b"),
        ("Monday", "%A"),
        ("Mon", "%a"),
        ("MST", "%Z"),
        ("01", "%m"),
        ("02", "%d"),
        ("03", "%I"),
        ("04", "%M"),
        ("05", "%S"),
        ("06", "%y"),
        ("002", "%j"),
        ("15", "%H"),
        ("1", "%-m"),
        ("2006", "%Y"),
        ("2", "%-d"),
        ("__2", "%_j"),
        ("_2006", "_%Y"),
        ("_2", "%e"),
        ("3", "%-I"),
        ("4", "%-M"),
        ("5", "%-S"),
        ("PM", "%p"),
        ("pm", "%P"),
        ("-07:00:00", "%::z"),
        ("-070000", "\u{0}s"),
        ("-07:00", "%:z"),
        ("-0700", "%z"),
        ("-07", "%:::z"),
        ("Z07:00:00", "\u{0}Z%::z"),
        ("Z070000", "\u{0}Zs"),
        ("Z07:00", "\u{0}Z%:z"),
        ("Z0700", "\u{0}Z%z"),
        ("Z07", "\u{0}Z%:::z"),
    ];
    let offset = t.offset().local_minus_utc();
    let mut out = String::new();
    let mut rest = layout;
    'scan: while let Some(c) = rest.chars().next() {
        // Fractional seconds: `.000` or `,999` not followed by another digit.
        if c == '.' || c == ',' {
            let digits = rest[1..].bytes().take_while(|b| *b == b'0' || *b == b'9').count();
            let same = digits > 0 && rest[1..1 + digits].bytes().all(|b| b == rest.as_bytes()[1]);
            let next_is_digit = rest[1 + digits..].bytes().next().is_some_and(|b| b.is_ascii_digit());
            if same && !next_is_digit {
                let n = digits.min(9);
                let mut frac = format!("{:09}", t.nanosecond() % 1_000_000_000)[..n].to_string();
                if rest.as_bytes()[1] == b'9' {
                    frac = frac.trim_end_matches('0').to_string();
                }
                if !frac.is_empty() {
                    out.push(c);
                    out.push_str(&frac);
                }
                rest = &rest[1 + digits..];
                continue;
            }
        }
        for (chunk, spec) in CHUNKS {
            if let Some(after) = rest.strip_prefix(chunk) {
                match spec.strip_prefix('\u{0}') {
                    None => out.push_str(spec),
                    // Depends on the offset: `Z` for UTC, else the offset (`s`: with seconds,
                    // no colons, which chrono has no specifier for).
                    Some(zone) => {
                        let (z, form) = match zone.strip_prefix('Z') {
                            Some(form) => (true, form),
                            None => (false, zone),
                        };
                        if z && offset == 0 {
                            out.push('Z');
                        } else if form == "s" {
                            let (sign, abs) = if offset < 0 { ('-', -offset) } else { ('+', offset) };
                            out.push_str(&format!("{sign}{:02}{:02}{:02}", abs / 3600, abs / 60 % 60, abs % 60));
                        } else {
                            out.push_str(form);
                        }
                    }
                }
                rest = after;
                continue 'scan;
            }
        }
        if c == '%' {
            out.push_str("%%");
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The name of a new snapshot from `pattern` (rendered for `created`), given the names
/// `taken`, as LXD's `NextSnapshotName`: `%d` (at most once) becomes one past the highest number
/// that names of that form already use (0 for the first); a pattern without `%d` whose name is
/// taken gets `-%d` appended.
pub fn snapshot_name(
    pattern: &str,
    created: &DateTime<FixedOffset>,
    taken: &[&str],
) -> std::result::Result<String, String> {
    let rendered = render_pattern(pattern, created)?;
    let numbered = match rendered.matches("%d").count() {
        0 if !taken.contains(&rendered.as_str()) => return Ok(rendered),
        0 => format!("{rendered}-%d"),
        1 => rendered,
        _ => return Err("a snapshot pattern may contain %d only once".into()),
    };
    let (prefix, suffix) = numbered.split_once("%d").expect("one %d");
    let next = taken
        .iter()
        .filter_map(|name| name.strip_prefix(prefix)?.strip_suffix(suffix))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|n| n.parse::<u64>().ok())
        .map(|n| n + 1)
        .max()
        .unwrap_or(0);
    Ok(format!("{prefix}{next}{suffix}"))
}

// ---------------------------------------------------------------------------------------------
// Validation (for the config registry)

/// `snapshots.schedule`.
pub fn validate_schedule(value: &str) -> std::result::Result<(), String> {
    Schedule::parse(value).map(drop)
}

/// `snapshots.expiry`.
pub fn validate_expiry(value: &str) -> std::result::Result<(), String> {
    Expiry::parse(value).map(drop)
}

/// `snapshots.pattern`: it renders, has `%d` at most once, and makes a valid snapshot name.
pub fn validate_pattern(value: &str) -> std::result::Result<(), String> {
    let sample = DateTime::parse_from_rfc3339("2006-01-02T15:04:05.123456789-07:00").expect("a valid time");
    let name = snapshot_name(value, &sample, &[])?;
    crate::snapshots::validate_snapshot_name(&name)
        .map_err(|_| format!("it makes {name:?}, not a valid snapshot name (no '/', not empty, not . or ..)"))
}

// ---------------------------------------------------------------------------------------------
// The service side

impl Instances {
    /// When a snapshot of `instance` made now without an explicit expiry expires
    /// (`snapshots.expiry` of its expanded config).
    pub fn default_snapshot_expiry(
        &self,
        project: &str,
        instance: &str,
        from: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        let (rec, _) = self.get(project, instance)?;
        let (config, _) = self.expand(&rec)?;
        Ok(expiry_from(&config, from))
    }

    /// The name of an unnamed snapshot: from `snapshots.pattern` when it is set, else the next
    /// free `snapN`.
    pub fn unnamed_snapshot_name(&self, project: &str, instance: &str) -> Result<String> {
        let (rec, _) = self.get(project, instance)?;
        let (config, _) = self.expand(&rec)?;
        match config.get("snapshots.pattern").filter(|p| !p.is_empty()) {
            Some(pattern) => self.pattern_snapshot_name(project, instance, pattern, Utc::now()),
            None => self.next_snapshot_name(project, instance),
        }
    }

    /// The next name `pattern` gives for a snapshot of `instance` made at `at`.
    fn pattern_snapshot_name(&self, project: &str, instance: &str, pattern: &str, at: DateTime<Utc>) -> Result<String> {
        let snaps = self.snapshots(project, instance)?;
        let taken: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
        snapshot_name(pattern, &at.with_timezone(&Local).fixed_offset(), &taken)
            .map_err(|e| ServiceError::BadRequest(format!("snapshots.pattern: {e}")))
    }

    /// Takes an automatic snapshot of `instance` (expanded `config`) at `at`: named by
    /// `snapshots.pattern`, expiring after `snapshots.expiry`. Blocking.
    pub fn take_automatic_snapshot(
        &self,
        project: &str,
        instance: &str,
        config: &BTreeMap<String, String>,
        at: DateTime<Utc>,
    ) -> Result<SnapshotRecord> {
        let pattern = config
            .get("snapshots.pattern")
            .map(String::as_str)
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_PATTERN);
        let name = self.pattern_snapshot_name(project, instance, pattern, at)?;
        self.create_snapshot(project, instance, &name, expiry_from(config, at))
    }
}

/// What one run of the scheduler did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// (instance, snapshot) taken.
    pub created: Vec<(String, String)>,
    /// (instance, snapshot) deleted because they expired.
    pub deleted: Vec<(String, String)>,
    /// What went wrong, one line each.
    pub failed: Vec<String>,
}

fn snapshot_url(instance: &str, snapshot: &str) -> String {
    format!("/1.0/instances/{instance}/snapshots/{snapshot}")
}

/// One run of the scheduler for the minute `at`: takes the snapshots due then, then deletes the
/// snapshots expired by then, publishing `instance-snapshot-created` and
/// `instance-snapshot-deleted` as the API does. Blocking: call from a blocking task.
pub fn run_at(instances: &Instances, events: &Events, project: &str, at: DateTime<Utc>) -> Report {
    let mut report = Report::default();
    let local = at.with_timezone(&Local).naive_local();
    let due: Vec<(String, BTreeMap<String, String>)> = match instances
        .profiles(project)
        .and_then(|profiles| Ok((profiles, instances.list(project)?)))
    {
        Ok((profiles, list)) => list
            .into_iter()
            .filter_map(|rec| {
                let (config, _) = instances.expand_with(&rec, &profiles).ok()?;
                let running = instances.status(&rec.name).0 != "Stopped";
                is_due(&rec.name, &config, running, local).then_some((rec.name, config))
            })
            .collect(),
        Err(e) => {
            report.failed.push(format!("cannot list the instances: {e}"));
            Vec::new()
        }
    };
    for (name, config) in due {
        match instances.take_automatic_snapshot(project, &name, &config, at) {
            Ok(snap) => {
                tracing::info!(instance = %name, snapshot = %snap.name, "scheduled snapshot taken");
                events.publish(Lifecycle::new(
                    "instance-snapshot-created",
                    &snapshot_url(&name, &snap.name),
                ));
                report.created.push((name, snap.name));
            }
            Err(e) => report.failed.push(format!("cannot snapshot {name}: {e}")),
        }
    }
    match instances.all_snapshots(project) {
        Ok(all) => {
            for (instance, snap) in expired(&all, at) {
                match instances.delete_snapshot(project, &instance, &snap) {
                    Ok(()) => {
                        tracing::info!(instance = %instance, snapshot = %snap, "expired snapshot deleted");
                        events.publish(Lifecycle::new(
                            "instance-snapshot-deleted",
                            &snapshot_url(&instance, &snap),
                        ));
                        report.deleted.push((instance, snap));
                    }
                    // Deleted meanwhile by someone else.
                    Err(ServiceError::NotFound(_)) => {}
                    Err(e) => report
                        .failed
                        .push(format!("cannot delete the expired snapshot {instance}/{snap}: {e}")),
                }
            }
        }
        Err(e) => report.failed.push(format!("cannot list the snapshots: {e}")),
    }
    // Backups expire the same way (their point-in-time copy goes with them).
    for rec in instances.list(project).unwrap_or_default() {
        for b in instances.backups(project, &rec.name).unwrap_or_default() {
            if b.expires_at.is_some_and(|t| t <= at) {
                match instances.delete_backup(project, &rec.name, &b.name) {
                    Ok(()) => {
                        tracing::info!(instance = %rec.name, backup = %b.name, "expired backup deleted");
                        events.publish(Lifecycle::new(
                            "instance-backup-deleted",
                            &format!("/1.0/instances/{}/backups/{}", rec.name, b.name),
                        ));
                    }
                    Err(e) => report
                        .failed
                        .push(format!("cannot delete the expired backup {}/{}: {e}", rec.name, b.name)),
                }
            }
        }
    }
    // And custom volumes' backups.
    let volumes = crate::volumes::Volumes {
        store: instances.store.clone(),
        pools: instances.pools.clone(),
    };
    for pool in instances.pools.all() {
        for v in volumes.list(&pool.name).unwrap_or_default() {
            for b in volumes.backups(&pool.name, &v.name).unwrap_or_default() {
                if b.expires_at.is_none_or(|t| t > at) {
                    continue;
                }
                let url = format!(
                    "/1.0/storage-pools/{}/volumes/custom/{}/backups/{}",
                    pool.name, v.name, b.name
                );
                match volumes.delete_backup(&pool.name, &v.name, &b.name) {
                    Ok(()) => {
                        tracing::info!(pool = %pool.name, volume = %v.name, backup = %b.name, "expired volume backup deleted");
                        events.publish(Lifecycle::new("storage-volume-backup-deleted", &url));
                    }
                    Err(e) => report
                        .failed
                        .push(format!("cannot delete the expired backup {url}: {e}")),
                }
            }
        }
    }
    for line in &report.failed {
        tracing::warn!("snapshot schedule: {line}");
    }
    report
}

/// The `@startup` snapshot of an instance that has just started. Blocking.
fn startup_snapshot(instances: &Instances, events: &Events, project: &str, name: &str) {
    let Ok((rec, _)) = instances.get(project, name) else {
        return;
    };
    let Ok((config, _)) = instances.expand(&rec) else {
        return;
    };
    if !snapshots_on_startup(&config) {
        return;
    }
    match instances.take_automatic_snapshot(project, name, &config, Utc::now()) {
        Ok(snap) => {
            tracing::info!(instance = %name, snapshot = %snap.name, "startup snapshot taken");
            events.publish(Lifecycle::new(
                "instance-snapshot-created",
                &snapshot_url(name, &snap.name),
            ));
        }
        Err(e) => tracing::warn!(instance = %name, error = %e, "startup snapshot failed"),
    }
}

/// When the scheduler runs next.
enum Clock {
    /// On every minute of the wall clock; `next` is the next minute (seconds since the epoch
    /// divided by 60) to run for.
    Wall { next: i64 },
    /// Tests: every `period`, each run standing for the minute after the previous one.
    Fast {
        period: std::time::Duration,
        wake: tokio::time::Instant,
        minute: DateTime<Utc>,
    },
}

impl Clock {
    fn new(tick_secs: Option<u64>) -> Clock {
        let now = Utc::now();
        let minute = now.timestamp().div_euclid(60);
        match tick_secs {
            // Not the minute the daemon starts in: a restart within a minute takes no second
            // snapshot (LXD skips its first run too).
            None => Clock::Wall { next: minute + 1 },
            Some(secs) => {
                let period = std::time::Duration::from_secs(secs);
                Clock::Fast {
                    period,
                    wake: tokio::time::Instant::now() + period,
                    minute: DateTime::from_timestamp(minute * 60, 0).unwrap_or(now),
                }
            }
        }
    }

    /// Waits for the next run; the minute it stands for. Cancel-safe: nothing changes until it
    /// returns.
    async fn tick(&mut self) -> DateTime<Utc> {
        match self {
            Clock::Wall { next } => loop {
                let now = Utc::now();
                let minute = now.timestamp().div_euclid(60);
                if minute >= *next {
                    *next = minute + 1;
                    return DateTime::from_timestamp(minute * 60, 0).unwrap_or(now);
                }
                let until = (*next * 60 - now.timestamp()) * 1000 - i64::from(now.timestamp_subsec_millis());
                // A little past the minute, so that the clock reads the new minute on waking.
                tokio::time::sleep(std::time::Duration::from_millis(until.max(0) as u64 + 20)).await;
            },
            Clock::Fast { period, wake, minute } => {
                tokio::time::sleep_until(*wake).await;
                *wake += *period;
                *minute += chrono::TimeDelta::minutes(1);
                *minute
            }
        }
    }
}

/// Starts the scheduler (see the module's documentation). Subscribes to the events before it
/// returns, so that no start published after it is missed.
pub fn spawn(instances: Arc<Instances>, events: Events) {
    let mut started = events.subscribe();
    let tick_secs = std::env::var(TICK_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0);
    tokio::spawn(async move {
        let mut clock = Clock::new(tick_secs);
        loop {
            tokio::select! {
                at = clock.tick() => {
                    let (inst, ev) = (instances.clone(), events.clone());
                    let _ = tokio::task::spawn_blocking(move || run_at(&inst, &ev, DEFAULT_PROJECT, at)).await;
                }
                event = started.recv() => match event {
                    Ok(event) => {
                        if let Some(name) = started_instance(&event) {
                            let (inst, ev) = (instances.clone(), events.clone());
                            tokio::task::spawn_blocking(move || startup_snapshot(&inst, &ev, DEFAULT_PROJECT, &name));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
}

/// The instance an `instance-started` or `instance-restarted` lifecycle event is about.
fn started_instance(event: &corral_api::Event) -> Option<String> {
    if event.kind != "lifecycle" {
        return None;
    }
    let action = event.metadata.get("action")?.as_str()?;
    if action != "instance-started" && action != "instance-restarted" {
        return None;
    }
    let name = event
        .metadata
        .get("source")?
        .as_str()?
        .strip_prefix("/1.0/instances/")?;
    (!name.is_empty() && !name.contains('/')).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cron(s: &str) -> Cron {
        Cron::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn cron_fields_ranges_steps_and_lists() {
        // 2024-01-01 is a Monday.
        let every = cron("* * * * *");
        assert!(every.matches(at("2024-01-01 00:00")));
        assert!(every.matches(at("2024-12-31 23:59")));

        let c = cron("*/15 9-17 * * mon-fri");
        assert!(c.matches(at("2024-01-01 09:00")));
        assert!(c.matches(at("2024-01-01 17:45")));
        assert!(!c.matches(at("2024-01-01 09:10")));
        assert!(!c.matches(at("2024-01-01 18:00")));
        assert!(!c.matches(at("2024-01-06 09:00")), "Saturday");

        let c = cron("0,30 1-5/2 * * *");
        for ok in ["01:00", "01:30", "03:00", "05:30"] {
            assert!(c.matches(at(&format!("2024-03-03 {ok}"))), "{ok}");
        }
        for no in ["02:00", "06:00", "01:15", "00:00"] {
            assert!(!c.matches(at(&format!("2024-03-03 {no}"))), "{no}");
        }

        // `a/n`: from a to the end; steps over a range.
        let c = cron("10/20 0 * * *");
        assert!(
            c.matches(at("2024-03-03 00:10")) && c.matches(at("2024-03-03 00:30")) && c.matches(at("2024-03-03 00:50"))
        );
        assert!(!c.matches(at("2024-03-03 00:00")));

        // Month names and numbers, day of month.
        let c = cron("0 0 1 jan,jul *");
        assert!(c.matches(at("2024-01-01 00:00")) && c.matches(at("2024-07-01 00:00")));
        assert!(!c.matches(at("2024-02-01 00:00")));
        assert!(
            cron("0 0 1 JAN-Mar *").matches(at("2024-02-01 00:00")),
            "names in any case"
        );
    }

    #[test]
    fn sunday_is_0_and_7() {
        // 2024-01-07 is a Sunday.
        for spec in ["0 0 * * 0", "0 0 * * 7", "0 0 * * sun", "0 0 * * 5-7", "0 0 * * 6,7"] {
            assert!(cron(spec).matches(at("2024-01-07 00:00")), "{spec}");
            assert!(
                !cron(spec).matches(at("2024-01-05 00:00")) || spec == "0 0 * * 5-7",
                "{spec}"
            );
        }
        assert!(cron("0 0 * * 5-7").matches(at("2024-01-05 00:00")), "Friday");
        assert!(cron("0 0 * * 5-7").matches(at("2024-01-06 00:00")), "Saturday");
        assert!(!cron("0 0 * * 5-7").matches(at("2024-01-08 00:00")), "Monday");
        assert!(cron("0 0 * * */7").matches(at("2024-01-07 00:00")), "0 and 7 in a step");
    }

    #[test]
    fn restricted_day_fields_are_either_or() {
        // The 13th, and every Friday (2024-09-13 is a Friday; 2024-09-20 a Friday; 2024-10-13 a
        // Sunday).
        let c = cron("0 0 13 * 5");
        assert!(c.matches(at("2024-09-20 00:00")));
        assert!(c.matches(at("2024-10-13 00:00")));
        assert!(!c.matches(at("2024-10-14 00:00")));
        // With one day field unrestricted, both must match.
        let c = cron("0 0 13 * *");
        assert!(!c.matches(at("2024-09-20 00:00")));
        let c = cron("0 0 */2 * 5");
        // `*/2` starts with `*`: unrestricted, so both must match (the 20th is even).
        assert!(!c.matches(at("2024-09-20 00:00")));
        assert!(c.matches(at("2024-09-13 00:00")));
    }

    #[test]
    fn invalid_cron_is_refused_with_the_field_and_the_reason() {
        for (spec, want) in [
            ("* * * *", "has 4 fields"),
            ("* * * * * *", "has 6 fields"),
            ("60 * * * *", "minute field \"60\": 60 is out of range 0-59"),
            ("* 24 * * *", "hour field \"24\": 24 is out of range 0-23"),
            ("* * 0 * *", "day-of-month field \"0\": 0 is out of range 1-31"),
            ("* * * 13 *", "month field \"13\": 13 is out of range 1-12"),
            ("* * * * 8", "day-of-week field \"8\": 8 is out of range 0-7"),
            ("5-1 * * * *", "the range 5-1 runs backwards"),
            ("*/0 * * * *", "a step must be at least 1"),
            ("*/x * * * *", "step \"x\" is not a number"),
            ("1,,2 * * * *", "an empty item"),
            ("* * * foo *", "\"foo\" is not a number or a name (jan-dec)"),
            ("* * * * L", "day-of-week field \"l\""),
            ("-1 * * * *", "minute field"),
        ] {
            let err = Schedule::parse(spec).unwrap_err();
            assert!(err.contains(want), "{spec}: {err:?} lacks {want:?}");
        }
        let err = Schedule::parse("@sometimes").unwrap_err();
        assert!(
            err.contains("unknown alias \"@sometimes\"") && err.contains("@daily"),
            "{err}"
        );
        assert!(Schedule::parse("@daily, ").is_err());
    }

    #[test]
    fn aliases_lists_and_startup() {
        let subject = "c1";
        let (m, h) = spread(subject);
        assert!(m < 60 && h < 24);
        assert_eq!(spread(subject), (m, h), "stable");
        let t = |hh: u64, mm: u64, date: &str| at(&format!("{date} {hh:02}:{mm:02}"));

        let hourly = Schedule::parse("@hourly").unwrap();
        assert!(hourly.is_due(subject, t(5, m, "2024-01-02")));
        assert!(!hourly.is_due(subject, t(5, (m + 1) % 60, "2024-01-02")));
        let daily = Schedule::parse("@DAILY").unwrap();
        assert!(daily.is_due(subject, t(h, m, "2024-01-02")));
        assert!(!daily.is_due(subject, t((h + 1) % 24, m, "2024-01-02")));
        assert!(Schedule::parse("@midnight")
            .unwrap()
            .is_due(subject, t(0, m, "2024-01-02")));
        // 2024-01-07 is a Sunday.
        let weekly = Schedule::parse("@weekly").unwrap();
        assert!(weekly.is_due(subject, t(h, m, "2024-01-07")));
        assert!(!weekly.is_due(subject, t(h, m, "2024-01-08")));
        assert!(Schedule::parse("@monthly")
            .unwrap()
            .is_due(subject, t(h, m, "2024-05-01")));
        for yearly in ["@yearly", "@annually"] {
            let s = Schedule::parse(yearly).unwrap();
            assert!(s.is_due(subject, t(h, m, "2025-01-01")));
            assert!(!s.is_due(subject, t(h, m, "2025-02-01")));
        }
        // Different subjects are spread (not all of these land on one minute).
        let minutes: std::collections::BTreeSet<u64> = (0..20).map(|i| spread(&format!("c{i}")).0).collect();
        assert!(minutes.len() > 5, "{minutes:?}");

        // A list: ", " separates schedules; a bare comma is a list in a field.
        let s = Schedule::parse("0,30 6 * * *, @startup, 15 18 * * *").unwrap();
        assert!(s.on_startup());
        assert!(s.is_due(subject, at("2024-01-02 06:30")));
        assert!(s.is_due(subject, at("2024-01-02 18:15")));
        assert!(!s.is_due(subject, at("2024-01-02 18:30")));

        let startup = Schedule::parse("@startup").unwrap();
        assert!(startup.on_startup());
        assert!(!startup.is_due(subject, at("2024-01-02 00:00")));
        let never = Schedule::parse("@never").unwrap();
        assert!(!never.on_startup() && !never.is_due(subject, at("2024-01-02 00:00")));
        assert_eq!(Schedule::parse("").unwrap(), Schedule::default());
    }

    #[test]
    fn which_instances_are_due() {
        let cfg = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let t = at("2024-01-02 03:04");
        let every = cfg(&[("snapshots.schedule", "* * * * *")]);
        assert!(is_due("c1", &every, true, t));
        assert!(
            !is_due("c1", &every, false, t),
            "stopped instances are skipped by default"
        );
        let stopped_too = cfg(&[
            ("snapshots.schedule", "* * * * *"),
            ("snapshots.schedule.stopped", "true"),
        ]);
        assert!(is_due("c1", &stopped_too, false, t));
        assert!(!is_due("c1", &cfg(&[]), true, t), "no schedule");
        assert!(!is_due("c1", &cfg(&[("snapshots.schedule", "")]), true, t));
        assert!(!is_due("c1", &cfg(&[("snapshots.schedule", "5 * * * *")]), true, t));
        assert!(is_due("c1", &cfg(&[("snapshots.schedule", "4 3 * * *")]), true, t));
        assert!(!is_due("c1", &cfg(&[("snapshots.schedule", "bogus")]), true, t));
        // Aliases spread by volatile.uuid when there is one.
        let (m, h) = spread("uuid-1");
        let daily = cfg(&[("snapshots.schedule", "@daily"), ("volatile.uuid", "uuid-1")]);
        assert!(is_due("c1", &daily, true, at(&format!("2024-01-02 {h:02}:{m:02}"))));
        assert!(snapshots_on_startup(&cfg(&[("snapshots.schedule", "@startup")])));
        assert!(!snapshots_on_startup(&every));
    }

    #[test]
    fn expired_snapshots_are_those_past_their_time() {
        let now = utc("2024-01-02T03:04:00Z");
        let snap = |inst: &str, name: &str, expires: Option<&str>| SnapshotRecord {
            name: name.into(),
            instance: inst.into(),
            expires_at: expires.map(utc),
            ..Default::default()
        };
        let all = BTreeMap::from([
            (
                "a".to_string(),
                vec![
                    snap("a", "old", Some("2024-01-02T03:03:59Z")),
                    snap("a", "now", Some("2024-01-02T03:04:00Z")),
                    snap("a", "later", Some("2024-01-02T03:04:01Z")),
                    snap("a", "never", None),
                ],
            ),
            ("b".to_string(), vec![snap("b", "x", Some("2000-01-01T00:00:00Z"))]),
        ]);
        assert_eq!(
            expired(&all, now),
            [("a", "old"), ("a", "now"), ("b", "x")].map(|(i, s)| (i.to_string(), s.to_string()))
        );
    }

    #[test]
    fn expiry_units_and_go_date_arithmetic() {
        let e = Expiry::parse("1M 2H 3d 4w 5m 6y").unwrap().unwrap();
        assert_eq!(
            e,
            Expiry {
                minutes: 1,
                hours: 2,
                days: 3,
                weeks: 4,
                months: 5,
                years: 6
            }
        );
        let from = utc("2024-01-31T10:00:00Z");
        assert_eq!(e.after(from), Some(utc("2030-08-01T12:01:00Z")));
        let one = |s: &str| Expiry::parse(s).unwrap().unwrap().after(from).unwrap();
        assert_eq!(one("1M"), utc("2024-01-31T10:01:00Z"));
        assert_eq!(one("36H"), utc("2024-02-01T22:00:00Z"));
        assert_eq!(one("2w"), utc("2024-02-14T10:00:00Z"));
        // As Go's AddDate: January 31 plus a month is March 2 in a leap year.
        assert_eq!(one("1m"), utc("2024-03-02T10:00:00Z"));
        assert_eq!(one("11m"), utc("2024-12-31T10:00:00Z"));
        assert_eq!(one("12m"), utc("2025-01-31T10:00:00Z"));
        assert_eq!(
            Expiry::parse("1y").unwrap().unwrap().after(utc("2024-02-29T00:00:00Z")),
            Some(utc("2025-03-01T00:00:00Z"))
        );
        assert_eq!(Expiry::parse("").unwrap(), None);
        assert_eq!(Expiry::parse("  ").unwrap(), None);
        assert_eq!(one(" 3d   1M "), utc("2024-02-03T10:01:00Z"));

        for (bad, want) in [
            ("1", "is not a number and a unit"),
            ("d", "is not a number and a unit"),
            ("1x", "unknown unit 'x'"),
            ("1D", "unknown unit 'D'"),
            ("-1d", "is not a number and a unit"),
            ("+1d", "is not a number and a unit"),
            ("1.5d", "is not a number and a unit"),
            ("1d 2d", "the unit 'd' appears more than once"),
            ("99999999999999999999y", "too large"),
            ("1000000y", "too far in the future"),
        ] {
            let err = Expiry::parse(bad).unwrap_err();
            assert!(err.contains(want), "{bad}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn patterns_render_dates_and_numbers() {
        let t = DateTime::parse_from_rfc3339("2024-03-05T07:08:09.120000000+02:00").unwrap();
        let r = |p: &str| render_pattern(p, &t).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(r("snap%d"), "snap%d");
        assert_eq!(
            r("{{ creation_date|date:'2006-01-02_15-04-05' }}"),
            "2024-03-05_07-08-09"
        );
        assert_eq!(r("auto-{{creation_date|date:\"20060102\"}}-%d"), "auto-20240305-%d");
        assert_eq!(r("{{ creation_date | date : 'Jan _2 3:4:5 PM' }}"), "Mar  5 7:8:9 AM");
        assert_eq!(
            r("{{ creation_date|date:'Monday January 2 06 002 pm' }}"),
            "Tuesday March 5 24 065 am"
        );
        assert_eq!(
            r("{{ creation_date|date:'15h04 -0700 -07:00 Z07:00 .000 .999 ,9' }}"),
            "07h08 +0200 +02:00 +02:00 .120 .12 ,1"
        );
        assert_eq!(r("{{ creation_date|date:'x% 2006' }}"), "x% 2024");
        // As in Go, a 1 is the month wherever it stands.
        assert_eq!(r("{{ creation_date|date:'v1' }}"), "v3");
        assert_eq!(r("{{ creation_date }}"), "2024-03-05 07:08:09.12 +0200 +02:00");
        let u = DateTime::parse_from_rfc3339("2024-03-05T07:08:09Z").unwrap();
        assert_eq!(
            render_pattern("{{ creation_date|date:'Z07:00.999' }}", &u).unwrap(),
            "Z"
        );

        for (bad, want) in [
            ("{{ creation_date", "unclosed"),
            ("{{ name }}", "unsupported template expression"),
            ("{{ creation_date|upper }}", "unsupported template expression"),
            ("{{ creation_date|date:2006 }}", "unsupported template expression"),
            ("{% if x %}", "not supported"),
        ] {
            let err = render_pattern(bad, &t).unwrap_err();
            assert!(err.contains(want), "{bad}: {err:?} lacks {want:?}");
        }

        // %d: one past the highest number names of that form use.
        assert_eq!(snapshot_name("snap%d", &t, &[]).unwrap(), "snap0");
        assert_eq!(
            snapshot_name("snap%d", &t, &["snap0", "snap1", "other"]).unwrap(),
            "snap2"
        );
        assert_eq!(
            snapshot_name("snap%d", &t, &["snap4", "snapx", "snap"]).unwrap(),
            "snap5"
        );
        assert_eq!(snapshot_name("a%d-b", &t, &["a3-b", "a9-c"]).unwrap(), "a4-b");
        assert_eq!(
            snapshot_name("{{ creation_date|date:'2006' }}-%d", &t, &["2024-0", "2023-7"]).unwrap(),
            "2024-1"
        );
        // Without %d, a taken name gets -N.
        assert_eq!(snapshot_name("daily", &t, &[]).unwrap(), "daily");
        assert_eq!(snapshot_name("daily", &t, &["daily"]).unwrap(), "daily-0");
        assert_eq!(snapshot_name("daily", &t, &["daily", "daily-0"]).unwrap(), "daily-1");
        assert!(snapshot_name("%d-%d", &t, &[]).unwrap_err().contains("only once"));
    }

    #[test]
    fn config_values_are_validated() {
        assert_eq!(validate_schedule("*/5 * * * *, @startup"), Ok(()));
        assert_eq!(validate_expiry("2w"), Ok(()));
        assert_eq!(validate_pattern("snap%d"), Ok(()));
        assert_eq!(
            validate_pattern("{{ creation_date|date:'2006-01-02_15-04-05' }}"),
            Ok(())
        );
        let err = validate_pattern("{{ creation_date|date:'2006/01/02' }}").unwrap_err();
        assert!(err.contains("not a valid snapshot name"), "{err}");
        assert!(validate_pattern("..").is_err());
    }

    #[test]
    fn the_config_registry_checks_the_snapshot_keys() {
        use crate::config::validate_key;
        let err = validate_key("snapshots.schedule", "61 * * * *", false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value \"61 * * * *\" for snapshots.schedule: minute field \"61\": 61 is out of range 0-59"
        );
        let err = validate_key("snapshots.expiry", "1d 1d", false).unwrap_err();
        assert!(err.to_string().contains("appears more than once"), "{err}");
        let err = validate_key("snapshots.pattern", "snap%d%d", false).unwrap_err();
        assert!(err.to_string().contains("%d only once"), "{err}");
        let err = validate_key("snapshots.schedule.stopped", "sometimes", false).unwrap_err();
        assert!(err.to_string().contains("expected true or false"), "{err}");
        for (k, v) in [
            ("snapshots.schedule", "@daily, 0 */6 * * 1-5"),
            ("snapshots.schedule", ""),
            ("snapshots.expiry", "2w 1d"),
            ("snapshots.pattern", "{{ creation_date|date:'2006-01-02_15-04-05' }}"),
            ("snapshots.schedule.stopped", "true"),
        ] {
            assert_eq!(validate_key(k, v, false), Ok(()), "{k}={v}");
        }
    }

    #[test]
    fn lifecycle_starts_name_their_instance() {
        let ev = |kind: &str, action: &str, source: &str| corral_api::Event {
            kind: kind.into(),
            metadata: serde_json::json!({"action": action, "source": source}),
            ..Default::default()
        };
        assert_eq!(
            started_instance(&ev("lifecycle", "instance-started", "/1.0/instances/c1")),
            Some("c1".into())
        );
        assert_eq!(
            started_instance(&ev("lifecycle", "instance-restarted", "/1.0/instances/c1")),
            Some("c1".into())
        );
        assert_eq!(
            started_instance(&ev("lifecycle", "instance-stopped", "/1.0/instances/c1")),
            None
        );
        assert_eq!(
            started_instance(&ev("operation", "instance-started", "/1.0/instances/c1")),
            None
        );
        assert_eq!(
            started_instance(&ev("lifecycle", "instance-started", "/1.0/instances/c1/snapshots/s")),
            None
        );
    }
}
