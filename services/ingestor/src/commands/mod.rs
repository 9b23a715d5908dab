//! The operator commands that run next to the service: `check`, `status`, `report`, `replay`,
//! `reset`, `healthcheck`. Each is a short async function that prints for people and returns whether it
//! succeeded; `main` turns that into the exit code.

pub mod check;
pub mod healthcheck;
pub mod replay;
pub mod report;
pub mod reset;
pub mod status;
