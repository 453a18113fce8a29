//! Automation: what scripts keep and share between runs. Today the key-value space
//! (`kv.*`, [`kv`]); stored, scheduled and triggered scripts and the event stream belong here
//! too as they come.

pub mod kv;
