//! Shard handoff: uplinks passed to a shard worker through a crossbeam bounded
//! channel, as ingest does (its endpoint pairs the channel with a semaphore so a full
//! queue blocks the connection; that part is not measured here). One producer, one
//! consumer thread. The message is an 88-byte value, the size ingest's `Inbound` had
//! when this was written (two `Bytes` handles, a timestamp and an `Instant`), moved
//! without allocation, so this measures the channel alone. Capacities: 16,384 (the default `pipeline.shard_queue`) and 64
//! (a queue so small the threads keep waking each other).
//!
//! Timed from the first send to the consumer having received the last message.

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Same size as ingest's `Inbound`.
#[derive(Clone, Copy)]
struct Message {
    handles: [u64; 8],
    received_at: i64,
    received: Instant,
}

fn send_through(capacity: usize, count: u64) -> Duration {
    let (tx, rx) = crossbeam_channel::bounded::<Message>(capacity);
    let consumer = thread::spawn(move || {
        let mut sum = 0i64;
        for _ in 0..count {
            let message = rx.recv().expect("the producer outlives the loop");
            // Touch every field, as a consumer would.
            sum = sum
                .wrapping_add(message.received_at)
                .wrapping_add(message.handles[7] as i64);
            black_box(message.received);
        }
        black_box(sum);
    });
    let message = Message {
        handles: [1; 8],
        received_at: 0,
        received: Instant::now(),
    };
    let started = Instant::now();
    for i in 0..count {
        tx.send(Message {
            received_at: i as i64,
            ..message
        })
        .expect("the consumer outlives the loop");
    }
    consumer.join().expect("consumer thread");
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    assert_eq!(std::mem::size_of::<Message>(), 88);
    let mut group = c.benchmark_group("shard_handoff");
    group.throughput(Throughput::Elements(1));
    for capacity in [16_384, 64] {
        group.bench_with_input(
            BenchmarkId::new("crossbeam_bounded", capacity),
            &capacity,
            |b, &capacity| b.iter_custom(|iters| send_through(capacity, iters)),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
