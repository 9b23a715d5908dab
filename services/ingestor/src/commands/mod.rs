//! The operator commands that run next to the service: `check`, `status`, `replay`, `reset`,
//! `healthcheck`. Each is a short async function returning an exit code.
