//! The broker's `password_file`, in mosquitto_passwd format (being built).
//!
//! Interface fixed for the broker front; the implementation comes separately.

use std::path::Path;

/// Why a password file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Line {
        file: String,
        line: usize,
        message: String,
    },
}

/// The users of a password file and their hashes.
#[derive(Debug, Default, Clone)]
pub struct PasswordFile {
    users: usize,
}

impl PasswordFile {
    /// Read and parse `path`; every malformed line is an error naming file and line.
    pub fn load(path: &Path) -> Result<PasswordFile, PasswdError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswdError::Read {
            file: path.display().to_string(),
            source,
        })?;
        PasswordFile::parse(&path.display().to_string(), &text)
    }

    /// Parse the text of a password file; `file` is only used in errors.
    pub fn parse(file: &str, _text: &str) -> Result<PasswordFile, PasswdError> {
        Err(PasswdError::Line {
            file: file.to_string(),
            line: 0,
            message: "password files are not supported yet".into(),
        })
    }

    /// Whether `username` exists and `password` matches its hash.
    pub fn verify(&self, _username: &str, _password: &[u8]) -> bool {
        false
    }

    /// How many users the file holds.
    pub fn len(&self) -> usize {
        self.users
    }

    /// Whether the file holds no users.
    pub fn is_empty(&self) -> bool {
        self.users == 0
    }
}
