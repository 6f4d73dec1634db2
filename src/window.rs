//! The window clock (DESIGN §5.3): when a calendar day is over, per partition and everywhere.
//!
//! Each partition has an event-time *watermark*, the newest `occurred_at` seen on it. Day D is
//! **closed on a partition** from the first record whose event time is at least the end of D
//! plus the grace period; events of D (or earlier) that arrive on that partition after the
//! cut are *late*: they are applied, counted, and routed to the next delta that is still
//! open. Because the cut depends only on the partition's own records, it falls at the same
//! offset however the consumer interleaves partitions, so two runs over the same topic cut
//! in the same places.
//!
//! Two wall-clock rules keep a day from staying open forever; both *force* a cut at the
//! partition's current offset, and forced cuts are recorded (in the store and in each
//! [`DayClose`](crate::contract::DayClose)) so that a replay can cut in the same place:
//! - **idle**: a partition that is caught up (at its end) and has had no record for
//!   `idle` does not hold a day back once the other partitions' event time says the day is
//!   over (newest watermark ≥ end of D + grace);
//! - **deadline**: once the service is live (every partition has reached its end once since
//!   assignment), a day closes `deadline` after its end whatever the partitions say. The
//!   liveness condition keeps a restart after an outage from closing the missed days before
//!   their events are read: during catch-up, days close by event time.
//!
//! A day is **closed everywhere** when it is closed on every partition of the topic; days
//! close in order, one at a time, from the first day any event belongs to, so every day has a
//! delta file (an empty one on a quiet day) and Parties see an unbroken series.
//!
//! This module is pure logic over instants; [`crate::ingest`] drives it and persists it.

use std::cell::Cell;
use std::collections::BTreeMap;

use chrono_tz::Tz;

use crate::contract::{DayClose, ForcedCut, PartitionClock};
use crate::day::{date_of_day, day_of_millis, start_of_day_millis};

/// Settings of the window clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowConfig {
    /// Zone of the extract calendar.
    pub tz: Tz,
    /// How far past a day's end a partition's event time must be before the day closes on it.
    pub grace_ms: i64,
    /// How long a caught-up partition must be quiet before it stops holding a day open.
    pub idle_ms: i64,
    /// How long after its end a day closes regardless (once the service is live).
    pub deadline_ms: i64,
    /// An event whose `occurred_at` is more than this ahead of its Kafka record timestamp is
    /// refused: a clock far in the future would otherwise close every day up to it.
    pub max_future_skew_ms: i64,
}

impl WindowConfig {
    /// Defaults: 10 minutes grace, 60 s idle, 2 h deadline, 1 h future skew.
    pub fn new(tz: Tz) -> WindowConfig {
        WindowConfig {
            tz,
            grace_ms: 10 * 60_000,
            idle_ms: 60_000,
            deadline_ms: 2 * 3_600_000,
            max_future_skew_ms: 3_600_000,
        }
    }

    /// The settings a replay must share with the run it reproduces: those that decide
    /// where event time cuts a partition and which events are refused (the idle and
    /// deadline rules are wall-clock decisions, recorded as forced cuts instead).
    pub fn replay_settings(&self) -> String {
        format!(
            "tz={} grace_ms={} max_future_skew_ms={}",
            self.tz.name(),
            self.grace_ms,
            self.max_future_skew_ms
        )
    }

    /// The calendar day of an instant.
    pub fn day_of(&self, unix_ms: i64) -> u32 {
        day_of_millis(self.tz, unix_ms)
    }

    /// First instant after `day` (its end; 23, 24 or 25 hours after its start).
    pub fn end_of_day_ms(&self, day: u32) -> i64 {
        start_of_day_millis(self.tz, date_of_day(day + 1))
    }

    /// The newest day that event time `watermark_ms` has closed: the last day whose end plus
    /// grace is at or before it.
    pub fn closed_by_watermark(&self, watermark_ms: i64) -> u32 {
        self.day_of(watermark_ms.saturating_sub(self.grace_ms))
            .saturating_sub(1)
    }

    /// The newest day whose deadline has passed at wall-clock `now_ms`.
    pub fn closed_by_deadline(&self, now_ms: i64) -> u32 {
        self.day_of(now_ms.saturating_sub(self.deadline_ms))
            .saturating_sub(1)
    }
}

