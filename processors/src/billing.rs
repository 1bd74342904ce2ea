//! Billing: a running bill per meter and billing period (DESIGN §4).
//!
//! A district's bulk (inflow) meter (`bulk_meters`) is no customer and gets no bill.
//!
//! Rules:
//! - **Period**: the calendar month in the tenant's time zone (`Tariff::time_zone`),
//!   from local midnight on the 1st to local midnight on the 1st of the next month.
//! - **Usage is a register delta, never a sum of messages**: usage(P) = C(end) −
//!   C(start), where C is the meter's continuous register (VEE's, across rollovers
//!   and exchanges) interpolated linearly between the actual reads around each
//!   boundary. Before the period ends, C(end) is the newest read's register (a
//!   running bill). A meter whose first read falls inside the period starts there.
//! - **Months without reads** (issue 10, case 5): when the meter's reads jump over
//!   whole months, the kept periods are not adjacent; the months between are
//!   *skipped months*, derived from the two periods around them whenever a bill is
//!   made (never stored: `meter_state` keeps its shape). Each is billed with the
//!   same rule — C(end) − C(start) on the line between the newest read before it and
//!   the oldest read after it — and marked `estimated`; a late read inside one makes
//!   it an ordinary period of the view (trued up). At most [`MAX_SKIPPED_MONTHS`]
//!   (24) are billed between two reads, the newest ones. Skipped lines are emitted
//!   again whenever a read around them changes (bills are upserted by tenant, meter
//!   and period, so a repeated line is harmless).
//! - **Trailing months of suspect reads**: the months after the newest kept period
//!   up to the month of the meter's newest read, when every read after the period
//!   is suspect, are billed as months without reads from the newest actual read:
//!   their fixed charge, no litres until a read after them is accepted (then they
//!   are trued up), `estimated`. The meter reported in them; and a month billed
//!   while its reads were actual keeps a line a later decision (an order, a late
//!   read) would otherwise leave stale, where the same data in order bills it so.
//! - **Leading months of suspect reads**: the months from the month of the oldest
//!   read in VEE's window up to the meter's first period, when every read the meter
//!   sent in them is suspect and none came before (a first read an operator
//!   rejected, or that an exchange recorded before it does not fit), owe nothing:
//!   each gets a line of 0 L, no fixed charge, `estimated`. The meter's first
//!   period, and its prorated fixed charge, still start at its first actual read.
//!   Without them, a month billed while such a read still counted kept that line,
//!   which the same data in order never makes.
//! - Only `Actual` reads count: `Suspect` reads are excluded; `Estimated` rows are
//!   redundant (they are the same linear interpolation), so an estimate is *trued up*
//!   the moment an actual read near the boundary arrives.
//! - **Order-free**: per period, billing keeps four reads — the newest at or before
//!   the start, the oldest and newest within, the oldest at or after the end — each
//!   a minimum or maximum over reads, so a bill depends only on the *set* of actual
//!   reads, not on their order, duplication or message boundaries (within the two
//!   periods kept: the current one and the one before it, and the skipped months
//!   between them; older reads cannot change a bill).
//! - **Re-decided reads**: VEE decides reads in time order and may re-decide the
//!   reads of its window when a late read arrives, re-emitting their rows
//!   ([`crate::vee`]). A minimum or maximum cannot forget a read, so only *settled*
//!   reads (at or before VEE's settled point) are folded into the periods; the
//!   window's actual reads are kept apart as *open* reads, one per `ts`, each
//!   re-emitted row replacing its own (an actual row with its continuous register, a
//!   suspect one removing it), and are folded into a copy of the periods whenever a
//!   bill is made. So every bill is the one the reads' final decisions give, each
//!   litre billed once, whatever the arrival order. A bill line is emitted for each
//!   period whose boundary reads changed in the batch — the view's current and
//!   previous periods, the settled periods open reads moved it past, and the skipped
//!   months between them — unless its late window has passed (below).
//! - **Charges**: increasing-block tiers in m³ (litres in a tier × price per m³ /
//!   1000, rounded half up to the minor unit, per tier) plus the fixed charge for the
//!   meter's size. The amount is the sum of the lines, so tiers always add up to it
//!   and it never decreases when usage grows.
//! - **Prorated fixed charge**: the meter's first period (no actual read before it)
//!   is charged for the local days (tenant's zone) from the day of its first actual
//!   read to the month's end: fixed × days in service / days in the month, rounded
//!   half up to the minor unit. Every later period, skipped months included, is
//!   charged in full for the days it was in service. A recorded exchange that gives
//!   the new meter's size ([`VeeState::sizes`]) splits its period: the days before
//!   the exchange's local day at the old size's charge, the rest at the new one's,
//!   rounded once; its period, and every later one billed so far (they are charged
//!   at the new size), are billed again when the order arrives. An exchange
//!   without a size does not prorate: the meter key is the service point, which
//!   stays in service.
//!
//! [`VeeState::sizes`]: meterflow_model::vee::VeeState::sizes
//! - **Final**: once the service clock (`SealedBatch::now_ms`, or the sweep's time)
//!   is `bill_close_after_ms` past the start of the current period — the previous
//!   period's end, unless skipped months lie between them — the bills of the
//!   previous period and of those skipped months (open reads included) are emitted
//!   one last time with `final: true` and forgotten; a read of those months arriving
//!   later does not bring them back. They close together because a late read in a
//!   skipped month changes the previous period's end too. A settled period pushed
//!   out by a newer one is billed final with the skipped months after it. A bill
//!   whose boundary was interpolated across a gap longer than 1.5 expected intervals
//!   is `estimated`, and so is one with no read of its own.
//!
//! - **Open reads are rebuilt, not persisted**: `meter_state` keeps the periods only;
//!   when a shard hydrates a meter, VEE rebuilds its window from the stored rows and
//!   the open reads are the actual rows of that window, with their continuous
//!   registers ([`Processor::rehydrate`]; no bill is emitted).
//!
//! Output: one [`BillLine`] per touched period (skipped months included) of each
//! meter in the batch.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use meterflow_model::billing::{BillingState, PeriodReads, RegisterPoint};
use meterflow_model::vee::{SizeChange, VeeState, size_at};
use meterflow_model::{
    BillLine, MeterKey, MeterSize, MeterState, OrderAction, Outputs, ProcessorsConfig, Quality,
    SealedBatch, StoredReading, Tariff, TenantId, TenantProcessing, TierCharge,
};

