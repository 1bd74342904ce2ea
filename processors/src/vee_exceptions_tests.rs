//! VEE's validation exceptions and the operator orders that decide them: which
//! reads raise an exception and why, what later data resolves, and how each order
//! changes the rows billing reads.

use meterflow_model::exception::ExceptionRef;
use meterflow_model::time::DAY_MS;
use meterflow_model::vee::{MeterSize, SizeChange};
use meterflow_model::{
    Decision, ExceptionReason, ExceptionState, MeterState, OrderAction, Outputs, Quality,
    ReadException, RegisterOrder, StoredReading,
};

use super::VeeProcessor;
use crate::Processor;
use crate::calendar::HOUR_MS;
use crate::testing::{DAY0, batch_of, directory, stored};

const HOUR: i64 = HOUR_MS;

struct Run {
    rows: Vec<StoredReading>,
    state: MeterState,
    exceptions: Vec<ReadException>,
}

fn run_with(state: MeterState, readings: Vec<StoredReading>, orders: Vec<RegisterOrder>) -> Run {
    let mut batch = batch_of(state, readings);
    batch.meters[0].orders = orders;
    let mut out = Outputs::default();
    VeeProcessor::new(directory()).process(&mut batch, &mut out);
    let meter = batch.meters.pop().unwrap();
    Run {
        rows: meter.readings,
        state: meter.state,
        exceptions: out.exceptions,
    }
}

fn run(state: MeterState, readings: Vec<StoredReading>) -> Run {
    run_with(state, readings, Vec::new())
}

fn hourly(from_hour: i64, regs: &[u64]) -> Vec<StoredReading> {
    regs.iter()
        .enumerate()
        .map(|(i, reg)| stored(DAY0 + (from_hour + i as i64) * HOUR, *reg))
        .collect()
}

/// (hour, reason, state) of each exception note.
fn cases(exceptions: &[ReadException]) -> Vec<(i64, ExceptionReason, ExceptionState)> {
    exceptions
        .iter()
        .map(|e| ((e.ts - DAY0) / HOUR, e.reason, e.state))
        .collect()
}

/// (hour, quality, interval) of each row.
fn rows(rows: &[StoredReading]) -> Vec<(i64, Quality, Option<u64>)> {
    rows.iter()
        .map(|r| ((r.reading.ts - DAY0) / HOUR, r.quality, r.interval_l))
        .collect()
}

fn order(hour: i64, action: OrderAction) -> RegisterOrder {
    RegisterOrder {
        ts: DAY0 + hour * HOUR,
        action,
        decision: Decision {
            by: "ana".into(),
            why: "field visit".into(),
            at_ms: DAY0 + 100 * HOUR,
        },
        exception: None,
    }
}

#[test]
fn suspect_reads_raise_exceptions_with_their_reason() {
    let run = run(
        MeterState::default(),
        hourly(0, &[10_000, 9_000, 10_050, 900_000]),
    );
    assert_eq!(
        cases(&run.exceptions),
        vec![
            (1, ExceptionReason::Regression, ExceptionState::Open),
            (3, ExceptionReason::ImplausibleJump, ExceptionState::Open),
        ]
    );
    assert_eq!(run.exceptions[0].reg, 9_000);
    assert_eq!(run.exceptions[0].meter, "m1");
}

#[test]
fn an_exchange_the_next_reads_confirm_resolves_its_exceptions() {
    // A refurbished register at 2,500: two reads confirm it.
    let first = run(
        MeterState::default(),
        hourly(0, &[5_000_000, 5_000_100, 2_500]),
    );
    assert_eq!(
        cases(&first.exceptions),
        vec![(2, ExceptionReason::Regression, ExceptionState::Open)]
    );
    let second = run(first.state, hourly(3, &[2_550]));
    assert_eq!(
        cases(&second.exceptions),
        vec![(
            3,
            ExceptionReason::UnconfirmedExchange,
            ExceptionState::Open
        )]
    );
    let third = run(second.state, hourly(4, &[2_600]));
    assert_eq!(
        cases(&third.exceptions),
        vec![
            (2, ExceptionReason::Regression, ExceptionState::Resolved),
            (
                3,
                ExceptionReason::UnconfirmedExchange,
                ExceptionState::Resolved
            ),
        ]
    );
}

