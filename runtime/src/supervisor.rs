//! Supervision: every long-lived task of a process runs under a name here. When one ends before
//! shutdown was asked for — an error, a panic, or simply returning — it is logged by name with
//! its cause, the others are stopped in the order they were started, and `run` returns the
//! error, so the process exits non-zero and Docker or systemd restarts it. A dead worker can
//! never hide behind a healthy HTTP listener.

use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a task may take to finish after being asked to, before it is aborted.
const GRACE: Duration = Duration::from_secs(15);

pub struct Supervisor {
    tasks: Vec<Task>,
    ended_tx: mpsc::UnboundedSender<usize>,
    ended_rx: mpsc::UnboundedReceiver<usize>,
}

struct Task {
    name: &'static str,
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

/// Tells the supervisor that task `index` ended, however it ended (panics included).
struct Ended {
    index: usize,
    tx: mpsc::UnboundedSender<usize>,
}

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.tx.send(self.index);
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Supervisor {
            tasks: Vec::new(),
            ended_tx,
            ended_rx,
        }
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `task`, which gets a token asking it to finish; it should return soon after.
    /// Tasks are stopped in the order they were spawned: start the intake first.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let ended = Ended {
            index: self.tasks.len(),
            tx: self.ended_tx.clone(),
        };
        let future = task(stop.clone());
        let handle = tokio::spawn(async move {
            let _ended = ended;
            future.await
        });
        self.tasks.push(Task { name, stop, handle });
    }

    /// Runs until `shutdown` fires or a task ends on its own, then stops every task in order.
    /// `Ok` after a requested shutdown that every task finished cleanly; otherwise the error of
    /// the task that ended first (or failed while stopping), naming it.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let first = tokio::select! {
            () = shutdown.cancelled() => None,
            Some(index) = self.ended_rx.recv() => Some(index),
        };
        let mut failure = None;
        if let Some(index) = first {
            let task = &mut self.tasks[index];
            let error = outcome(task.name, (&mut task.handle).await)
                .err()
                .unwrap_or_else(|| anyhow!("the {} task ended unexpectedly", task.name));
            tracing::error!(task = task.name, error = %format!("{error:#}"), "a task ended unexpectedly; stopping the others");
            failure = Some(error);
        }
        for (index, task) in self.tasks.iter_mut().enumerate() {
            task.stop.cancel();
            if first == Some(index) {
                continue;
            }
            let result = match tokio::time::timeout(GRACE, &mut task.handle).await {
                Ok(joined) => outcome(task.name, joined),
                Err(_) => {
                    task.handle.abort();
                    Err(anyhow!(
                        "the {} task did not stop within {GRACE:?}",
                        task.name
                    ))
                }
            };
            if let Err(e) = result {
                tracing::error!(task = task.name, error = %format!("{e:#}"), "a task failed while stopping");
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

fn outcome(
    name: &str,
    joined: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.context(format!("the {name} task failed"))),
        Err(e) if e.is_panic() => Err(anyhow!("the {name} task panicked")),
        Err(_) => Err(anyhow!("the {name} task was cancelled")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A task that records when it was asked to stop, then stops.
    fn polite(
        name: &'static str,
        log: &Arc<Mutex<Vec<&'static str>>>,
    ) -> impl FnOnce(
        CancellationToken,
    ) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> {
        let log = log.clone();
        move |stop: CancellationToken| {
            Box::pin(async move {
                stop.cancelled().await;
                log.lock().expect("log").push(name);
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn a_requested_shutdown_stops_every_task_in_order_and_succeeds() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut supervisor = Supervisor::new();
        for name in ["http", "processor", "live"] {
            supervisor.spawn(name, polite(name, &log));
        }
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        supervisor.run(shutdown).await.expect("clean shutdown");
        assert_eq!(*log.lock().expect("log"), ["http", "processor", "live"]);
    }

    #[tokio::test]
    async fn a_failing_task_stops_the_others_and_is_named_in_the_error() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut supervisor = Supervisor::new();
        supervisor.spawn("http", polite("http", &log));
        supervisor.spawn("processor", |_stop| async {
            Err(anyhow!("the broker refused the subscription"))
        });
        supervisor.spawn("live", polite("live", &log));
        let error = supervisor
            .run(CancellationToken::new())
            .await
            .expect_err("a task failed");
        assert_eq!(
            format!("{error:#}"),
            "the processor task failed: the broker refused the subscription"
        );
        assert_eq!(*log.lock().expect("log"), ["http", "live"]);
    }

    #[tokio::test]
    async fn a_panic_or_a_quiet_return_counts_as_an_unexpected_end() {
        let mut supervisor = Supervisor::new();
        supervisor.spawn("worker", |_stop| async { panic!("boom") });
        let error = supervisor
            .run(CancellationToken::new())
            .await
            .expect_err("panicked");
        assert_eq!(error.to_string(), "the worker task panicked");

        let mut supervisor = Supervisor::new();
        supervisor.spawn("listener", |_stop| async { Ok(()) });
        let error = supervisor
            .run(CancellationToken::new())
            .await
            .expect_err("ended");
        assert_eq!(error.to_string(), "the listener task ended unexpectedly");
    }
}