use crate::Processor;
use crate::by_time::{ByTime, insert_at};
use crate::calendar::{LocalCalendar, LocalSpan};
use crate::tenants::{PerTenant, ProcessorsConfigError, TenantDirectory, TenantEntry};

/// Litres in a cubic metre: tier bounds and prices are per m³.
const LITRES_PER_M3: u128 = 1_000;

struct TenantBilling {
    calendar: LocalCalendar,
}

/// The billing stage; its per-meter state is `MeterState::billing`.
pub struct BillingProcessor {
    tenants: PerTenant<TenantBilling>,
    close_after_ms: i64,
}

impl BillingProcessor {
    /// Billing with a tariff per tenant and one for every other tenant.
    pub fn new(
        tariffs: HashMap<TenantId, Tariff>,
        default_tariff: Tariff,
    ) -> Result<Self, ProcessorsConfigError> {
        let config = ProcessorsConfig {
            defaults: TenantProcessing {
                tariff: default_tariff,
                ..TenantProcessing::default()
            },
            tenants: tariffs
                .into_iter()
                .map(|(tenant, tariff)| {
                    let settings = TenantProcessing {
                        tariff,
                        ..TenantProcessing::default()
                    };
                    (tenant, settings)
                })
                .collect(),
            ..ProcessorsConfig::default()
        };
        Ok(Self::with_directory(TenantDirectory::resolve(&config)?))
    }

    pub fn with_directory(directory: Arc<TenantDirectory>) -> Self {
        let close_after_ms = directory.bill_close_after_ms;
        Self {
            tenants: PerTenant::new(directory, |entry| TenantBilling {
                calendar: entry.calendar.clone(),
            }),
            close_after_ms,
        }
    }
}

/// What a bill line is computed from, besides the period.
struct MeterTerms<'a> {
    key: &'a MeterKey,
    tariff: &'a Tariff,
    /// The meter's configured size: before its first recorded size change, and with
    /// none.
    size: MeterSize,
    /// Sizes recorded with the meter's exchanges ([`VeeState::sizes`]).
    ///
    /// [`VeeState::sizes`]: meterflow_model::vee::VeeState::sizes
    sizes: &'a [SizeChange],
    /// Interpolation across more than this marks a bill estimated.
    long_gap_ms: i64,
}

impl<'a> MeterTerms<'a> {
    fn new(entry: &'a TenantEntry, key: &'a MeterKey, sizes: &'a [SizeChange]) -> Self {
        Self {
            key,
            tariff: &entry.settings.tariff,
            size: entry.settings.meter_size(&key.meter),
            sizes,
            long_gap_ms: entry.settings.vee.expected_interval_ms * 3 / 2,
        }
    }
}

