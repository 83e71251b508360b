//! Active health checks: one probe task per instance of every service with a `[service.health]`,
//! started and stopped as configurations change.
//!
//! A task keeps running across a reload while its service, instance address and check are
//! unchanged, so its instance's verdict, role and rise/fall counters carry over. Tasks probe on
//! their own schedule (interval plus jitter), wake early when the data path kicks the service
//! (a request failed on its primary), and never hold more than [`MAX_CONCURRENT_PROBES`]
//! probes in flight together. After each verdict they ask the *current* service (looked up by
//! name, since reloads replace service objects) to re-derive its primary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics::counter;
use sluice_config::HealthCheckConfig;
use sluice_health::probe::{self, ProbeTarget};
use sluice_health::{Evaluation, Evaluator, EvaluatorSource, NativeEvaluator, ProbedInstance};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::{HEALTH_CHANGES_TOTAL, HEALTH_PROBES_TOTAL};
use crate::upstream::{Instance, Service, ServiceShared};

/// Probes in flight at once across all services.
pub(crate) const MAX_CONCURRENT_PROBES: usize = 64;

pub(crate) type Services = Arc<ArcSwap<HashMap<String, Arc<Service>>>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TaskKey {
    service: String,
    instance: SocketAddr,
}

#[derive(Debug)]
struct Task {
    check: HealthCheckConfig,
    /// Where it probes: an instance's own check address/port may change while its check does
    /// not, and the task must then start over against the new target.
    target: SocketAddr,
    stop: CancellationToken,
}

/// What a probe task is started with.
type Wanted = (Arc<Service>, Arc<Instance>, HealthCheckConfig, SocketAddr);

/// The probe tasks of a proxy.
#[derive(Debug)]
pub(crate) struct Checker {
    services: Services,
    evaluators: Arc<dyn EvaluatorSource>,
    limit: Arc<Semaphore>,
    tasks: HashMap<TaskKey, Task>,
    /// Bumped whenever an instance's status (up/down) changes, for `Proxy::health_changes`.
    changes: Arc<watch::Sender<u64>>,
}

impl Checker {
    pub(crate) fn new(services: Services, evaluators: Arc<dyn EvaluatorSource>) -> Self {
        Self {
            services,
            evaluators,
            limit: Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES)),
            tasks: HashMap::new(),
            changes: Arc::new(watch::channel(0).0),
        }
    }

    /// A receiver that sees a new value after every status change of any instance.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Starts, keeps or stops probe tasks to match the current services.
    pub(crate) fn sync(&mut self) {
        let wanted = wanted_tasks(&self.services.load_full());
        self.tasks.retain(|key, task| {
            let keep = wanted.get(key).is_some_and(|(_, _, check, target)| {
                *check == task.check && *target == task.target
            });
            if !keep {
                task.stop.cancel();
            }
            keep
        });
        for (key, (svc, inst, check, target)) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let evaluator: Arc<dyn Evaluator> = match &check.policy {
                Some(name) => match self.evaluators.evaluator(name) {
                    Some(e) => e,
                    None => {
                        tracing::error!(service = %svc.name, policy = %name, "health policy is not loaded; using the check's native rules");
                        Arc::new(NativeEvaluator::new(check.kind.clone()))
                    }
                },
                None => Arc::new(NativeEvaluator::new(check.kind.clone())),
            };
            let stop = CancellationToken::new();
            let probe = ProbeTask {
                target: ProbeTarget {
                    addr: target,
                    instance: inst.addr,
                    service: svc.name.to_string(),
                },
                probed: ProbedInstance {
                    id: inst.addr.to_string(),
                    service: svc.name.to_string(),
                    address: inst.addr.ip().to_string(),
                    port: inst.addr.port(),
                },
                check: check.clone(),
                evaluator,
                instance: inst,
                shared: Arc::clone(&svc.shared),
                services: Arc::clone(&self.services),
                limit: Arc::clone(&self.limit),
                stop: stop.clone(),
                changes: Arc::clone(&self.changes),
            };
            tokio::spawn(probe.run());
            self.tasks.insert(
                key,
                Task {
                    check,
                    target,
                    stop,
                },
            );
        }
    }

    /// Stops every probe task.
    pub(crate) fn stop_all(&mut self) {
        for task in self.tasks.values() {
            task.stop.cancel();
        }
        self.tasks.clear();
    }
}