/// The clock of one partition: what is persisted ([`PartitionClock`]) plus what only the
/// running process knows (whether the partition is at its end, since when).
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Persisted part.
    pub state: PartitionClock,
    /// Wall-clock instant the partition was last seen at its end with no record since.
    pub at_end_since: Option<i64>,
    /// The partition has reached its end at least once since it was assigned.
    pub reached_end: bool,
    /// Changed since last persisted.
    pub dirty: bool,
    /// Watermarks `lo..hi` all close through the same day: the day conversion (a time-zone
    /// lookup) runs once per day boundary, not once per event.
    by_time: Cell<Option<(i64, i64, u32)>>,
}

impl Clock {
    /// A clock restored from the store.
    pub fn restored(state: PartitionClock) -> Clock {
        Clock {
            state,
            ..Clock::default()
        }
    }

    /// The newest day closed on this partition, by event time or by a forced cut (0: none).
    pub fn closed_through(&self, cfg: &WindowConfig) -> u32 {
        self.closed_by_time(cfg).max(self.state.forced_through)
    }

    /// The newest day closed by the watermark alone.
    fn closed_by_time(&self, cfg: &WindowConfig) -> u32 {
        let Some(wm) = self.state.watermark_ms else {
            return 0;
        };
        if let Some((lo, hi, day)) = self.by_time.get() {
            if (lo..hi).contains(&wm) {
                return day;
            }
        }
        let day = cfg.closed_by_watermark(wm);
        // The watermarks that close through `day`: from the end of `day` (plus grace) to
        // the end of the next day (plus grace).
        let lo = cfg.end_of_day_ms(day).saturating_add(cfg.grace_ms);
        let hi = cfg.end_of_day_ms(day + 1).saturating_add(cfg.grace_ms);
        if lo <= wm && wm < hi {
            self.by_time.set(Some((lo, hi, day)));
        }
        day
    }

    /// Take an event time into the watermark. Returns true when that closed a further day.
    pub fn observe(&mut self, cfg: &WindowConfig, occurred_ms: i64) -> bool {
        if self.state.watermark_ms.is_some_and(|wm| wm >= occurred_ms) {
            return false;
        }
        let before = self.closed_through(cfg);
        self.state.watermark_ms = Some(occurred_ms);
        self.dirty = true;
        self.closed_through(cfg) > before
    }

    /// Force the partition closed through `day` at `offset` (its next offset) by `rule`.
    /// Returns false when the day was already closed on it.
    pub fn force(&mut self, cfg: &WindowConfig, day: u32, offset: i64, rule: &str) -> bool {
        let closed = self.closed_through(cfg);
        if day <= closed {
            return false;
        }
        self.state.forced_through = day;
        self.state.forced.push(ForcedCut {
            through_day: day,
            offset,
            rule: rule.to_string(),
            from_day: closed + 1,
        });
        self.dirty = true;
        true
    }

    /// The forced cut that first closed `day` on this partition, if it was forced. A cut
    /// stays the one that closed `day` even when event time on the partition passes `day`
    /// later on: the events between the cut and that point were routed late by it.
    pub fn forced_cut_of(&self, cfg: &WindowConfig, day: u32) -> Option<ForcedCut> {
        // Cuts are in offset order with growing days.
        let first = self.state.forced.iter().find(|c| c.through_day >= day)?;
        if first.from_day != 0 {
            return (first.from_day <= day).then(|| first.clone());
        }
        // A cut recorded without its first day: it closed `day` unless event time had
        // already closed it (the best that can be said from the current watermark).
        (self.closed_by_time(cfg) < day).then(|| first.clone())
    }

    /// Forget forced cuts that only concern days up to `day` (folded into their DayClose).
    pub fn prune_forced(&mut self, day: u32) {
        let before = self.state.forced.len();
        self.state.forced.retain(|c| c.through_day > day);
        if self.state.forced.len() != before {
            self.dirty = true;
        }
    }
}

/// The delta day of a change: its event day, unless that day is already closed on its
/// partition (then the next day still open there: the change is late), and never before the
/// delta day of the certificate's previous change (so applying deltas in date order ends on
/// the newest version of every certificate).
pub fn delta_day(event_day: u32, closed_through: u32, previous_delta_day: u32) -> u32 {
    event_day
        .max(closed_through.saturating_add(1))
        .max(previous_delta_day)
}