impl Processor for BillingProcessor {
    fn name(&self) -> &'static str {
        "billing"
    }

    fn process(&mut self, batch: &mut SealedBatch, out: &mut Outputs) {
        for meter in &mut batch.meters {
            let (entry, runtime) = self.tenants.get(&meter.key.tenant);
            if entry.settings.is_bulk(&meter.key.meter) {
                continue;
            }
            let MeterState { billing, vee, .. } = &mut meter.state;
            let terms = MeterTerms::new(entry, &meter.key, &vee.sizes);
            // A recorded exchange may change the size, so the fixed charge, of its
            // period and of every later one (the size holds from the exchange on),
            // whether or not it moves their reads.
            let orders = &meter.orders;
            let exchanged = |period: &PeriodReads| {
                orders.iter().any(|order| {
                    matches!(order.action, OrderAction::Exchange { .. }) && order.ts < period.end_ms
                })
            };
            let calendar = &mut runtime.calendar;
            let before_view = with_open_reads(billing, calendar);
            let before = before_view.billable(calendar);
            let leading_before = before_view.leading(&before, calendar);
            for row in &meter.readings {
                take_row(billing, vee, row, calendar, &terms, out);
            }
            settle_open_reads(billing, vee, calendar, &terms, out);
            billing.reported_from = first_reported(billing, vee);
            let after = with_open_reads(billing, calendar);
            finalise_previous(
                billing,
                &after.periods,
                batch.now_ms,
                self.close_after_ms,
                &terms,
                calendar,
                out,
            );
            // A period whose stretch has closed was billed final just now, or will be
            // when its reads settle: no running line for it.
            let billable = after.billable(calendar);
            for (period, stretch_end) in &billable {
                if batch.now_ms < stretch_end.saturating_add(self.close_after_ms)
                    && (exchanged(period) || !before.iter().any(|(seen, _)| seen == period))
                {
                    out.bills.push(bill_line(&terms, period, false, calendar));
                }
            }
            for month in after.leading(&billable, calendar) {
                if !leading_before.contains(&month) {
                    out.bills.push(owing_nothing(&terms, &month));
                }
            }
        }
    }

    /// The open reads are the actual rows VEE made of its rebuilt window, after the
    /// settled point (the periods hold the settled ones).
    fn rehydrate(&mut self, key: &MeterKey, state: &mut MeterState, rows: &mut Vec<StoredReading>) {
        if self.tenants.get(&key.tenant).0.settings.is_bulk(&key.meter) {
            return;
        }
        let settled = state.vee.settled_ts();
        let vee = &state.vee;
        state.billing.reported_from = first_reported(&state.billing, vee);
        state.billing.reported_to = rows
            .iter()
            .filter(|row| row.quality.is_from_meter())
            .map(|row| row.reading.ts)
            .max();
        state.billing.open = rows
            .iter()
            .filter(|row| {
                row.quality == Quality::Actual && settled.is_none_or(|s| row.reading.ts > s)
            })
            .map(|row| RegisterPoint {
                ts: row.reading.ts,
                creg: vee.continuous_register(row.reading.ts, row.reading.reg),
            })
            .collect();
    }

    fn sweep_meter(
        &mut self,
        now_ms: i64,
        key: &MeterKey,
        state: &mut MeterState,
        out: &mut Outputs,
    ) -> bool {
        let (entry, runtime) = self.tenants.get(&key.tenant);
        let calendar = &mut runtime.calendar;
        let Some(view) = closable_view(&state.billing, calendar) else {
            return false;
        };
        let terms = MeterTerms::new(entry, key, &state.vee.sizes);
        finalise_previous(
            &mut state.billing,
            &view.periods,
            now_ms,
            self.close_after_ms,
            &terms,
            calendar,
            out,
        )
    }

    /// A finished period is closed `close_after_ms` after the next one starts
    /// ([`finalise_previous`]); nothing else in the sweep depends on the time.
    fn sweep_due(&mut self, key: &MeterKey, state: &MeterState) -> Option<i64> {
        let calendar = &mut self.tenants.get(&key.tenant).1.calendar;
        let view = closable_view(&state.billing, calendar)?;
        let (Some(_), Some(next)) = (view.periods.previous, view.periods.current) else {
            return None;
        };
        Some(next.start_ms.saturating_add(self.close_after_ms))
    }
}

/// Takes one of VEE's rows: an actual read of the window replaces the open read at
/// its `ts`, a suspect one removes it; an actual read at or before VEE's settled
/// point (late beyond the window, or settled in this batch) is folded for good.
fn take_row(
    billing: &mut BillingState,
    vee: &VeeState,
    row: &StoredReading,
    calendar: &mut LocalCalendar,
    terms: &MeterTerms<'_>,
    out: &mut Outputs,
) {
    if row.quality == Quality::Estimated {
        return;
    }
    let ts = row.reading.ts;
    if row.quality.is_from_meter() {
        billing.reported_to = billing.reported_to.max(Some(ts));
    }
    let open = &mut billing.open;
    let at = open.find_time(ts, |p| p.ts);
    if let Ok(i) = at {
        open.remove(i);
    }
    if row.quality != Quality::Actual {
        return;
    }
    let point = RegisterPoint {
        ts,
        creg: vee.continuous_register(ts, row.reading.reg),
    };
    if vee.settled_ts().is_some_and(|settled| ts <= settled) {
        settle_point(billing, point, calendar, terms, out);
    } else {
        let i = at.unwrap_or_else(|i| i);
        insert_at(&mut billing.open, i, point);
    }
}

/// Folds the open reads VEE has settled into the periods for good.
fn settle_open_reads(
    billing: &mut BillingState,
    vee: &VeeState,
    calendar: &mut LocalCalendar,
    terms: &MeterTerms<'_>,
    out: &mut Outputs,
) {
    let Some(settled) = vee.settled_ts() else {
        return;
    };
    while let Some(&point) = billing.open.front()
        && point.ts <= settled
    {
        billing.open.pop_front();
        settle_point(billing, point, calendar, terms, out);
    }
}

fn settle_point(
    billing: &mut BillingState,
    point: RegisterPoint,
    calendar: &mut LocalCalendar,
    terms: &MeterTerms<'_>,
    out: &mut Outputs,
) {
    if let Some(pushed_out) = observe(billing, point, calendar)
        && let Some(next) = billing.previous
    {
        out.bills
            .push(bill_line(terms, &pushed_out, true, calendar));
        for month in skipped_months(&pushed_out, &next, calendar) {
            out.bills.push(bill_line(terms, &month, true, calendar));
        }
    }
}

/// The periods as bills see them: the settled reads with the open reads folded in.
struct BillView {
    periods: BillingState,
    /// Settled periods the open reads moved the view past (older than
    /// `periods.previous`), ascending: their boundary reads can still change.
    passed: Vec<PeriodReads>,
}

