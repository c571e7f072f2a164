//! The domain core of converge.
//!
//! Everything here is pure: no sockets, no files, no SQL, no async runtime, no protobuf.
//! The rules of the broker (what a valid name is, how long to wait before the next delivery
//! attempt, which messages a filter lets through) live here once, so that every storage engine
//! and both API surfaces (gRPC and REST) apply exactly the same rules, and so that those rules
//! can be tested fast and exhaustively.
//!
//! Start reading at [`store::Store`]: it is the contract between the API layer and the engines.

pub mod clock;
pub mod dead_letter;
pub mod error;
pub mod filter;
pub mod limits;
pub mod message;
pub mod name;
pub mod retry;
pub mod snapshot;
pub mod store;
pub mod subscription;
pub mod topic;

pub use clock::{Clock, ManualClock, OffsetClock, SystemClock};
pub use dead_letter::DeadLetterPolicy;
pub use error::{Error, Result};
pub use message::{AckId, MessageId, NewMessage, ReceivedMessage, StoredMessage};
pub use name::{ProjectId, SnapshotName, SubscriptionName, TopicName};
pub use retry::RetrySchedule;
pub use snapshot::Snapshot;
pub use store::{AckOutcome, Page, PageRequest, PullOptions, SeekTarget, Store};
pub use subscription::Subscription;
pub use topic::Topic;
