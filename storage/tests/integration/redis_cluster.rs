//! `RedisCache` on a Redis Cluster (`scripts/redis-cluster start`), what only a
//! cluster can show: an apply whose tenants live on three different nodes (one
//! pipeline per tenant) reads back every tenant as the in-process cache does, and
//! every key an apply writes for a tenant is in that tenant's one slot, on the node
//! serving it. The shared contract tests run on the cluster too (`redis.rs`,
//! `cache_contract.rs`, through `redis.rs`'s `redis_and_cluster!`).

use std::collections::{BTreeMap, BTreeSet};

use meterflow_model::Outputs;
use meterflow_model::analytics::Resolution;
use meterflow_storage::HotCache;
use meterflow_storage::memory_cache::MemoryCache;
use meterflow_storage::redis_cache::RedisConfig;
use redis::Commands;

use crate::cache_contract::{DAY, MIDNIGHT, full_outputs, list};
use crate::redis::{RawConnection, cache_on};
use crate::servers;
use crate::utils::meter_key;

/// A master of the cluster: its `host:port` and the slot ranges it serves.
struct Master {
    addr: String,
    slots: Vec<(u16, u16)>,
}

/// The masters, from `CLUSTER NODES`: a line per node, `<id> <ip:port@bus[,hostname]>
/// <flags> <master> <ping> <pong> <epoch> <link> <slot>…`, a slot entry `lo-hi` or
/// `n` (`[…]` entries, slots in migration, are skipped).
fn masters(raw: &mut RawConnection) -> Vec<Master> {
    let text: String = redis::cmd("CLUSTER").arg("NODES").query(raw).unwrap();
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            if !words.get(2)?.split(',').any(|flag| flag == "master") {
                return None;
            }
            let addr = words[1].split(['@', ',']).next()?.to_owned();
            let slots = words
                .get(8..)
                .unwrap_or_default()
                .iter()
                .filter(|entry| !entry.starts_with('['))
                .map(|entry| match entry.split_once('-') {
                    Some((lo, hi)) => (lo.parse().unwrap(), hi.parse().unwrap()),
                    None => (entry.parse().unwrap(), entry.parse().unwrap()),
                })
                .collect();
            Some(Master { addr, slots })
        })
        .collect()
}

fn keyslot(raw: &mut RawConnection, key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(raw)
        .unwrap()
}

/// The address of the master serving `slot`.
fn owner(masters: &[Master], slot: u16) -> &str {
    masters
        .iter()
        .find(|m| m.slots.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot)))
        .map(|m| m.addr.as_str())
        .unwrap_or_else(|| panic!("no master serves slot {slot}"))
}

/// Three tenants whose keys live on three different masters (`CLUSTER KEYSLOT` of a
/// key of each, and `CLUSTER NODES`), each with its slot and node.
fn tenants_on_every_node(
    raw: &mut RawConnection,
    prefix: &str,
) -> (Vec<Master>, BTreeMap<String, (u16, String)>) {
    let masters = masters(raw);
    assert_eq!(masters.len(), 3, "the test cluster has three masters");
    let mut tenants: BTreeMap<String, (u16, String)> = BTreeMap::new();
    for i in 0..1_000 {
        let tenant = format!("t{i}");
        let slot = keyslot(raw, &format!("{prefix}:{{{tenant}}}:summary"));
        let node = owner(&masters, slot).to_owned();
        if !tenants.values().any(|(_, taken)| *taken == node) {
            tenants.insert(tenant, (slot, node));
        }
        if tenants.len() == masters.len() {
            return (masters, tenants);
        }
    }
    panic!("no three tenants found on three nodes: {tenants:?}");
}

/// The full outputs of every tenant, as one `Outputs`.
fn outputs_of<'a>(tenants: impl IntoIterator<Item = &'a String>) -> Outputs {
    let mut all = Outputs::default();
    for tenant in tenants {
        let one = full_outputs(tenant);
        all.meters.extend(one.meters);
        all.bills.extend(one.bills);
        all.alerts.extend(one.alerts);
        all.districts.extend(one.districts);
        all.top.extend(one.top);
        all.summaries.extend(one.summaries);
    }
    all
}

