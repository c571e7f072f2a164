//! The handle a submitter awaits until its batch is durable.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::types::WalError;

/// Sending side of a ticket, held by the writer thread until the batch is durable.
pub(crate) type TicketSender = oneshot::Sender<Result<(), WalError>>;

/// Resolves once the batch it was issued for is durable (per [`SyncMode`](super::SyncMode)),
/// or with the error that kept it from becoming durable.
///
/// Separate from [`Wal::submit`](super::Wal::submit) so the engine can queue a batch under its
/// state lock (fixing log order) and wait for the disk after releasing it. Dropping a ticket
/// does not cancel the append.
#[derive(Debug)]
#[must_use = "a batch is acknowledged only once its ticket resolves"]
pub struct AppendTicket {
    rx: oneshot::Receiver<Result<(), WalError>>,
}

impl AppendTicket {
    /// A ticket and the sender that resolves it.
    pub(crate) fn new() -> (TicketSender, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Self { rx })
    }

    /// Blocks the current thread until the batch is durable, for callers outside async code.
    ///
    /// # Panics
    /// When called from within an asynchronous execution context (await the ticket there).
    pub fn wait(self) -> Result<(), WalError> {
        self.rx.blocking_recv().unwrap_or(Err(WalError::Closed))
    }
}

impl Future for AppendTicket {
    type Output = Result<(), WalError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A dropped sender means the writer stopped without answering: never report success.
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|received| received.unwrap_or(Err(WalError::Closed)))
    }
}