impl BillView {
    /// Every period a line can be made of, ascending — the kept periods and the
    /// skipped months between them — each with the end of its *stretch*: the start
    /// of the next kept period (`i64::MAX` for the current one). A kept period and
    /// the skipped months after it are interpolated towards the same read, so they
    /// close together, a late window after the stretch ends.
    fn billable(&self, calendar: &mut LocalCalendar) -> Vec<(PeriodReads, i64)> {
        let mut kept = (self.passed.iter())
            .chain(&self.periods.previous)
            .chain(&self.periods.current)
            .copied()
            .peekable();
        let mut billable = Vec::with_capacity(self.passed.len() + 2);
        while let Some(period) = kept.next() {
            let Some(next) = kept.peek() else {
                billable.push((period, i64::MAX));
                billable.extend(
                    trailing_months(&period, self.periods.reported_to, calendar)
                        .into_iter()
                        .map(|month| (month, i64::MAX)),
                );
                break;
            };
            billable.push((period, next.start_ms));
            for month in skipped_months(&period, next, calendar) {
                billable.push((month, next.start_ms));
            }
        }
        billable
    }

    /// The meter's *leading months*: from the month of the oldest read in VEE's
    /// window up to its first billable period (through the month of its newest read
    /// when it has none), when no actual read of the meter falls in them — every read
    /// the meter sent in them was rejected or does not fit its register, and none
    /// came before.
    fn leading(
        &self,
        billable: &[(PeriodReads, i64)],
        calendar: &mut LocalCalendar,
    ) -> Vec<PeriodReads> {
        let Some(from) = self.periods.reported_from else {
            return Vec::new();
        };
        let until = match billable.first() {
            // The common case: the oldest read is in the first period or after it.
            Some((first, _)) if from >= first.start_ms => return Vec::new(),
            Some((first, _)) => first.start_ms,
            None => {
                calendar
                    .month(self.periods.reported_to.unwrap_or(from).max(from))
                    .end_ms
            }
        };
        months_without_reads(
            calendar.month(from).start_ms,
            until,
            std::iter::empty(),
            calendar,
        )
    }
}

/// Where leading months could start ([`BillingState::reported_from`]): the oldest
/// read in VEE's window, actual or suspect — none once an actual read has settled
/// (it is older than the window, and the periods start at or before it).
fn first_reported(billing: &BillingState, vee: &VeeState) -> Option<i64> {
    if billing.current.is_some() {
        return None;
    }
    vee.window.front().map(|read| read.reading.ts)
}

/// The view of the periods. Open reads are all newer than settled ones and
/// ascending, and within one month only the month's first and last read can be a
/// boundary read of any period, so those two per month are folded (the same result
/// as folding every open read).
fn with_open_reads(billing: &BillingState, calendar: &mut LocalCalendar) -> BillView {
    let mut view = BillView {
        periods: BillingState {
            current: billing.current,
            previous: billing.previous,
            open: VecDeque::new(),
            reported_to: billing.reported_to,
            reported_from: billing.reported_from,
        },
        passed: Vec::new(),
    };
    let open = &billing.open;
    let mut month_start = 0;
    while let Some(first) = open.get(month_start) {
        let month_end = calendar.month(first.ts).end_ms;
        // Every read before `month_start` is in an earlier month.
        let next_month = open.count_before(month_end, |p| p.ts);
        for point in [first, &open[next_month - 1]] {
            view.passed
                .extend(observe(&mut view.periods, *point, calendar));
        }
        month_start = next_month;
    }
    view
}

/// The view of a meter's periods for the sweep, when one of them can close: there is
/// a previous period, or open reads that may make one.
fn closable_view(billing: &BillingState, calendar: &mut LocalCalendar) -> Option<BillView> {
    if billing.previous.is_none() && billing.open.is_empty() {
        return None;
    }
    Some(with_open_reads(billing, calendar))
}

/// Most months without reads billed between two kept periods: a meter silent for
/// longer gets lines for the 24 months before the period that ended its silence,
/// none for the months before those. Two years of estimates is as far as an
/// interpolation between two reads is worth sending a customer, and it bounds the
/// lines one read can make.
pub const MAX_SKIPPED_MONTHS: usize = 24;

/// The months strictly between two kept periods (no read of the meter falls in
/// them, in the kept state), the newest [`MAX_SKIPPED_MONTHS`] of them, ascending,
/// each with the boundary reads the two periods know: a skipped month is billed
/// by linear interpolation on the continuous register between the newest read
/// before it and the oldest read after it. Derived whenever needed, never stored.
fn skipped_months(
    older: &PeriodReads,
    newer: &PeriodReads,
    calendar: &mut LocalCalendar,
) -> Vec<PeriodReads> {
    let known = points(older).chain(points(newer));
    months_without_reads(older.end_ms, newer.start_ms, known, calendar)
}