/// One probe task per instance of every service with a check, with where it probes: the
/// instance's own check address and port, else the check's, else the instance's.
fn wanted_tasks(services: &HashMap<String, Arc<Service>>) -> HashMap<TaskKey, Wanted> {
    let mut wanted = HashMap::new();
    for svc in services.values() {
        let Some(check) = &svc.config.health else {
            continue;
        };
        // A service's instances are built from its configured ones, in the same order.
        for (inst, configured) in svc.instances().iter().zip(&svc.config.instances) {
            let key = TaskKey {
                service: svc.name.to_string(),
                instance: inst.addr,
            };
            let target = configured.check_target(check);
            wanted.insert(
                key,
                (Arc::clone(svc), Arc::clone(inst), check.clone(), target),
            );
        }
    }
    wanted
}

struct ProbeTask {
    target: ProbeTarget,
    probed: ProbedInstance,
    check: HealthCheckConfig,
    evaluator: Arc<dyn Evaluator>,
    instance: Arc<Instance>,
    shared: Arc<ServiceShared>,
    services: Services,
    limit: Arc<Semaphore>,
    stop: CancellationToken,
    changes: Arc<watch::Sender<u64>>,
}

impl ProbeTask {
    async fn run(self) {
        let service = self.target.service.clone();
        let instance = self.instance.addr.to_string();
        let probes = |result: &'static str| counter!(HEALTH_PROBES_TOTAL, "service" => service.clone(), "instance" => instance.clone(), "result" => result);
        let (up, down, stale) = (probes("up"), probes("down"), probes("stale"));
        let changes = |kind: &'static str| counter!(HEALTH_CHANGES_TOTAL, "service" => service.clone(), "instance" => instance.clone(), "kind" => kind);
        let (status_changes, role_changes) = (changes("status"), changes("role"));
        // The first probe goes out at once (spread by jitter) so a new instance is known fast.
        let mut wait = probe::jitter(self.check.jitter);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = self.shared.kick.notified() => {}
            }
            wait = self.check.interval + probe::jitter(self.check.jitter);
            let result = {
                let Ok(_permit) = self.limit.acquire().await else {
                    return;
                };
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    r = probe::run(&self.target, &self.check) => r,
                }
            };
            let now = sluice_health::clock::now_ms();
            // Evaluators run on a blocking thread: a Wasm policy may spend up to its deadline,
            // and a probe round must not hold a data-path worker thread for that long.
            let evaluation = {
                let (evaluator, probed, probe) = (
                    Arc::clone(&self.evaluator),
                    self.probed.clone(),
                    result.clone(),
                );
                tokio::task::spawn_blocking(move || evaluator.evaluate(&probed, &probe))
                    .await
                    .unwrap_or_else(|e| Evaluation::KeepPrevious {
                        error: format!("the evaluator failed: {e}"),
                    })
            };
            match evaluation {
                Evaluation::Verdict(verdict) => {
                    if verdict.is_up() { &up } else { &down }.increment(1);
                    // A passing check ends a passive ejection (as Envoy does by default).
                    if verdict.is_up() && self.instance.outlier.uneject(now) {
                        tracing::info!(service = %service, instance = %instance, "active check passed: passive ejection ended");
                    }
                    let change = self.instance.health.record(
                        &verdict,
                        &result,
                        now,
                        self.check.rise,
                        self.check.fall,
                    );
                    if let Some((from, to)) = change.status {
                        status_changes.increment(1);
                        self.changes.send_modify(|n| *n = n.wrapping_add(1));
                        tracing::info!(service = %service, instance = %instance, ?from, ?to, probe = %result.summary(), "health status changed");
                    }
                    if let Some((from, to)) = change.role {
                        role_changes.increment(1);
                        tracing::info!(service = %service, instance = %instance, ?from, ?to, "role changed");
                    }
                    // A primary's every confirmation counts too: it may now overlap another
                    // member's claim (a split brain).
                    let confirms_primary = self.instance.health.is_primary();
                    if (change.role.is_some() || change.status.is_some() || confirms_primary)
                        && let Some(svc) = self.services.load().get(&service)
                    {
                        svc.recompute_primary(now);
                    }
                    // After the primary is settled: requests waiting for one look again.
                    self.shared.verdicts.send_modify(|n| *n = n.wrapping_add(1));
                }
                Evaluation::KeepPrevious { error } => {
                    stale.increment(1);
                    tracing::warn!(service = %service, instance = %instance, %error, "health policy failed; keeping the previous verdict (stale)");
                    self.instance.health.record_stale(&result, error, now);
                }
            }
        }
    }
}
