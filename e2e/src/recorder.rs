//! A server thread that records what it serves: the part the TCP [`Listener`](crate::Listener)
//! and the UDP [`Responder`](crate::udp::Responder) share.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

/// A thread serving a bound socket until dropped, recording one `T` per connection or datagram.
#[derive(Debug)]
pub(crate) struct Recorder<T> {
    what: &'static str,
    token: String,
    local: SocketAddr,
    records: Arc<Mutex<Vec<T>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Debug + Send + 'static> Recorder<T> {
    /// Starts `serve(token, records, stop)` on a thread named `what-token`; it must return soon
    /// after `stop` is set.
    pub(crate) fn spawn(
        what: &'static str,
        token: &str,
        local: SocketAddr,
        serve: impl FnOnce(&str, &Mutex<Vec<T>>, &AtomicBool) + Send + 'static,
    ) -> Self {
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::Builder::new()
            .name(format!("{what}-{token}"))
            .spawn({
                let (records, stop, token) = (Arc::clone(&records), Arc::clone(&stop), token.to_owned());
                move || serve(&token, &records, &stop)
            })
            .unwrap_or_else(|e| panic!("spawn the {what} thread: {e}"));
        Self {
            what,
            token: token.to_owned(),
            local,
            records,
            stop,
            thread: Some(thread),
        }
    }

    /// The token it answers with.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Removes and returns what was recorded so far, oldest first.
    pub(crate) fn take_all(&self) -> Vec<T> {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The one record so far; panics naming the server when there was not exactly one.
    pub(crate) fn take_one(&self) -> T {
        let mut all = self.take_all();
        assert_eq!(
            all.len(),
            1,
            "{} {:?} expected one, got {all:#?}",
            self.what,
            self.token
        );
        all.pop().expect("length checked")
    }
}

impl<T> Drop for Recorder<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!(
                "capture-e2e: the thread of {} {:?} panicked",
                self.what, self.token
            );
        }
    }
}
