//! Automation: the key-value space scripts share ([`kv`]), stored and scheduled scripts
//! ([`scripts`], with the pure [`schedule`] planner). Event-triggered scripts and the event
//! stream belong here too as they come.

pub mod kv;
pub mod schedule;
pub mod scripts;
