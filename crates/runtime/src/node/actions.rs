//! Carrying out the protocol's actions: work for the worker pool, deliveries, finished jobs,
//! and what concerns peers, handed to the network layer.

use super::job::Delivery;
use super::local::LocalRunner;
use super::{HostProtocol, Node, Payload, Remote, ReplicaBody};
use crate::executor::BlockRunner;
use fragmenta_sched::protocol::Action;
use fragmenta_sched::Weight;
use std::sync::Arc;

impl Node {
    /// Carries out every pending action. Called with the protocol locked; never runs user
    /// code and never waits.
    pub(super) fn process(&self, p: &mut HostProtocol) {
        let remote = self.remote.read().clone();
        while let Some(action) = p.poll_action() {
            match action {
                Action::SubmitWork {
                    key,
                    job,
                    spec,
                    fragments,
                } => {
                    let mut reserve = false;
                    let runner: Option<Arc<dyn BlockRunner>> = if job.initiator == self.host() {
                        self.job(job).map(|ij| {
                            *ij.work.lock() = Some(key);
                            reserve = ij.reserve.load(std::sync::atomic::Ordering::Relaxed);
                            Arc::new(LocalRunner {
                                node: self.weak.clone(),
                                job: ij,
                            }) as Arc<dyn BlockRunner>
                        })
                    } else {
                        remote.as_ref().and_then(|r| r.runner(job))
                    };
                    match runner {
                        Some(runner) => {
                            let submitted = if reserve {
                                self.exec.submit_reserving(key, spec, runner, fragments)
                            } else {
                                self.exec.submit(key, spec, runner, fragments)
                            };
                            if let Err(e) = submitted {
                                let reason = crate::executor::refusal(self.host(), &e);
                                tracing::error!(%job, %reason, "the worker pool refused work");
                            }
                        }
                        None => tracing::error!(%job, "no runner for the job's work"),
                    }
                }
                Action::AddWork { key, fragments } => {
                    if !self.exec.add(key, fragments) {
                        tracing::error!(?key, "fragments for work the pool does not know");
                    }
                }
                Action::DrainWork { key } => {
                    let ranges = self.exec.drain_pending(key);
                    p.work_drained(key, ranges);
                }
                Action::ReclaimWork { key, fragments } => {
                    let ranges = self.exec.take_pending(key, &fragments);
                    p.work_reclaimed(key, ranges);
                }
                Action::RemoveWork { key } => {
                    self.exec.remove(key);
                }
                Action::Deliver {
                    job,
                    fragment,
                    seq,
                    payload,
                } => match self.job(job) {
                    Some(ij) => self.enqueue(
                        &ij,
                        Delivery::Chunk {
                            fragment,
                            seq,
                            payload,
                        },
                    ),
                    None => p.delivered(job, payload.weight()),
                },
                Action::Finished(mut report) => {
                    if let Some(ij) = self.jobs.lock().remove(&report.job) {
                        report.elapsed = ij.started.elapsed();
                        ij.work.lock().take();
                        self.enqueue(&ij, Delivery::Finish(report));
                    }
                }
                other => match &remote {
                    Some(r) => self.to_remote(&**r, other),
                    None => tracing::error!(action = ?other, "no network for a remote action"),
                },
            }
        }
    }

    /// Carries out an action that concerns peers.
    fn to_remote(&self, r: &dyn Remote, action: Action<Payload, ReplicaBody>) {
        match action {
            Action::SendReplica { job, host } => {
                if let Some(ij) = self.job(job) {
                    r.send_replica(&ij, host);
                }
            }
            Action::SendDispatch {
                job,
                host,
                fragments,
            } => {
                if let Some(ij) = self.job(job) {
                    r.dispatch(&ij, host, fragments);
                }
            }
            Action::SendCancel { job, host } => r.cancel(job, host),
            Action::SendRelease { job, host } => r.release(job, host),
            Action::SendReclaim {
                job,
                host,
                fragments,
            } => r.reclaim(job, host, &fragments),
            Action::SendReclaimed {
                job,
                host,
                fragments,
            } => r.reclaimed(job, host, &fragments),
            Action::SendHeartbeat { host } => r.heartbeat(host),
            Action::SendAnswer { job, answer } => r.answer(job, answer),
            Action::LoadReplica { job, body } => r.load_replica(job, body),
            Action::CancelReplica { job } => r.cancel_replica(job),
            Action::DropReplica { job } => r.drop_replica(job),
            Action::HostDown { host, why } => r.host_down(host, why),
            Action::PauseResults { job, host } => r.pause_results(job, host, true),
            Action::ResumeResults { job, host } => r.pause_results(job, host, false),
            other => tracing::error!(action = ?other, "not a remote action"),
        }
    }
}