/// The months after the newest kept period up to the month of the meter's newest
/// read, when that read and every one after the period is suspect (pending
/// exceptions, or a new register they do not fit): the meter reported in them, so
/// each is billed as a month without reads — its fixed charge, and the usage the
/// register line gives from the newest actual read, nothing until a read after it
/// is accepted (then it is trued up like any month without reads). The newest
/// [`MAX_SKIPPED_MONTHS`] of them, ascending. Without them, a month billed while
/// its reads were actual and turned suspect by a later decision (a late order or
/// read) kept its last line, which the same data in order never makes.
fn trailing_months(
    newest: &PeriodReads,
    reported_to: Option<i64>,
    calendar: &mut LocalCalendar,
) -> Vec<PeriodReads> {
    let Some(reported_to) = reported_to.filter(|ts| *ts >= newest.end_ms) else {
        return Vec::new();
    };
    let until = calendar.month(reported_to).end_ms;
    months_without_reads(newest.end_ms, until, points(newest), calendar)
}

/// The local months from `from_ms` to `until_ms` (month boundaries), the newest
/// [`MAX_SKIPPED_MONTHS`] of them, ascending, each with the boundary reads `known`
/// gives it.
fn months_without_reads(
    from_ms: i64,
    until_ms: i64,
    known: impl Iterator<Item = RegisterPoint> + Clone,
    calendar: &mut LocalCalendar,
) -> Vec<PeriodReads> {
    let mut months = Vec::new();
    let mut end_ms = until_ms;
    while end_ms > from_ms && months.len() < MAX_SKIPPED_MONTHS {
        let span = calendar.month(end_ms - 1);
        let mut month = new_period(span);
        for point in known.clone() {
            fold_point(&mut month, point);
        }
        months.push(month);
        end_ms = span.start_ms;
    }
    months.reverse();
    months
}

fn new_period(span: LocalSpan) -> PeriodReads {
    PeriodReads {
        year: span.year,
        month: span.month,
        start_ms: span.start_ms,
        end_ms: span.end_ms,
        before: None,
        first: None,
        last: None,
        after: None,
    }
}

fn points(period: &PeriodReads) -> impl Iterator<Item = RegisterPoint> + Clone {
    [period.before, period.first, period.last, period.after]
        .into_iter()
        .flatten()
}

/// Folds one actual read into the meter's periods, moving to a new period when the
/// read is past the current one. Returns a period that had to be dropped (bill it
/// as final).
fn observe(
    billing: &mut BillingState,
    point: RegisterPoint,
    calendar: &mut LocalCalendar,
) -> Option<PeriodReads> {
    let month = calendar.month(point.ts);
    let mut pushed_out = None;
    match billing.current {
        None => billing.current = Some(new_period(month)),
        Some(current) if month.start_ms > current.start_ms => {
            let mut next = new_period(month);
            next.before = points(&current).filter(|p| p.ts <= next.start_ms).max();
            pushed_out = billing.previous.replace(current);
            billing.current = Some(next);
        }
        Some(current)
            if month.start_ms < current.start_ms
                && billing.previous.is_none()
                && current.before.is_none_or(|b| b.ts >= current.start_ms) =>
        {
            // A read of an earlier month arrived after reads of this month, and no
            // read before this month was seen (else its month was billed final): the
            // meter's earliest period, the months between are skipped months.
            let mut previous = new_period(month);
            previous.after = points(&current).filter(|p| p.ts >= previous.end_ms).min();
            billing.previous = Some(previous);
        }
        Some(_) => {}
    }
    for period in [&mut billing.current, &mut billing.previous]
        .into_iter()
        .flatten()
    {
        fold_point(period, point);
    }
    pushed_out
}

/// Joins a read into a period's boundary reads.
fn fold_point(period: &mut PeriodReads, point: RegisterPoint) {
    if point.ts <= period.start_ms {
        period.before = period.before.max(Some(point));
    }
    if period.start_ms <= point.ts && point.ts <= period.end_ms {
        period.first = Some(period.first.map_or(point, |f| f.min(point)));
        period.last = period.last.max(Some(point));
    }
    if point.ts >= period.end_ms {
        period.after = Some(period.after.map_or(point, |a| a.min(point)));
    }
}

/// Emits the final bills of the previous period and of the skipped months after it
/// (as `view`, the periods with the open reads folded in, has them) once the late
/// window has passed after the start of the current period — the end of the
/// previous period, unless months without reads follow it: their usage and the
/// previous period's end are interpolated towards the same read, which a late read
/// in those months still changes, so they all close together. Then forgets them:
/// when only open reads had moved on to the next period, the settled state moves
/// there too, keeping the read before its start.
fn finalise_previous(
    billing: &mut BillingState,
    view: &BillingState,
    now_ms: i64,
    close_after_ms: i64,
    terms: &MeterTerms<'_>,
    calendar: &mut LocalCalendar,
    out: &mut Outputs,
) -> bool {
    let (Some(previous), Some(next)) = (view.previous, view.current) else {
        return false;
    };
    if now_ms < next.start_ms.saturating_add(close_after_ms) {
        return false;
    }
    out.bills.push(bill_line(terms, &previous, true, calendar));
    for month in skipped_months(&previous, &next, calendar) {
        out.bills.push(bill_line(terms, &month, true, calendar));
    }
    if let Some(settled) = billing.current.filter(|c| c.start_ms == previous.start_ms) {
        billing.current = Some(PeriodReads {
            before: points(&settled).filter(|p| p.ts <= next.start_ms).max(),
            first: None,
            last: None,
            after: None,
            ..next
        });
    }
    billing.previous = None;
    true
}

