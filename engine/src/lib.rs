//! Tern's engine. See ARCHITECTURE.md for the map.

pub mod store;
