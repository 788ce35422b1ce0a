//! Errors of a running adapter, kept in two kinds (the tokio-modbus habit): the device
//! answered but said no, or the way to it failed.

/// Why an adapter's poll, write or run failed.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The transport failed (timeout, CRC, I/O, a process that died): the device is
    /// marked offline and retried with back-off.
    #[error("transport: {0}")]
    Transport(String),
    /// The device answered with an error about one point (a Modbus exception): that
    /// point's problem; the device stays online.
    #[error("device: {0}")]
    Device(String),
    /// The adapter cannot work with what it was given (a port that does not exist, a
    /// command that cannot start): the device is offline, and the adapter is built and
    /// started again with back-off.
    #[error("{0}")]
    Fatal(String),
    /// The daemon is shutting down; not a failure.
    #[error("shutting down")]
    Cancelled,
}

impl AdapterError {
    pub fn transport(e: impl std::fmt::Display) -> AdapterError {
        AdapterError::Transport(e.to_string())
    }

    pub fn device(e: impl std::fmt::Display) -> AdapterError {
        AdapterError::Device(e.to_string())
    }

    pub fn fatal(e: impl std::fmt::Display) -> AdapterError {
        AdapterError::Fatal(e.to_string())
    }
}

impl From<std::io::Error> for AdapterError {
    fn from(e: std::io::Error) -> Self {
        AdapterError::Transport(e.to_string())
    }
}