/// The continuous register at `t`, on the line through `a` and `b`.
fn interpolate(a: RegisterPoint, b: RegisterPoint, t: i64) -> u64 {
    if b.ts <= a.ts || b.creg <= a.creg {
        return a.creg;
    }
    let elapsed = (t.clamp(a.ts, b.ts) - a.ts) as u128;
    a.creg + (u128::from(b.creg - a.creg) * elapsed / (b.ts - a.ts) as u128) as u64
}

/// Usage of a period in litres, and whether it is estimated: a boundary was
/// interpolated across a long gap, or the period has no read of its own (a skipped
/// month, interpolated end to end). The start is the first read when no read
/// precedes it (the meter's first period), the end the last read when none follows
/// it (a running bill).
pub fn period_usage(period: &PeriodReads, long_gap_ms: i64) -> (u64, bool) {
    let boundary = |a: Option<RegisterPoint>, b: Option<RegisterPoint>, t: i64| match (a, b) {
        (Some(a), Some(b)) => (
            interpolate(a, b, t),
            a.ts < t && t < b.ts && b.ts - a.ts > long_gap_ms,
        ),
        (Some(only), None) | (None, Some(only)) => (only.creg, false),
        (None, None) => (0, false),
    };
    let (start, start_estimated) = boundary(
        period.before,
        period.first.or(period.after),
        period.start_ms,
    );
    let (end, end_estimated) = boundary(period.last.or(period.before), period.after, period.end_ms);
    // No read of its own: a skipped or trailing month, interpolated or held.
    let skipped = period.first.is_none() && period.before.is_some();
    (
        end.saturating_sub(start),
        start_estimated || end_estimated || skipped,
    )
}

/// The fixed charge of a period: the full charge for the meter's size, prorated to
/// the local days of each size the period saw and to the days in service — in the
/// meter's first period (no read before it) from the day of its first read — of the
/// month's local days, rounded half up to the minor unit once. A size recorded with
/// an exchange holds from the exchange's local day on (that day is the new meter's).
fn fixed_charge(terms: &MeterTerms<'_>, period: &PeriodReads, calendar: &mut LocalCalendar) -> u64 {
    let full = |size| u128::from(terms.tariff.fixed_charge_for(size));
    let first_day = match (period.before, period.first) {
        (None, Some(first)) => calendar.day_of_month(first.ts),
        _ => 1,
    };
    let changes = terms
        .sizes
        .iter()
        .filter(|change| period.start_ms < change.from_ts && change.from_ts < period.end_ms);
    let mut size = size_at(terms.sizes, period.start_ms, terms.size);
    if first_day == 1 && changes.clone().next().is_none() {
        return u64::try_from(full(size)).unwrap_or(u64::MAX);
    }
    // The month's length from its number, a day from the UTC offset: building each
    // day's span (a time-zone lookup each, alternating so that the calendar's
    // one-day cache never hit) was a tenth of a seal for meters in their first
    // period.
    let days = u128::from(days_in_month(period.year, period.month));
    let mut day = u128::from(first_day);
    let mut charged = 0u128;
    for change in changes {
        let from = u128::from(calendar.day_of_month(change.from_ts)).max(day);
        charged += full(size) * (from - day);
        (day, size) = (from, change.size);
    }
    charged += full(size) * (days + 1 - day);
    u64::try_from((charged * 2 + days) / (2 * days)).unwrap_or(u64::MAX)
}

/// Days in a month of the proleptic Gregorian calendar (31 for a month out of range,
/// which a period never is).
fn days_in_month(year: i16, month: u8) -> u8 {
    let month = i8::try_from(month).unwrap_or(1);
    jiff::civil::Date::new(year, month, 1).map_or(31, |first| first.days_in_month() as u8)
}

/// Tier lines and their total for `usage_l` litres.
pub fn tier_charges(tariff: &Tariff, usage_l: u64) -> Vec<TierCharge> {
    let mut lower = 0u64;
    tariff
        .tiers
        .iter()
        .map(|tier| {
            let upper = tier
                .up_to_m3
                .map_or(u64::MAX, |m3| m3.saturating_mul(LITRES_PER_M3 as u64));
            let in_tier = usage_l.min(upper).saturating_sub(lower);
            lower = upper;
            let amount = (u128::from(in_tier) * u128::from(tier.price_per_m3) + LITRES_PER_M3 / 2)
                / LITRES_PER_M3;
            TierCharge {
                usage_l: in_tier,
                price_per_m3: tier.price_per_m3,
                amount_cents: u64::try_from(amount).unwrap_or(u64::MAX),
            }
        })
        .collect()
}

fn bill_line(
    terms: &MeterTerms<'_>,
    period: &PeriodReads,
    final_: bool,
    calendar: &mut LocalCalendar,
) -> BillLine {
    let (usage_l, estimated) = period_usage(period, terms.long_gap_ms);
    let fixed_cents = fixed_charge(terms, period, calendar);
    line_of(terms, period, usage_l, fixed_cents, estimated, final_)
}

/// The line of a leading month ([`BillView::leading`]): the meter reported in it,
/// but no read of it counts and none came before, so nothing is owed — 0 L, no
/// fixed charge, `estimated`. Without it, a month billed while such a read still
/// counted (before an operator rejected it, or an exchange recorded before it made
/// it suspect) kept that line, which the same data in order never makes.
fn owing_nothing(terms: &MeterTerms<'_>, month: &PeriodReads) -> BillLine {
    line_of(terms, month, 0, 0, true, false)
}

