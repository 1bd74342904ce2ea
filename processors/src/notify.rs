//! Notification policy: which alert events to deliver now and which later. Pure —
//! the runtime feeds it events and the clock and does the delivery (Redis stream,
//! MQTT `alerts/{tenant}/{meter}`, webhook with retries) around it.
//!
//! Rules, per tenant:
//! - **Rate**: a token bucket of `burst` notifications refilled at `per_minute`
//!   (exact integer arithmetic: a token is 60,000 units and the bucket gains
//!   `per_minute` units per millisecond).
//! - **Priority**: waiting notifications leave in priority order — critical (burst,
//!   backflow, tamper, magnetic, cut cable) before high (leak, freeze, dry pipe)
//!   before low (battery, communication, consumption) — and in arrival order within a
//!   priority.
//! - **Coalescing**: a new event of an episode (meter, kind, opened_at) that is still
//!   waiting replaces the waiting one in place (keeping its turn) and counts as
//!   coalesced; an `updated` that follows a waiting `opened` stays an `opened` (the
//!   receiver has not heard of the episode yet) with the newer detail. Episodes are
//!   told apart by their opening time, so a withdrawn episode's withdrawal is not
//!   replaced by the steps of the episode that took its place.
//! - **Bound**: past `max_pending` waiting notifications, the newest one of the
//!   lowest priority is dropped and counted.

use std::collections::{BTreeMap, HashMap};

use meterflow_model::{
    AlertEvent, AlertKind, EpisodeState, NotificationLimits, Priority, ProcessorsConfig,
};

/// Token units per notification (see the module doc).
const TOKEN: u64 = 60_000;

/// A notification to deliver now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub event: AlertEvent,
    /// Events of the same episode folded into this one while it waited.
    pub coalesced: u32,
}

struct Waiting {
    notification: Notification,
}

struct TenantQueue {
    limits: NotificationLimits,
    /// Token units available (see [`TOKEN`]).
    tokens: u64,
    refilled_at: Option<i64>,
    waiting: BTreeMap<(Priority, u64), Waiting>,
    by_episode: HashMap<(String, AlertKind, i64), (Priority, u64)>,
}

impl TenantQueue {
    fn new(limits: NotificationLimits) -> Self {
        Self {
            tokens: u64::from(limits.burst) * TOKEN,
            limits,
            refilled_at: None,
            waiting: BTreeMap::new(),
            by_episode: HashMap::new(),
        }
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed = self.refilled_at.map_or(0, |t| (now_ms - t).max(0)) as u64;
        let capacity = u64::from(self.limits.burst) * TOKEN;
        self.tokens =
            (self.tokens + elapsed.saturating_mul(u64::from(self.limits.per_minute))).min(capacity);
        self.refilled_at = Some(self.refilled_at.map_or(now_ms, |t| t.max(now_ms)));
    }
}

/// See the module doc.
pub struct NotificationPolicy {
    default_limits: NotificationLimits,
    limits: HashMap<String, NotificationLimits>,
    tenants: BTreeMap<String, TenantQueue>,
    next_order: u64,
    dropped: u64,
}

impl NotificationPolicy {
    pub fn new(
        default_limits: NotificationLimits,
        limits: HashMap<String, NotificationLimits>,
    ) -> Self {
        Self {
            default_limits,
            limits,
            tenants: BTreeMap::new(),
            next_order: 0,
            dropped: 0,
        }
    }

    pub fn from_config(config: &ProcessorsConfig) -> Self {
        let limits = config
            .tenants
            .iter()
            .map(|(tenant, settings)| (tenant.to_string(), settings.notifications.clone()))
            .collect();
        Self::new(config.defaults.notifications.clone(), limits)
    }

    /// Takes an event to notify.
    pub fn offer(&mut self, event: AlertEvent, now_ms: i64) {
        if !self.tenants.contains_key(&event.tenant) {
            let limits = self
                .limits
                .get(&event.tenant)
                .unwrap_or(&self.default_limits)
                .clone();
            self.tenants
                .insert(event.tenant.clone(), TenantQueue::new(limits));
        }
        let queue = self.tenants.get_mut(&event.tenant).expect("inserted above");
        queue.refill(now_ms);
        let episode = (event.meter.clone(), event.kind, event.opened_at);
        if let Some(slot) = queue.by_episode.get(&episode)
            && let Some(waiting) = queue.waiting.get_mut(slot)
        {
            let previous = waiting.notification.event.state;
            let mut merged = event;
            if previous == EpisodeState::Opened && merged.state == EpisodeState::Updated {
                merged.state = EpisodeState::Opened;
            }
            waiting.notification.event = merged;
            waiting.notification.coalesced += 1;
            return;
        }
        let slot = (event.priority, self.next_order);
        self.next_order += 1;
        queue.by_episode.insert(episode, slot);
        queue.waiting.insert(
            slot,
            Waiting {
                notification: Notification {
                    event,
                    coalesced: 0,
                },
            },
        );
        if queue.waiting.len() > queue.limits.max_pending
            && let Some((_, dropped)) = queue.waiting.pop_last()
        {
            let event = &dropped.notification.event;
            queue
                .by_episode
                .remove(&(event.meter.clone(), event.kind, event.opened_at));
            self.dropped += 1;
        }
    }

