//! Wakes a tenant's consuming connections when a task may have become ready: at once for
//! transitions made through this gateway, and through the tenant's Valkey wake channel
//! (published by `lua/tasks.lua` whenever a task becomes ready) for those made by any other
//! gateway or the relay. Consumers also poll on a timer, so a lost wake (a pub/sub
//! reconnect) delays a task by at most the poll interval, never loses it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentwire_protocol::Tenant;
use agentwire_valkey::{connect_live, keys};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Longest wait between reconnects of the wake subscription.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One counter per tenant that has consumers here; bumped by every wake.
#[derive(Clone, Debug)]
pub struct Wakeups {
    tenants: Arc<Mutex<HashMap<Tenant, watch::Sender<u64>>>>,
    subscribe: mpsc::UnboundedSender<Tenant>,
}

impl Wakeups {
    /// Starts the wake subscription on the Valkey at `url` (retried forever).
    pub fn start(url: String, shutdown: CancellationToken) -> Self {
        let (subscribe, requests) = mpsc::unbounded_channel();
        let wakeups = Self {
            tenants: Arc::default(),
            subscribe,
        };
        tokio::spawn(listen(url, wakeups.clone(), requests, shutdown));
        wakeups
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Tenant, watch::Sender<u64>>> {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver that changes whenever a task of `tenant` may have become ready.
    pub fn watch(&self, tenant: &Tenant) -> watch::Receiver<u64> {
        let mut tenants = self.lock();
        if let Some(sender) = tenants.get(tenant) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(0);
        tenants.insert(tenant.clone(), sender);
        let _ = self.subscribe.send(tenant.clone());
        receiver
    }

    /// Wakes the tenant's consumers on this gateway.
    pub fn local(&self, tenant: &Tenant) {
        if let Some(sender) = self.lock().get(tenant) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn all(&self) {
        for sender in self.lock().values() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn known(&self) -> Vec<Tenant> {
        self.lock().keys().cloned().collect()
    }
}

async fn listen(
    url: String,
    wakeups: Wakeups,
    mut requests: mpsc::UnboundedReceiver<Tenant>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = connect_live(&url) => connected,
        };
        let (mut subs, mut stream) = match connected {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(error = %err, "task wake subscription failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let mut healthy = true;
        for tenant in wakeups.known() {
            healthy &= subs
                .subscribe_channel(&keys::task_wake(&tenant))
                .await
                .is_ok();
        }
        if healthy {
            backoff = Duration::from_millis(100);
            // Anything may have become ready while the subscription was down.
            wakeups.all();
        }
        while healthy {
            tokio::select! {
                () = shutdown.cancelled() => return,
                request = requests.recv() => match request {
                    Some(tenant) => {
                        healthy = subs.subscribe_channel(&keys::task_wake(&tenant)).await.is_ok();
                    }
                    None => return,
                },
                message = stream.next_raw() => match message {
                    Some((channel, _)) => {
                        if let Some(tenant) = keys::tenant_of_task_wake(&channel) {
                            wakeups.local(&tenant);
                        }
                    }
                    None => healthy = false,
                },
            }
        }
        tracing::warn!("task wake subscription lost; reconnecting");
    }
}