#[test]
fn a_late_read_that_explains_a_suspect_one_resolves_it() {
    // A new meter's second read (57 after 5,000,000) looks like a regression until
    // the new meter's first read (7, below the exchange threshold) arrives late and
    // the two confirm the exchange.
    let first = run(MeterState::default(), hourly(0, &[5_000_000]));
    let second = run(first.state, hourly(4, &[57]));
    assert_eq!(
        cases(&second.exceptions),
        vec![(4, ExceptionReason::Regression, ExceptionState::Open)]
    );
    let late = run(second.state, hourly(3, &[7]));
    assert_eq!(
        cases(&late.exceptions),
        vec![
            (3, ExceptionReason::Regression, ExceptionState::Resolved),
            (4, ExceptionReason::Regression, ExceptionState::Resolved),
        ]
    );
    assert_eq!(
        rows(&late.rows)[2..],
        [
            (3, Quality::Actual, Some(0)),
            (4, Quality::Actual, Some(50))
        ]
    );
}

#[test]
fn an_accepted_jump_is_billed_and_its_decision_recorded() {
    let first = run(MeterState::default(), hourly(0, &[1_000, 50_000, 50_100]));
    assert_eq!(rows(&first.rows)[1], (1, Quality::Suspect, None));
    let accepted = run_with(first.state, Vec::new(), vec![order(1, OrderAction::Accept)]);
    assert_eq!(
        rows(&accepted.rows),
        vec![
            (1, Quality::Actual, Some(49_000)),
            (2, Quality::Actual, Some(100))
        ]
    );
    // The read after it waited as the possible second read of an exchange; it is
    // plain growth now.
    assert_eq!(
        cases(&accepted.exceptions),
        vec![
            (
                1,
                ExceptionReason::ImplausibleJump,
                ExceptionState::Accepted
            ),
            (
                2,
                ExceptionReason::UnconfirmedExchange,
                ExceptionState::Resolved
            ),
        ]
    );
    assert_eq!(
        accepted.exceptions[0]
            .decision
            .as_ref()
            .map(|d| d.by.as_str()),
        Some("ana")
    );
    assert_eq!(accepted.state.vee.head.base.unwrap().creg, 50_100);
}

#[test]
fn a_rejected_read_stays_out_and_is_no_exchange_candidate() {
    // 2,500 then 2,550 and 2,600 would confirm an exchange; rejected, the first is
    // a glitch, and the two after it are judged against the old register.
    let first = run(MeterState::default(), hourly(0, &[5_000_000, 2_500]));
    let rejected = run_with(
        first.state,
        hourly(2, &[5_000_050]),
        vec![order(1, OrderAction::Reject)],
    );
    assert_eq!(
        rows(&rejected.rows),
        vec![(1, Quality::Suspect, None), (2, Quality::Actual, Some(50))]
    );
    assert_eq!(
        cases(&rejected.exceptions),
        vec![(1, ExceptionReason::Regression, ExceptionState::Rejected)]
    );
    assert!(rejected.state.vee.head.candidate.is_none());
}

#[test]
fn a_confirmed_exchange_bills_from_the_read_at_once() {
    // A register restarting at 2,500 would need two more reads to confirm.
    let first = run(
        MeterState::default(),
        hourly(0, &[5_000_000, 5_000_100, 2_500]),
    );
    let confirmed = run_with(
        first.state,
        Vec::new(),
        vec![order(2, OrderAction::ConfirmExchange)],
    );
    assert_eq!(rows(&confirmed.rows), vec![(2, Quality::Actual, Some(0))]);
    assert_eq!(
        cases(&confirmed.exceptions),
        vec![(
            2,
            ExceptionReason::Regression,
            ExceptionState::ExchangeConfirmed
        )]
    );
    let next = run(confirmed.state, hourly(3, &[2_560]));
    assert_eq!(rows(&next.rows), vec![(3, Quality::Actual, Some(60))]);
    assert_eq!(next.state.vee.head.base.unwrap().creg, 5_000_160);
}