    /// Appends what may be delivered at `now_ms` to `deliver`, highest priority
    /// first. Returns when to poll again if notifications are still waiting.
    pub fn poll(&mut self, now_ms: i64, deliver: &mut Vec<Notification>) -> Option<i64> {
        let mut next = None::<i64>;
        for queue in self.tenants.values_mut() {
            queue.refill(now_ms);
            while queue.tokens >= TOKEN {
                let Some((_, waiting)) = queue.waiting.pop_first() else {
                    break;
                };
                let event = &waiting.notification.event;
                queue
                    .by_episode
                    .remove(&(event.meter.clone(), event.kind, event.opened_at));
                queue.tokens -= TOKEN;
                deliver.push(waiting.notification);
            }
            if !queue.waiting.is_empty() {
                let per_ms = u64::from(queue.limits.per_minute.max(1));
                let wait = (TOKEN - queue.tokens).div_ceil(per_ms) as i64;
                next = Some(next.map_or(now_ms + wait, |n| n.min(now_ms + wait)));
            }
        }
        self.tenants
            .retain(|_, q| !q.waiting.is_empty() || q.tokens < u64::from(q.limits.burst) * TOKEN);
        next
    }

    /// Notifications waiting, over all tenants.
    pub fn pending(&self) -> usize {
        self.tenants.values().map(|q| q.waiting.len()).sum()
    }

    /// Notifications dropped because a tenant's queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(meter: &str, kind: AlertKind, state: EpisodeState, at: i64) -> AlertEvent {
        AlertEvent {
            tenant: "t".into(),
            meter: meter.into(),
            kind,
            priority: kind.priority(),
            state,
            opened_at: 0,
            at,
            detail: String::new(),
            revision: at,
        }
    }

    fn limits(burst: u32, per_minute: u32) -> NotificationLimits {
        NotificationLimits {
            burst,
            per_minute,
            max_pending: 3,
        }
    }

    #[test]
    fn critical_goes_first_and_the_rate_is_kept() {
        let mut policy = NotificationPolicy::new(limits(1, 1), HashMap::new());
        policy.offer(
            event("a", AlertKind::LowBattery, EpisodeState::Opened, 0),
            0,
        );
        policy.offer(event("b", AlertKind::Leak, EpisodeState::Opened, 0), 0);
        policy.offer(event("c", AlertKind::Burst, EpisodeState::Opened, 0), 0);
        let mut out = Vec::new();
        let next = policy.poll(0, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event.kind, AlertKind::Burst);
        assert_eq!(next, Some(60_000), "one token a minute");
        out.clear();
        assert_eq!(policy.poll(59_999, &mut out), Some(60_000));
        assert!(out.is_empty());
        policy.poll(60_000, &mut out);
        assert_eq!(out[0].event.kind, AlertKind::Leak);
    }

    #[test]
    fn repeats_coalesce_in_place() {
        let mut policy = NotificationPolicy::new(limits(1, 1), HashMap::new());
        policy.offer(event("x", AlertKind::Burst, EpisodeState::Opened, 0), 0);
        let mut out = Vec::new();
        policy.poll(0, &mut out);
        policy.offer(event("a", AlertKind::Leak, EpisodeState::Opened, 1), 1);
        policy.offer(event("a", AlertKind::Leak, EpisodeState::Updated, 2), 2);
        policy.offer(event("a", AlertKind::Leak, EpisodeState::Updated, 3), 3);
        assert_eq!(policy.pending(), 1);
        out.clear();
        policy.poll(60_000, &mut out);
        assert_eq!(out[0].event.state, EpisodeState::Opened);
        assert_eq!(out[0].event.at, 3);
        assert_eq!(out[0].coalesced, 2);
    }

    #[test]
    fn a_full_queue_drops_the_newest_lowest_priority() {
        let mut policy = NotificationPolicy::new(limits(1, 1), HashMap::new());
        let mut out = Vec::new();
        policy.offer(event("x", AlertKind::Burst, EpisodeState::Opened, 0), 0);
        policy.poll(0, &mut out);
        for (meter, kind) in [
            ("a", AlertKind::Leak),
            ("b", AlertKind::LowBattery),
            ("c", AlertKind::Tamper),
            ("d", AlertKind::LowBattery),
        ] {
            policy.offer(event(meter, kind, EpisodeState::Opened, 1), 1);
        }
        assert_eq!((policy.pending(), policy.dropped()), (3, 1));
        out.clear();
        for minute in 1..=3 {
            policy.poll(minute * 60_000, &mut out);
        }
        let meters: Vec<_> = out.iter().map(|n| n.event.meter.as_str()).collect();
        assert_eq!(meters, ["c", "a", "b"]);
    }
}
