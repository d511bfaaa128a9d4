//! Where trades come from. Each source decodes Databento records, keeps the trade events,
//! maps instrument ids to symbols, and hands out staging rows already in COPY format.

pub mod file;
pub mod generate;
pub mod historical;
pub mod live;
