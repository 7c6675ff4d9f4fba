//! Tern's engine: the sans-IO core (sessions, sequencers, group commit, fan-out), the tokio
//! driver around it, account and conversation services, and storage behind the [`store::Store`]
//! trait. See ARCHITECTURE.md for the map and the invariants.

pub mod accounts;
pub mod client_addr;
pub mod conversations;
pub mod core;
pub mod driver;
pub mod fair_queue;
pub mod hash_pool;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod paging;
pub mod password;
pub mod rate;
pub mod reactions;
pub mod service;
pub mod store;