#[test]
fn a_recorded_exchange_bills_the_final_read_and_the_new_register_from_its_initial_read() {
    // The work order: removed at 2:30 reading 5,000,180; the new meter read 2,500.
    let first = run(MeterState::default(), hourly(0, &[5_000_000, 5_000_100]));
    let mut exchange = order(
        2,
        OrderAction::Exchange {
            final_reg: Some(5_000_180),
            initial_reg: 2_500,
            size: None,
        },
    );
    exchange.ts += HOUR / 2;
    let recorded = run_with(first.state, Vec::new(), vec![exchange]);
    assert!(recorded.rows.is_empty(), "nothing to re-decide yet");
    assert_eq!(recorded.state.vee.orders.len(), 1);
    // The work order is on record in the queue's history, decided, with its decision.
    assert_eq!(
        cases(&recorded.exceptions),
        vec![(
            2,
            ExceptionReason::RecordedExchange,
            ExceptionState::ExchangeConfirmed
        )]
    );
    let record = &recorded.exceptions[0];
    assert_eq!((record.reg, record.ts), (2_500, DAY0 + 2 * HOUR + HOUR / 2));
    assert_eq!(record.decision.as_ref().unwrap().by, "ana");
    // The new register's reads are actual from the first one, whatever its value.
    // The old register's 80 L up to its final read are in the continuous register
    // (billing) and in the interval of the final read's row (analytics, today_l),
    // recorded at 2:30 in the pass of the first read after it.
    let next = run(recorded.state, hourly(3, &[2_520, 2_600]));
    assert_eq!(
        rows(&next.rows),
        vec![
            (2, Quality::Recorded, Some(80)),
            (3, Quality::Actual, Some(20)),
            (4, Quality::Actual, Some(80))
        ]
    );
    let final_read = &next.rows[0];
    assert_eq!(
        (final_read.reading.ts, final_read.reading.reg),
        (DAY0 + 2 * HOUR + HOUR / 2, 5_000_180)
    );
    assert_eq!(
        final_read.seq, next.rows[1].seq,
        "the seq of the read after it"
    );
    assert!(next.exceptions.is_empty());
    assert_eq!(next.state.vee.head.base.unwrap().creg, 5_000_280);
    // Recorded after the new meter's first reads arrived (suspect), it re-decides
    // them the same way.
    let first = run(
        MeterState::default(),
        hourly(0, &[5_000_000, 5_000_100, 2_520, 2_600]),
    );
    assert_eq!(rows(&first.rows)[2].1, Quality::Suspect);
    let mut exchange = order(
        2,
        OrderAction::Exchange {
            final_reg: Some(5_000_180),
            initial_reg: 2_500,
            size: None,
        },
    );
    exchange.ts -= HOUR / 2;
    let recorded = run_with(first.state, Vec::new(), vec![exchange]);
    assert_eq!(
        rows(&recorded.rows),
        vec![
            (1, Quality::Recorded, Some(80)),
            (2, Quality::Actual, Some(20)),
            (3, Quality::Actual, Some(80))
        ]
    );
    assert_eq!(recorded.state.vee.head.base.unwrap().creg, 5_000_280);
    assert_eq!(
        cases(&recorded.exceptions),
        vec![
            (
                1,
                ExceptionReason::RecordedExchange,
                ExceptionState::ExchangeConfirmed
            ),
            (2, ExceptionReason::Regression, ExceptionState::Resolved),
            (
                3,
                ExceptionReason::UnconfirmedExchange,
                ExceptionState::Resolved
            ),
        ]
    );
}

#[test]
fn a_recorded_exchanges_final_read_ends_the_old_registers_gap_like_a_read() {
    let exchange = || {
        order(
            5,
            OrderAction::Exchange {
                final_reg: Some(5_000_500),
                initial_reg: 10,
                size: None,
            },
        )
    };
    let first = run(MeterState::default(), hourly(0, &[5_000_000, 5_000_100]));
    let recorded = run_with(first.state.clone(), Vec::new(), vec![exchange()]);
    // Silent from hour 1 to the removal at 5:00: the gap before the final read is
    // estimated as before any read, and every litre is in one row's interval.
    let next = run(recorded.state, hourly(6, &[60, 110]));
    assert_eq!(
        rows(&next.rows),
        vec![
            (2, Quality::Estimated, Some(100)),
            (3, Quality::Estimated, Some(100)),
            (4, Quality::Estimated, Some(100)),
            (5, Quality::Recorded, Some(100)),
            (6, Quality::Actual, Some(50)),
            (7, Quality::Actual, Some(50))
        ]
    );
    // A read the meter sent at the exchange's own time is the row there.
    let recorded = run_with(first.state, Vec::new(), vec![exchange()]);
    let next = run(recorded.state, hourly(5, &[10, 60]));
    assert!(
        next.rows.iter().all(|row| row.quality != Quality::Recorded),
        "{:?}",
        rows(&next.rows)
    );
    assert_eq!(next.state.vee.head.base.unwrap().creg, 5_000_550);
}

