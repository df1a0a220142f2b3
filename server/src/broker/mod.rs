//! Scale-out on Redis Streams (docs/scale-out.md): the server hands accepted prompts to a stream
//! that `comfyrs worker` processes on any number of hosts claim through one consumer group.
//!
//! - [`Namespace`]: the key names one deployment uses (several can share a Redis).
//! - [`Job`]: what travels in the stream for one prompt.
//! - [`PromptQueue`]: publish, claim, renew the lease, acknowledge, reclaim from the dead.
//! - [`EventLog`] / [`EventReader`]: the messages of running prompts, back to the server.
//! - [`ControlChannel`]: interrupts and cancellations, out to the workers.
//! - [`Roster`]: the workers' heartbeats (who runs what, where, with which warm caches).
//! - [`run_worker`]: a worker's loop (`comfyrs worker`); `link` is the server's side.

pub mod affinity;
mod backoff;
mod conn;
mod control;
mod error;
mod events;
mod job;
mod keys;
pub(crate) mod link;
mod pulse;
mod queue;
mod roster;
mod runner;
mod uploads;

pub use control::{ControlChannel, ControlMessage, ControlSubscriber};
pub use error::BrokerError;
pub use events::{EventLog, EventReader, Outgoing, WorkerEvent};
pub use job::Job;
pub use keys::Namespace;
pub use link::BrokerSettings;
pub use queue::{Delivery, Lease, PromptQueue, Withdrawal, DEFAULT_LEASE};
pub use roster::{Heartbeat, Roster, HEARTBEAT};
pub use runner::{run_worker, WorkerOptions};
