//! Who is connected: one live session per client (a meter, or an integration's client
//! id within its tenant), and who subscribed to which alert topics.
//!
//! Takeover rule (MQTT's "same client id replaces the old session"), made safe: a new
//! connection replaces an old one only after it has authenticated as that same
//! identity, so a meter can never kick another. Locks are held for a map operation
//! only, never across an await, and a poisoned lock is used as it is (its maps stay
//! consistent: every operation is a single insert or remove).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;
use meterflow_model::{MeterKey, TenantId, topic};

use super::outbox::Outbox;
use super::session::{AlertFilter, Identity};

/// One alert subscription: what it covers, and the connection it goes to.
type AlertSubscription = (AlertFilter, Arc<Outbox>);

#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<Identity, Arc<Outbox>>>,
    /// Alert subscriptions by tenant.
    alerts: RwLock<HashMap<TenantId, Vec<AlertSubscription>>>,
}

impl Registry {
    /// Registers `outbox` as `identity`'s session; closes the one it replaces (returns
    /// whether there was one).
    pub fn register(&self, identity: &Identity, outbox: &Arc<Outbox>) -> bool {
        let previous = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(identity.clone(), outbox.clone());
        match previous {
            Some(old) => {
                old.take_over();
                true
            }
            None => false,
        }
    }

    /// Forgets `outbox`'s session and subscriptions, unless a newer connection has
    /// already replaced it.
    pub fn unregister(&self, identity: &Identity, outbox: &Arc<Outbox>) {
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            if sessions
                .get(identity)
                .is_some_and(|current| Arc::ptr_eq(current, outbox))
            {
                sessions.remove(identity);
            }
        }
        let mut alerts = self.alerts.write().unwrap_or_else(PoisonError::into_inner);
        for subscribers in alerts.values_mut() {
            subscribers.retain(|(_, o)| !Arc::ptr_eq(o, outbox));
        }
        alerts.retain(|_, subscribers| !subscribers.is_empty());
    }

    /// The live session of a meter, if it is connected here.
    pub fn meter_session(&self, meter: &MeterKey) -> Option<Arc<Outbox>> {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&Identity::Meter(meter.clone()))
            .cloned()
    }

    pub fn subscribe_alerts(&self, filter: AlertFilter, outbox: &Arc<Outbox>) {
        let mut alerts = self.alerts.write().unwrap_or_else(PoisonError::into_inner);
        let subscribers = alerts.entry(filter.tenant().clone()).or_default();
        if !subscribers
            .iter()
            .any(|(f, o)| *f == filter && Arc::ptr_eq(o, outbox))
        {
            subscribers.push((filter, outbox.clone()));
        }
    }

    pub fn unsubscribe_alerts(&self, filter: &AlertFilter, outbox: &Arc<Outbox>) {
        let mut alerts = self.alerts.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(subscribers) = alerts.get_mut(filter.tenant()) {
            subscribers.retain(|(f, o)| !(f == filter && Arc::ptr_eq(o, outbox)));
        }
    }

    /// Delivers an alert event on `alerts/{tenant}/{meter}` to every matching
    /// subscription (once per connection). Returns (delivered, dropped).
    pub fn publish_alert(&self, meter: &MeterKey, payload: Bytes) -> (usize, usize) {
        let alerts = self.alerts.read().unwrap_or_else(PoisonError::into_inner);
        let Some(subscribers) = alerts.get(&meter.tenant) else {
            return (0, 0);
        };
        let topic: Arc<str> = Arc::from(topic::alert_topic(meter));
        let mut reached: Vec<&Arc<Outbox>> = Vec::new();
        let (mut delivered, mut dropped) = (0, 0);
        for (filter, outbox) in subscribers {
            if !filter.matches(meter) || reached.iter().any(|o| Arc::ptr_eq(o, outbox)) {
                continue;
            }
            reached.push(outbox);
            if outbox.deliver_alert(topic.clone(), payload.clone()) {
                delivered += 1;
            } else {
                dropped += 1;
            }
        }
        (delivered, dropped)
    }

    /// Open sessions.
    #[cfg(test)]
    fn sessions(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::outbox::Outgoing;
    use meterflow_model::topic::parse_client_id;

    #[test]
    fn a_new_session_replaces_the_old_and_the_old_cannot_unregister_it() {
        let registry = Registry::default();
        let m1 = Identity::Meter(parse_client_id("demo.m1").unwrap());
        let (old, mut old_rx) = Outbox::new(None);
        let (new, _new_rx) = Outbox::new(None);
        assert!(!registry.register(&m1, &old));
        assert!(registry.register(&m1, &new));
        assert_eq!(old_rx.try_recv(), Ok(Outgoing::TakenOver));
        registry.unregister(&m1, &old);
        assert_eq!(registry.sessions(), 1, "the newer session stays");
        let key = parse_client_id("demo.m1").unwrap();
        assert!(Arc::ptr_eq(&registry.meter_session(&key).unwrap(), &new));
        registry.unregister(&m1, &new);
        assert_eq!(registry.sessions(), 0);
        assert!(registry.meter_session(&key).is_none());
    }

    #[test]
    fn alerts_reach_matching_subscribers_once() {
        let registry = Registry::default();
        let m1 = parse_client_id("demo.m1").unwrap();
        let other = parse_client_id("other.m1").unwrap();
        let (integration, mut rx) = Outbox::new(None);
        registry.subscribe_alerts(AlertFilter::Tenant(m1.tenant.clone()), &integration);
        registry.subscribe_alerts(AlertFilter::Meter(m1.clone()), &integration);
        assert_eq!(
            registry.publish_alert(&m1, Bytes::from_static(b"{}")),
            (1, 0)
        );
        assert!(matches!(rx.try_recv(), Ok(Outgoing::Alert { .. })));
        assert!(rx.try_recv().is_err(), "one copy per connection");
        assert_eq!(
            registry.publish_alert(&other, Bytes::from_static(b"{}")),
            (0, 0)
        );
        registry.unregister(&Identity::Probe, &integration);
        assert_eq!(
            registry.publish_alert(&m1, Bytes::from_static(b"{}")),
            (0, 0)
        );
    }
}