#[test]
fn an_open_exception_keeps_its_read_decidable_past_the_late_window() {
    let mut regs: Vec<u64> = (0..24 * 5).map(|h| 1_000 + h * 10).collect();
    regs[10] = 900_000; // a jump at hour 10
    let first = run(MeterState::default(), hourly(0, &regs));
    assert_eq!(
        first.state.vee.settled_ts(),
        Some(DAY0 + 9 * HOUR),
        "settled up to the read before the open exception"
    );
    let accepted = run_with(
        first.state,
        Vec::new(),
        vec![order(10, OrderAction::Accept)],
    );
    assert_eq!(accepted.exceptions[0].state, ExceptionState::Accepted);
    // Decided, the read no longer holds the window back.
    let next = run(accepted.state, hourly(24 * 5, &[900_000 + 2_000]));
    let newest = DAY0 + 24 * 5 * HOUR;
    assert!(next.state.vee.settled_ts().unwrap() >= newest - 3 * DAY_MS - HOUR);
    assert!(
        next.state.vee.orders.is_empty(),
        "a settled order is done with"
    );
}

#[test]
fn a_rejection_of_a_settled_read_is_recorded_as_it_stands() {
    let regs: Vec<u64> = (0..24 * 5).map(|h| 1_000 + h * 10).collect();
    let first = run(MeterState::default(), hourly(0, &regs));
    let late = run(first.state, hourly(1, &[5_000]).into_iter().collect());
    assert_eq!(
        cases(&late.exceptions),
        vec![(1, ExceptionReason::LateAhead, ExceptionState::Open)]
    );
    let mut rejection = order(1, OrderAction::Reject);
    rejection.exception = Some(ExceptionRef {
        reg: 5_000,
        received_at: late.exceptions[0].received_at,
        reason: ExceptionReason::LateAhead,
    });
    let rejected = run_with(late.state, Vec::new(), vec![rejection]);
    assert!(rejected.rows.is_empty());
    assert_eq!(
        cases(&rejected.exceptions),
        vec![(1, ExceptionReason::LateAhead, ExceptionState::Rejected)]
    );
    assert_eq!(rejected.exceptions[0].reg, 5_000);
    assert!(rejected.state.vee.orders.is_empty());
}

#[test]
fn a_size_recorded_with_an_exchange_judges_the_new_meters_reads_by_that_size() {
    // A DN15 meter (Q4 3,125 L/h) exchanged at 1:30 for a DN40 (Q4 20,000 L/h)
    // reading 0: 10,000 L in its first half hour and 15,000 L in the hour after are
    // plausible for the DN40, not for the DN15.
    let first = run(MeterState::default(), hourly(0, &[1_000, 2_000]));
    let exchange = |size| {
        let mut order = order(
            1,
            OrderAction::Exchange {
                final_reg: None,
                initial_reg: 0,
                size,
            },
        );
        order.ts += HOUR / 2;
        order
    };
    let sized = run_with(
        first.state.clone(),
        hourly(2, &[10_000, 25_000]),
        vec![exchange(Some(MeterSize::Dn40))],
    );
    assert_eq!(
        rows(&sized.rows),
        vec![
            (2, Quality::Actual, Some(10_000)),
            (3, Quality::Actual, Some(15_000))
        ]
    );
    assert_eq!(
        sized.state.vee.sizes,
        vec![SizeChange {
            from_ts: DAY0 + HOUR + HOUR / 2,
            size: MeterSize::Dn40
        }]
    );
    // The same exchange without a size keeps the configured DN15: the jump is
    // suspect, and the read after it continues the new register, still too fast.
    let configured = run_with(
        first.state.clone(),
        hourly(2, &[10_000, 25_000]),
        vec![exchange(None)],
    );
    assert_eq!(
        rows(&configured.rows)
            .iter()
            .map(|row| row.1)
            .collect::<Vec<_>>(),
        vec![Quality::Suspect, Quality::Suspect]
    );
    // Recorded after the reads arrived (stored suspect), the size re-decides them;
    // the rows it replaces are the ones stored before (judged by the old size).
    let mut batch = batch_of(configured.state, Vec::new());
    batch.meters[0].orders = vec![exchange(Some(MeterSize::Dn40))];
    let mut out = Outputs::default();
    VeeProcessor::new(directory()).process(&mut batch, &mut out);
    let meter = &batch.meters[0];
    assert_eq!(rows(&meter.readings), rows(&sized.rows));
    assert_eq!(
        meter
            .replaced
            .iter()
            .map(|row| row.quality)
            .collect::<Vec<_>>(),
        vec![Quality::Suspect, Quality::Suspect],
        "what the re-run replaces, as it was stored"
    );
}
