//! The event stream: every event from a sequence on, history first, then live.

use super::*;

impl Memory {
    /// Every event from `from_seq` on: history (archive and live log), then new events as
    /// they commit. The buffer is bounded: a subscriber that falls more than 4,096 events
    /// behind receives [`Error::Lagged`] with the sequence to resubscribe from, and the
    /// stream ends. Writers never wait for subscribers.
    pub fn subscribe(&self, from_seq: u64) -> Result<EventStream> {
        self.inner.check()?;
        let mut live = self.inner.events_tx.subscribe();
        let log = self.inner.log()?;
        let (tx, rx) = mpsc::channel(1024);
        std::thread::Builder::new()
            .name("magray-subscriber".into())
            .spawn(move || {
                let mut next = from_seq.max(1);
                // The History reads files on its own; holding the Log here would keep close()
                // waiting on a subscriber nobody reads.
                let history = log.history(next);
                drop(log);
                for env in history {
                    let item = env.map_err(Error::from);
                    let stop = item.is_err();
                    if let Ok(e) = &item {
                        next = e.seq + 1;
                    }
                    if tx.blocking_send(item).is_err() || stop {
                        return;
                    }
                }
                loop {
                    match live.blocking_recv() {
                        Ok(env) => {
                            if env.seq < next {
                                continue;
                            }
                            next = env.seq + 1;
                            if tx.blocking_send(Ok((*env).clone())).is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let _ = tx.blocking_send(Err(Error::Lagged { resume_from: next }));
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
            .map_err(|e| Error::io(&self.inner.dir, e))?;
        Ok(ReceiverStream::new(rx))
    }
}
