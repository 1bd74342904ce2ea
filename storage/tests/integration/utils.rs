//! Builders shared by the integration tests: keys, readings, states and batches with
//! the fields a test does not care about filled in; and the CQL session the
//! ScyllaDB tests look at a store's rows with.

use std::ops::ControlFlow;
use std::sync::Arc;

use meterflow_model::billing::{BillLine, TierCharge};
use meterflow_model::{
    DeadLetter, MeterBatch, MeterId, MeterKey, MeterState, Quality, Reading, Reject, SealedBatch,
    StoredReading, TenantId, UsageState,
};
use meterflow_storage::ReadingStore;
use meterflow_storage::embedded::EmbeddedStore;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;

pub(crate) fn meter_key(tenant: &str, meter: &str) -> MeterKey {
    MeterKey::new(
        TenantId::try_from(tenant).expect("test tenant id is valid"),
        MeterId::try_from(meter).expect("test meter id is valid"),
    )
}

/// A reading whose every field is derived from `ts` and `reg`, so tests can tell
/// rows apart.
pub(crate) fn stored_reading(ts: i64, reg: u64, quality: Quality) -> StoredReading {
    StoredReading {
        reading: Reading {
            ts,
            reg,
            rev: reg / 100,
            flow: (reg % 1000) as u32,
            temp: reg.is_multiple_of(2).then_some(-((reg % 300) as i16)),
        },
        seq: reg.wrapping_mul(7),
        received_at: ts.wrapping_add(1_000),
        quality,
        interval_l: (!reg.is_multiple_of(3)).then_some(reg % 50),
    }
}

/// A meter state with watermark `seq` and `today_l` litres. Its last reading has a
/// temperature; `meter_state_without_temperature_round_trips` covers the other case.
pub(crate) fn meter_state(seq: u64, today_l: u64) -> MeterState {
    meter_state_with_temp(seq, today_l, Some(215))
}

pub(crate) fn meter_state_with_temp(seq: u64, today_l: u64, temp: Option<i16>) -> MeterState {
    let mut state = MeterState {
        usage: UsageState {
            last: Some(Reading {
                ts: seq as i64,
                reg: today_l,
                rev: 0,
                flow: 0,
                temp,
            }),
            last_quality: Quality::Actual,
            day: 19_700,
            today_l,
        },
        ..MeterState::default()
    };
    state.seq.admit(seq, 0, &mut Vec::new());
    // As if uplink `seq` had been received at `seq` ms: a later seq is a later
    // version, so a later state's rows win in a store that orders by it.
    state.advance_version(seq as i64);
    state
}

pub(crate) fn meter_batch(
    key: MeterKey,
    readings: Vec<StoredReading>,
    state: MeterState,
) -> MeterBatch {
    MeterBatch {
        replaced: Vec::new(),
        key,
        messages: readings.len() as u32,
        sent_readings: readings.len() as u32,
        readings,
        state,
        duplicates: 0,
        first_received_at: None,
        statuses: Vec::new(),
        orders: Vec::new(),
    }
}

pub(crate) fn sealed_batch(
    number: u64,
    meters: Vec<MeterBatch>,
    dead_letters: Vec<DeadLetter>,
) -> SealedBatch {
    SealedBatch {
        shard: 0,
        number,
        meters,
        dead_letters,
        now_ms: 0,
    }
}

pub(crate) fn dead_letter(tenant: &str, received_at: i64, id: u64) -> DeadLetter {
    DeadLetter {
        tenant: tenant.into(),
        received_at,
        id,
        topic: format!("meters/{tenant}/m{id}/up"),
        payload: format!("{{\"seq\":{id}").into_bytes(),
        reason: Reject::ALL[id as usize % Reject::ALL.len()],
        correlation_id: format!("{tenant}/m{id}/-"),
    }
}

/// The `stored_meters` contract, on any store: every meter with a state, once
/// each, whatever wrote it how often; not a tenant that has only dead letters; and a
/// visit that answers `Break` ends the listing.
pub(crate) fn check_stored_meters(store: &dyn ReadingStore) {
    let meters = [
        meter_key("acme", "m1"),
        meter_key("acme", "m2"),
        meter_key("zeta", "m1"),
    ];
    for seq in 1..=2 {
        let batches: Vec<_> = meters
            .iter()
            .map(|key| meter_batch(key.clone(), Vec::new(), meter_state(seq, 0)))
            .collect();
        store
            .write(&[sealed_batch(
                seq,
                batches,
                vec![dead_letter("other", 5, seq)],
            )])
            .unwrap();
    }
    let mut listed = Vec::new();
    store
        .stored_meters(&mut |key| {
            listed.push(key);
            ControlFlow::Continue(())
        })
        .unwrap();
    listed.sort();
    assert_eq!(listed, meters);

    let mut visits = 0;
    store
        .stored_meters(&mut |_| {
            visits += 1;
            ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!(visits, 1, "the listing ends at the first Break");
}

pub(crate) fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(dir.path()).expect("store opens in a fresh temp dir")
}

/// A bill of `usage_l` litres over two tiers with a fixed charge; odd usages are
/// estimated.
pub(crate) fn bill(tenant: &str, period: &str, meter: &str, usage_l: u64) -> BillLine {
    let first = usage_l.min(10_000);
    let tiers = vec![
        TierCharge {
            usage_l: first,
            price_per_m3: 150,
            amount_cents: first * 150 / 1_000,
        },
        TierCharge {
            usage_l: usage_l - first,
            price_per_m3: 250,
            amount_cents: (usage_l - first) * 250 / 1_000,
        },
    ];
    let fixed_cents = 800;
    BillLine {
        tenant: tenant.into(),
        meter: meter.into(),
        period: period.into(),
        currency: "EUR".into(),
        usage_l,
        amount_cents: fixed_cents + tiers.iter().map(|t| t.amount_cents).sum::<u64>(),
        tiers,
        fixed_cents,
        estimated: usage_l % 2 == 1,
        final_: false,
    }
}

/// A plain driver session on `contact_point` for looking at what a store wrote (and
/// changing it behind the store's back), with the single-threaded runtime it runs on.
/// Its statements carry client-side write times as the store's do
/// (`MonotonicTimestampGenerator`), so a row it deletes and the store writes again
/// compare by the process's one clock, even when a test fakes that clock away from
/// the server's.
pub(crate) fn cql_session(contact_point: &str) -> (tokio::runtime::Runtime, Session) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let session = runtime
        .block_on(
            SessionBuilder::new()
                .known_node(contact_point)
                .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()))
                .build(),
        )
        .expect("inspection session connects");
    (runtime, session)
}
