//! The PostgreSQL sink: the connection pool, the ledger (claiming and finishing files) and the
//! binary COPY of events and rejected rows. Everything here runs inside a transaction the
//! pipeline owns, so a file's rows, its rejections and its ledger entry commit together.

pub mod analytics;
pub mod copy;
pub mod identity;
pub mod inspect;
pub mod ledger;
pub mod ledger_report;
pub mod loading;
pub mod offsets;
pub mod pool;
pub mod presence;
pub mod recent_ids;

pub use pool::{
    build_pool, classify, connect_once, encoding_problem, explain, server_encoding, ConnectError,
    Failure, Pool, PoolError,
};