#[test]
fn cluster_apply_of_tenants_on_three_nodes_reads_back_every_tenant() {
    let Some(url) = servers::redis_cluster("cluster_tenants") else {
        return;
    };
    let (cache, mut raw, prefix) = cache_on(&url, "cluster_tenants", RedisConfig::default());
    let (_, tenants) = tenants_on_every_node(&mut raw.connection, &prefix);
    let nodes: BTreeSet<&String> = tenants.values().map(|(_, node)| node).collect();
    assert_eq!(nodes.len(), 3, "{tenants:?}");

    let outputs = outputs_of(tenants.keys());
    let memory = MemoryCache::new();
    for _ in 0..2 {
        cache.apply(&outputs).unwrap();
        memory.apply(&outputs).unwrap();
    }

    for tenant in tenants.keys() {
        for meter in ["m1", "m2"] {
            let key = meter_key(tenant, meter);
            let view = cache.meter(&key).unwrap();
            assert!(view.is_some(), "{tenant}/{meter}");
            assert_eq!(view, memory.meter(&key).unwrap(), "{tenant}/{meter}");
        }
        let page = cache.meters(tenant, &list(10)).unwrap();
        assert_eq!(page.meters.len(), 2, "{tenant}");
        assert_eq!(page, memory.meters(tenant, &list(10)).unwrap(), "{tenant}");
        let summary = cache.summary(tenant).unwrap();
        assert_eq!(summary.as_ref().map(|s| s.alerts_open), Some(3), "{tenant}");
        assert_eq!(summary, memory.summary(tenant).unwrap(), "{tenant}");
        for (district, resolution, from, to) in [
            ("north", Resolution::Minute, MIDNIGHT, MIDNIGHT + DAY),
            ("south", Resolution::Minute, MIDNIGHT, MIDNIGHT + DAY),
            ("north", Resolution::Hour, MIDNIGHT - DAY, MIDNIGHT + DAY),
            ("north", Resolution::Day, MIDNIGHT - DAY, MIDNIGHT + DAY),
        ] {
            let rows = cache
                .district_usage(tenant, district, resolution, from, to)
                .unwrap();
            assert!(!rows.is_empty(), "{tenant} {district} {resolution:?}");
            assert_eq!(
                rows,
                memory
                    .district_usage(tenant, district, resolution, from, to)
                    .unwrap(),
                "{tenant} {district} {resolution:?}"
            );
        }
        let top = cache.top_consumers(tenant, "2025-01-15", 10).unwrap();
        assert_eq!(top.len(), 3, "{tenant}");
        assert_eq!(
            top,
            memory.top_consumers(tenant, "2025-01-15", 10).unwrap(),
            "{tenant}"
        );
        let open = cache.open_alerts(tenant).unwrap();
        assert_eq!(open.len(), 3, "{tenant}");
        assert_eq!(open, memory.open_alerts(tenant).unwrap(), "{tenant}");
        let recent = cache.recent_alerts(tenant, 100).unwrap();
        assert!(!recent.is_empty(), "{tenant}");
        assert_eq!(
            recent,
            memory.recent_alerts(tenant, 100).unwrap(),
            "{tenant}"
        );
    }
}

/// The node URL of a master, with the credentials of the cluster URL's seeds.
fn node_url(cluster_url: &str, addr: &str) -> String {
    let seeds = servers::redis_cluster_seeds(cluster_url).expect("a redis+cluster:// URL");
    match seeds[0].rsplit_once('@') {
        Some((credentials, _)) => format!("{credentials}@{addr}"),
        None => format!("redis://{addr}"),
    }
}

#[test]
fn cluster_apply_puts_every_key_of_a_tenant_in_its_one_slot_on_its_node() {
    let Some(url) = servers::redis_cluster("cluster_slots") else {
        return;
    };
    let (cache, mut raw, prefix) = cache_on(&url, "cluster_slots", RedisConfig::default());
    let (masters, tenants) = tenants_on_every_node(&mut raw.connection, &prefix);
    cache.apply(&outputs_of(tenants.keys())).unwrap();

    // Each node on its own (no redirects): SCAN what it holds under the prefix.
    let mut found: BTreeMap<String, BTreeSet<(u16, String)>> = BTreeMap::new();
    let mut total = 0;
    for master in &masters {
        let mut node = redis::Client::open(node_url(&url, &master.addr))
            .and_then(|client| client.get_connection())
            .unwrap_or_else(|e| panic!("node {}: {e}", master.addr));
        let keys: Vec<String> = node
            .scan_match::<_, String>(format!("{prefix}:*"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for key in keys {
            let tenant = key
                .split_once('{')
                .and_then(|(_, rest)| rest.split_once('}'))
                .map(|(tenant, _)| tenant.to_owned())
                .unwrap_or_else(|| panic!("{key} has no hash tag"));
            let slot = keyslot(&mut raw.connection, &key);
            assert_eq!(
                owner(&masters, slot),
                master.addr,
                "{key} on the wrong node"
            );
            found
                .entry(tenant)
                .or_default()
                .insert((slot, master.addr.clone()));
            total += 1;
        }
    }
    // Every key is on exactly one node, and each tenant on one slot: its own.
    let everywhere: Vec<String> = raw.connection.keys(format!("{prefix}:*")).unwrap();
    assert_eq!(total, everywhere.len());
    assert!(total >= 3 * 15, "only {total} keys written");
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        tenants.keys().collect::<Vec<_>>()
    );
    for (tenant, (slot, node)) in &tenants {
        assert_eq!(
            found[tenant],
            BTreeSet::from([(*slot, node.clone())]),
            "{tenant}: its keys must share its slot"
        );
    }
}