/// Refuse to replay `closes` with settings other than those they were decided with
/// ([`WindowConfig::replay_settings`]): the files would differ.
pub fn check_replay_settings<'a>(
    cfg: &WindowConfig,
    closes: impl IntoIterator<Item = &'a DayClose>,
) -> anyhow::Result<()> {
    let ours = cfg.replay_settings();
    if let Some(other) = closes
        .into_iter()
        .find(|c| !c.window_settings.is_empty() && c.window_settings != ours)
    {
        anyhow::bail!(
            "the close of {} was decided with window settings \"{}\", this replay has \
             \"{ours}\": the files would differ. Replay with the original's settings \
             (ingest.time_zone, window.grace_secs, window.max_future_skew_secs)",
            date_of_day(other.day),
            other.window_settings
        );
    }
    Ok(())
}

/// Why a partition is being forced: what [`forced_cuts`] decided for one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForceDecision {
    /// Partition to cut.
    pub partition: i32,
    /// Close it through this day.
    pub through_day: u32,
    /// `idle` or `deadline`.
    pub rule: &'static str,
}

/// Decide the forced cuts due at wall-clock `now_ms` for `next_day` (the first day not yet
/// closed everywhere), given every partition's clock.
pub fn forced_cuts(
    cfg: &WindowConfig,
    clocks: &BTreeMap<i32, Clock>,
    next_day: u32,
    now_ms: i64,
) -> Vec<ForceDecision> {
    let live = !clocks.is_empty() && clocks.values().all(|c| c.reached_end);
    let newest_watermark = clocks.values().filter_map(|c| c.state.watermark_ms).max();
    let by_deadline = cfg.closed_by_deadline(now_ms);
    let by_time = newest_watermark.map(|wm| cfg.closed_by_watermark(wm));
    let mut out = Vec::new();
    for (p, clock) in clocks {
        let closed = clock.closed_through(cfg);
        if closed >= next_day {
            continue;
        }
        if live && by_deadline >= next_day {
            out.push(ForceDecision {
                partition: *p,
                through_day: by_deadline,
                rule: "deadline",
            });
            continue;
        }
        let idle = clock
            .at_end_since
            .is_some_and(|t| now_ms.saturating_sub(t) >= cfg.idle_ms);
        if let Some(day) = by_time.filter(|d| idle && *d >= next_day) {
            out.push(ForceDecision {
                partition: *p,
                through_day: day,
                rule: "idle",
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::day::day_of_date;
    use chrono::NaiveDate;

    fn cfg() -> WindowConfig {
        WindowConfig::new(chrono_tz::Europe::London)
    }

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    fn day(y: i32, m: u32, d: u32) -> u32 {
        day_of_date(NaiveDate::from_ymd_opt(y, m, d).unwrap())
    }

    #[test]
    fn a_day_closes_on_a_partition_only_after_its_end_plus_grace() {
        let c = cfg();
        // 25 October 2026 is the 25-hour day (BST ends): it ends at 00:00 GMT on the 26th.
        let d25 = day(2026, 10, 25);
        assert_eq!(c.end_of_day_ms(d25), ms("2026-10-26T00:00:00Z"));
        assert_eq!(c.closed_by_watermark(ms("2026-10-26T00:09:59Z")), d25 - 1);
        assert_eq!(c.closed_by_watermark(ms("2026-10-26T00:10:00Z")), d25);
        // 29 March 2026 is the 23-hour day: it ends at 23:00 UTC.
        let d29 = day(2026, 3, 29);
        assert_eq!(c.end_of_day_ms(d29), ms("2026-03-29T23:00:00Z"));
        assert_eq!(c.closed_by_watermark(ms("2026-03-29T23:10:00Z")), d29);
        assert_eq!(c.closed_by_watermark(ms("2026-03-29T23:09:00Z")), d29 - 1);
    }

    #[test]
    fn observing_moves_the_watermark_forward_only() {
        let c = cfg();
        let mut clock = Clock::default();
        assert!(clock.observe(&c, ms("2026-11-02T12:00:00Z")));
        let closed = clock.closed_through(&c);
        assert_eq!(closed, day(2026, 11, 1));
        // An older event changes nothing.
        assert!(!clock.observe(&c, ms("2026-10-30T12:00:00Z")));
        assert_eq!(clock.state.watermark_ms, Some(ms("2026-11-02T12:00:00Z")));
        // A newer one within the same day moves the watermark but closes nothing new.
        assert!(!clock.observe(&c, ms("2026-11-02T13:00:00Z")));
        assert!(clock.observe(&c, ms("2026-11-03T00:10:00Z")));
        assert_eq!(clock.closed_through(&c), day(2026, 11, 2));
    }

    #[test]
    fn late_changes_go_to_the_next_open_day_and_never_backwards() {
        let d = day(2026, 11, 2);
        assert_eq!(delta_day(d, d - 1, 0), d, "on time");
        assert_eq!(delta_day(d - 3, d - 1, 0), d, "late: next open day");
        assert_eq!(
            delta_day(d - 1, d - 5, d + 1),
            d + 1,
            "after a newer change"
        );
    }

    #[test]
    fn forced_cuts_record_the_first_cut_of_a_day() {
        let c = cfg();
        let d = day(2026, 11, 2);
        let mut clock = Clock::default();
        clock.observe(&c, ms("2026-11-01T12:00:00Z"));
        assert!(clock.force(&c, d, 40, "idle"));
        assert!(!clock.force(&c, d, 41, "idle"), "already closed");
        assert!(clock.force(&c, d + 2, 50, "deadline"));
        assert_eq!(clock.closed_through(&c), d + 2);
        assert_eq!(clock.forced_cut_of(&c, d).unwrap().offset, 40);
        assert_eq!(clock.forced_cut_of(&c, d + 1).unwrap().offset, 50);
        assert_eq!(clock.forced_cut_of(&c, d - 1).unwrap().offset, 40);
        assert_eq!(clock.forced_cut_of(&c, d - 2), None, "closed by event time");
        clock.prune_forced(d);
        assert_eq!(clock.state.forced.len(), 1);
    }

    #[test]
    fn a_forced_cut_stays_the_cut_of_its_days_when_event_time_catches_up() {
        let c = cfg();
        let d = day(2026, 11, 2);
        let mut clock = Clock::default();
        clock.observe(&c, ms("2026-11-02T12:00:00Z"));
        assert!(clock.force(&c, d, 40, "idle"));
        // Later records of 2 Nov (late, routed to 3 Nov), then event time passes 2 Nov.
        clock.observe(&c, ms("2026-11-03T00:30:00Z"));
        assert_eq!(clock.closed_through(&c), d);
        let cut = clock
            .forced_cut_of(&c, d)
            .expect("the idle cut closed 2 Nov");
        assert_eq!((cut.offset, cut.from_day), (40, d));
        assert_eq!(clock.forced_cut_of(&c, d - 1), None, "1 Nov closed by time");
    }

    #[test]
    fn idle_partitions_stop_holding_a_day_only_when_event_time_says_it_is_over() {
        let c = cfg();
        let d = day(2026, 11, 2);
        let mut clocks = BTreeMap::new();
        let mut busy = Clock::default();
        busy.observe(&c, ms("2026-11-02T20:00:00Z"));
        let mut quiet = Clock {
            at_end_since: Some(0),
            ..Clock::default()
        };
        quiet.observe(&c, ms("2026-11-01T09:00:00Z"));
        clocks.insert(0, busy);
        clocks.insert(1, quiet);
        let now = ms("2026-11-02T20:30:00Z");
        // Day 1 Nov is over by event time (partition 0): the idle partition 1 is cut.
        let cuts = forced_cuts(&c, &clocks, d - 1, now);
        assert_eq!(
            cuts,
            vec![ForceDecision {
                partition: 1,
                through_day: d - 1,
                rule: "idle"
            }]
        );
        // 2 Nov is not over by event time: nothing is forced, idle or not.
        assert!(forced_cuts(&c, &clocks, d, now).is_empty());
        // A partition that is not at its end is never cut by the idle rule.
        clocks.get_mut(&1).unwrap().at_end_since = None;
        assert!(forced_cuts(&c, &clocks, d - 1, now).is_empty());
    }

    #[test]
    fn the_deadline_closes_a_day_once_live_whatever_event_time_says() {
        let c = cfg();
        let d = day(2026, 11, 2);
        let mut clocks = BTreeMap::new();
        let mut lagging = Clock::default();
        lagging.observe(&c, ms("2026-11-02T10:00:00Z"));
        clocks.insert(0, lagging);
        let after_deadline = ms("2026-11-03T02:00:00Z");
        // Not live yet (catching up): the deadline waits.
        assert!(forced_cuts(&c, &clocks, d, after_deadline).is_empty());
        clocks.get_mut(&0).unwrap().reached_end = true;
        let cuts = forced_cuts(&c, &clocks, d, after_deadline);
        assert_eq!(cuts.len(), 1);
        assert_eq!((cuts[0].through_day, cuts[0].rule), (d, "deadline"));
        // A minute before the deadline, nothing.
        assert!(forced_cuts(&c, &clocks, d, ms("2026-11-03T01:59:00Z")).is_empty());
    }
}