/// A bill line of `usage_l` litres (charged by the tariff's tiers) and a fixed charge.
fn line_of(
    terms: &MeterTerms<'_>,
    period: &PeriodReads,
    usage_l: u64,
    fixed_cents: u64,
    estimated: bool,
    final_: bool,
) -> BillLine {
    let tiers = tier_charges(terms.tariff, usage_l);
    let amount_cents = tiers
        .iter()
        .fold(fixed_cents, |sum, t| sum.saturating_add(t.amount_cents));
    BillLine {
        tenant: terms.key.tenant.to_string(),
        meter: terms.key.meter.to_string(),
        period: period_label(period.year, period.month),
        currency: terms.tariff.currency.clone(),
        usage_l,
        tiers,
        fixed_cents,
        amount_cents,
        estimated,
        final_,
    }
}

/// `YYYY-MM`, as `format!("{year:04}-{month:02}")` writes it — without the formatting
/// machinery in the common case, a line per touched period of every meter of a batch:
/// seven ASCII bytes copied into one allocation of their size (collecting `char`s
/// grew the string push by push).
fn period_label(year: i16, month: u8) -> String {
    match (u16::try_from(year), month) {
        (Ok(year @ 0..=9999), 1..=12) => {
            let digit = |n: u16| b'0' + (n % 10) as u8;
            let month = u16::from(month);
            let label = [
                digit(year / 1000),
                digit(year / 100),
                digit(year / 10),
                digit(year),
                b'-',
                digit(month / 10),
                digit(month),
            ];
            String::from_utf8_lossy(&label).into_owned()
        }
        _ => format!("{year:04}-{month:02}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn period_labels_are_what_format_writes() {
        for (year, month) in [
            (2026, 1),
            (2026, 12),
            (999, 7),
            (0, 1),
            (9999, 12),
            (-1, 3),
            (10_000, 5),
            (2026, 0),
            (2026, 13),
        ] {
            assert_eq!(period_label(year, month), format!("{year:04}-{month:02}"));
        }
    }

    #[test]
    fn tiers_fill_in_order() {
        let tariff = Tariff::default(); // 1.50 to 10 m³, 2.50 to 30 m³, 4.00 above
        let lines = tier_charges(&tariff, 12_345);
        let usage: Vec<_> = lines.iter().map(|t| t.usage_l).collect();
        assert_eq!(usage, vec![10_000, 2_345, 0]);
        // 10 m³ × 150 = 1500; 2.345 m³ × 250 = 586.25 → 586.
        let amounts: Vec<_> = lines.iter().map(|t| t.amount_cents).collect();
        assert_eq!(amounts, vec![1_500, 586, 0]);
    }

    #[test]
    fn interpolation_splits_an_interval_across_the_boundary() {
        let period = PeriodReads {
            year: 2025,
            month: 1,
            start_ms: 1_000,
            end_ms: 2_000,
            before: Some(RegisterPoint { ts: 900, creg: 100 }),
            first: Some(RegisterPoint {
                ts: 1_100,
                creg: 300,
            }),
            last: Some(RegisterPoint {
                ts: 1_900,
                creg: 1_100,
            }),
            after: Some(RegisterPoint {
                ts: 2_100,
                creg: 1_300,
            }),
        };
        // C(start) = 100 + 200 × 100/200 = 200; C(end) = 1100 + 200 × 100/200 = 1200.
        assert_eq!(period_usage(&period, 10_000), (1_000, false));
        assert_eq!(period_usage(&period, 100), (1_000, true));
    }

    #[test]
    fn the_first_period_prorates_the_fixed_charge_half_up() {
        let mut calendar = LocalCalendar::for_zone_name("UTC").unwrap();
        let key = MeterKey::new("demo".try_into().unwrap(), "m".try_into().unwrap());
        let tariff = Tariff {
            fixed_charge: 1_005,
            ..Tariff::default()
        };
        let terms = MeterTerms {
            key: &key,
            tariff: &tariff,
            size: MeterSize::default(),
            sizes: &[],
            long_gap_ms: 5_400_000,
        };
        // November 2024 (UTC): 2024-11-01T00:00Z to 2024-12-01T00:00Z, 30 days.
        let november = new_period(calendar.month(1_730_419_200_000));
        let read = |ts| RegisterPoint { ts, creg: 7 };
        let first_read_on = |day: i64| PeriodReads {
            first: Some(read(november.start_ms + (day - 1) * 86_400_000 + 1)),
            ..november
        };
        let mut fixed = |period: PeriodReads| fixed_charge(&terms, &period, &mut calendar);
        // 10.05 × 1/30 = 0.335 → 0.34; × 30/30 in full; × 15/30 = 5.025 → 5.03.
        assert_eq!(fixed(first_read_on(30)), 34);
        assert_eq!(fixed(first_read_on(1)), 1_005);
        assert_eq!(fixed(first_read_on(16)), 503);
        // A read before the period: in service all month.
        let before = PeriodReads {
            before: Some(read(november.start_ms - 1)),
            ..first_read_on(30)
        };
        assert_eq!(fixed(before), 1_005);
    }

    #[test]
    fn a_size_recorded_with_an_exchange_splits_its_periods_fixed_charge_by_days() {
        let mut calendar = LocalCalendar::for_zone_name("UTC").unwrap();
        let key = MeterKey::new("demo".try_into().unwrap(), "m".try_into().unwrap());
        let tariff = Tariff {
            fixed_charge: 1_000,
            fixed_charge_by_size: [(MeterSize::Dn25, 3_000)].into(),
            ..Tariff::default()
        };
        // November 2024 (UTC), 30 days; the exchange at 09:30 on the 11th.
        let november = new_period(calendar.month(1_730_419_200_000));
        let on_day = |day: i64| november.start_ms + (day - 1) * 86_400_000;
        let exchange = SizeChange {
            from_ts: on_day(11) + 34_200_000,
            size: MeterSize::Dn25,
        };
        let terms = MeterTerms {
            key: &key,
            tariff: &tariff,
            size: MeterSize::Dn15,
            sizes: &[exchange],
            long_gap_ms: 5_400_000,
        };
        let read = |ts| Some(RegisterPoint { ts, creg: 7 });
        let in_service = PeriodReads {
            before: read(november.start_ms - 1),
            ..november
        };
        let december = new_period(calendar.month(november.end_ms));
        let october = new_period(calendar.month(november.start_ms - 1));
        let mut fixed = |period: PeriodReads| fixed_charge(&terms, &period, &mut calendar);
        // 10 days × 10.00 + 20 days × 30.00, of 30: 23.333… → 23.33.
        assert_eq!(fixed(in_service), 2_333);
        // First read on the 16th, after the exchange: 15 days of the new size only.
        let first_on_16th = PeriodReads {
            first: read(on_day(16)),
            ..november
        };
        assert_eq!(fixed(first_on_16th), 1_500);
        // December holds the new size all month.
        let december = PeriodReads {
            before: read(november.end_ms - 1),
            ..december
        };
        assert_eq!(fixed(december), 3_000);
        // October, before the exchange, the configured size.
        let october = PeriodReads {
            before: read(october.start_ms - 1),
            ..october
        };
        assert_eq!(fixed(october), 1_000);
    }

    #[test]
    fn a_skipped_month_is_interpolated_end_to_end_and_estimated() {
        let period = PeriodReads {
            year: 2025,
            month: 1,
            start_ms: 1_000,
            end_ms: 2_000,
            before: Some(RegisterPoint { ts: 500, creg: 0 }),
            first: None,
            last: None,
            after: Some(RegisterPoint {
                ts: 3_000,
                creg: 2_500,
            }),
        };
        // 1 L/ms: C(1000) = 500, C(2000) = 1500.
        assert_eq!(period_usage(&period, 1_000_000), (1_000, true));
    }

    proptest! {
        /// Folding only each month's first and last open read gives the periods (and
        /// the periods passed) that folding every open read gives.
        #[test]
        fn open_reads_fold_by_their_months_extremes(
            settled in proptest::collection::vec((0i64..40, 0u64..1_000), 0..5),
            open in proptest::collection::btree_map(40i64..120, 0u64..1_000, 0..40),
        ) {
            let mut calendar = LocalCalendar::for_zone_name("UTC").unwrap();
            let day = |d: i64| 1_735_689_600_000 + d * 86_400_000;
            let mut billing = BillingState::default();
            for (d, creg) in settled {
                observe(&mut billing, RegisterPoint { ts: day(d), creg }, &mut calendar);
            }
            let mut creg = 1_000;
            billing.open = open.iter().map(|(d, used)| {
                creg += used;
                RegisterPoint { ts: day(*d), creg }
            }).collect();
            let mut every = BillingState { open: VecDeque::new(), ..billing.clone() };
            let mut passed = Vec::new();
            for point in &billing.open {
                passed.extend(observe(&mut every, *point, &mut calendar));
            }
            let view = with_open_reads(&billing, &mut calendar);
            prop_assert_eq!(view.periods, every);
            prop_assert_eq!(view.passed, passed);
        }

        /// Tier amounts add up to the total, and the total never falls as usage grows.
        #[test]
        fn tiers_sum_to_the_total_and_grow_with_usage(
            bounds in proptest::collection::btree_set(1u64..500, 0..4),
            prices in proptest::collection::vec(0u64..10_000, 5),
            fixed in 0u64..5_000,
            usage in 0u64..2_000_000,
            more in 0u64..100_000,
        ) {
            let mut tiers: Vec<_> = bounds.iter().zip(&prices).map(|(b, p)| {
                meterflow_model::TariffTier { up_to_m3: Some(*b), price_per_m3: *p }
            }).collect();
            tiers.push(meterflow_model::TariffTier { up_to_m3: None, price_per_m3: prices[4] });
            let tariff = Tariff { tiers, fixed_charge: fixed, ..Tariff::default() };
            prop_assert!(tariff.problems().is_empty());
            let total = |usage_l| {
                let lines = tier_charges(&tariff, usage_l);
                prop_assert_eq!(lines.iter().map(|t| t.usage_l).sum::<u64>(), usage_l);
                Ok(fixed + lines.iter().map(|t| t.amount_cents).sum::<u64>())
            };
            let (a, b) = (total(usage)?, total(usage + more)?);
            prop_assert!(a <= b, "{} litres cost {} but {} litres cost {}", usage, a, usage + more, b);
        }
    }
}
