//! VEE properties: rollovers and meter exchanges give the true usage.

use meterflow_model::{ProcessorsConfig, Quality};
use proptest::prelude::*;

use crate::utils::{DAY, HOUR, Input, Pipeline, key, reading};

const START: i64 = 1_735_689_600_000; // 2025-01-01T00:00Z
const CAPACITY: u64 = 100_000_000; // default 8 digits

/// Feeds hourly registers in messages of the given sizes; returns the litres VEE
/// attributed (sum of intervals of non-suspect rows, each ts once) and the
/// continuous-register delta from the first read to the last.
fn run(registers: &[u64], sizes: &[usize]) -> (u64, u64) {
    let mut pipeline = Pipeline::new(ProcessorsConfig::default());
    let meter = key("demo", "m");
    let reads: Vec<_> = registers
        .iter()
        .enumerate()
        .map(|(i, reg)| reading(START + i as i64 * HOUR, *reg))
        .collect();
    let mut intervals = std::collections::BTreeMap::new();
    let mut rest = &reads[..];
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at((*size).min(rest.len()));
        rest = tail;
        let (batch, _) = pipeline.feed(0, vec![Input::readings(&meter, head.to_vec())]);
        for row in &batch.meters[0].readings {
            if row.quality != Quality::Suspect {
                intervals.insert(row.reading.ts, row.interval_l.unwrap_or(0));
            }
        }
    }
    let vee = &pipeline.states[&meter].vee;
    let first = vee.continuous_register(START, registers[0]);
    (
        intervals.values().sum(),
        vee.head.base.unwrap().creg - first,
    )
}

proptest! {
    /// Across a rollover at the register's capacity, usage is the true consumption.
    #[test]
    fn rollover_gives_the_true_usage(
        start_below_capacity in 1u64..20_000,
        steps in proptest::collection::vec(0u64..3_000, 2..100),
        sizes in proptest::collection::vec(1usize..24, 1..10),
    ) {
        let mut reg = CAPACITY - start_below_capacity;
        let mut registers = vec![reg];
        for step in &steps {
            reg = (reg + step) % CAPACITY;
            registers.push(reg);
        }
        let truth: u64 = steps.iter().sum();
        prop_assert_eq!(run(&registers, &sizes), (truth, truth));
    }

    /// A meter exchanged for a new one (register restarting below 1 m³) keeps
    /// counting: usage is the old meter's consumption up to its last read plus
    /// everything the new meter registered from its initial read.
    #[test]
    fn meter_exchange_gives_the_true_usage(
        old_start in 10_000u64..50_000_000,
        old_steps in proptest::collection::vec(0u64..3_000, 1..50),
        new_start in 0u64..1_000,
        new_steps in proptest::collection::vec(0u64..3_000, 1..50),
        sizes in proptest::collection::vec(1usize..24, 1..10),
    ) {
        let mut registers = vec![old_start];
        let mut reg = old_start;
        for step in &old_steps {
            reg += step;
            registers.push(reg);
        }
        let mut reg = new_start;
        registers.push(reg);
        for step in &new_steps {
            reg += step;
            registers.push(reg);
        }
        let truth = old_steps.iter().sum::<u64>() + new_steps.iter().sum::<u64>();
        prop_assert_eq!(run(&registers, &sizes), (truth, truth));
    }
}

#[test]
fn a_long_silence_is_not_filled_beyond_a_month() {
    let mut pipeline = Pipeline::new(ProcessorsConfig::default());
    let meter = key("demo", "m");
    pipeline.feed(
        0,
        vec![Input::readings(&meter, vec![reading(START, 1_000)])],
    );
    let (batch, _) = pipeline.feed(
        0,
        vec![Input::readings(
            &meter,
            vec![reading(START + 40 * DAY, 9_000)],
        )],
    );
    let rows = &batch.meters[0].readings;
    assert_eq!(rows.len(), 1, "no estimates for a 40-day gap");
    assert_eq!(rows[0].interval_l, Some(8_000));
}
