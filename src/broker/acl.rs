//! The broker's `acl_file`, in mosquitto's acl format (being built).
//!
//! Interface fixed for the broker front; the implementation comes separately.

use std::path::Path;

/// Why an ACL file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
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

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive messages published on the topic.
    Read,
    /// Publish on the topic.
    Write,
}

/// Who is asking: the CONNECT's username (None when anonymous) and client id.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
}

/// The rules of an ACL file.
#[derive(Debug, Default, Clone)]
pub struct Acl {
    rules: usize,
}

impl Acl {
    /// Read and parse `path`; every malformed line is an error naming file and line.
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Acl::parse(&path.display().to_string(), &text)
    }

    /// Parse the text of an ACL file; `file` is only used in errors.
    pub fn parse(file: &str, _text: &str) -> Result<Acl, AclError> {
        Err(AclError::Line {
            file: file.to_string(),
            line: 0,
            message: "ACL files are not supported yet".into(),
        })
    }

    /// Whether `client` may `access` the concrete topic `topic` (no wildcards): a PUBLISH
    /// it sends (Write), or a message about to be delivered to it (Read).
    pub fn allows(&self, _client: Client<'_>, _topic: &str, _access: Access) -> bool {
        false
    }

    /// Whether `client` may SUBSCRIBE to `filter` (wildcards allowed).
    pub fn allows_subscribe(&self, _client: Client<'_>, _filter: &str) -> bool {
        false
    }

    /// How many rules the file holds.
    pub fn len(&self) -> usize {
        self.rules
    }

    /// Whether the file holds no rules.
    pub fn is_empty(&self) -> bool {
        self.rules == 0
    }
}
