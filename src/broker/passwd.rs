//! The broker's `password_file`, in mosquitto_passwd format.
//!
//! One `user:hash` a line; blank lines and lines starting with `#` (after leading
//! blanks) are skipped; blanks around the user name and the hash are trimmed, as
//! mosquitto does. Two hash formats, checked against mosquitto 2.0's
//! `src/password_mosq.c` and `src/security_default.c` (`unpwd__decode_passwords`,
//! `pw__digest`):
//!
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512 over the password with the
//!   salt, `iterations` rounds, 64 bytes out. What `mosquitto_passwd` 2.x writes (101
//!   iterations unless `-I` says otherwise).
//! - `$6$<salt>$<hash>`: one SHA-512 over the password bytes followed by the salt bytes
//!   (`mosquitto_passwd -H sha512`, the default of mosquitto 1.6 and older). This is not
//!   glibc's sha512-crypt, which shares the prefix.
//!
//! Salt and hash are standard base64 (padding optional); like mosquitto, the salt must be
//! 12 bytes and the hash 64. Unlike mosquitto, which logs and drops a bad entry (and
//! silently skips a line without `:`), every malformed line is an error naming the file
//! and line, never the hash; so is a user named twice. Plain-text passwords (a file never
//! run through `mosquitto_passwd -U`) are refused too.
//!
//! Verifying compares in constant time, and an unknown user costs one PBKDF2 run as well,
//! so the time taken does not tell which user names exist. The password is all the
//! bytes of the CONNECT's password field (mosquitto stops at the first NUL byte).
//! Cost of one verify at 101 iterations, measured on the 2-core development machine:
//! about 45 µs with the release profile's opt-level (1.7 ms in a debug build); the
//! `verify_cost` test prints it (see there for the command).

use std::collections::HashMap;
use std::path::Path;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

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

/// Salt length mosquitto writes and insists on reading.
const SALT_LEN: usize = 12;
/// SHA-512 output, and the PBKDF2 output length mosquitto uses.
const HASH_LEN: usize = 64;
/// What `mosquitto_passwd` 2.x uses unless told otherwise (`-I`).
pub const DEFAULT_ITERATIONS: u32 = 101;

/// Standard base64 alphabet; mosquitto (OpenSSL's BIO) writes the padding, but a file
/// edited by hand without it is just as clear.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One user's stored hash.
#[derive(Clone)]
enum Hash {
    /// `$6$`: SHA-512(password || salt).
    Sha512 {
        salt: [u8; SALT_LEN],
        hash: [u8; HASH_LEN],
    },
    /// `$7$`: PBKDF2-HMAC-SHA512(password, salt, iterations).
    Pbkdf2 {
        iterations: u32,
        salt: [u8; SALT_LEN],
        hash: [u8; HASH_LEN],
    },
}

impl Hash {
    fn matches(&self, password: &[u8]) -> bool {
        let (expected, computed) = match self {
            Hash::Sha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                let mut out = [0u8; HASH_LEN];
                out.copy_from_slice(&digest.finalize());
                (hash, out)
            }
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = [0u8; HASH_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                (hash, out)
            }
        };
        bool::from(expected.ct_eq(&computed))
    }
}

/// The users of a password file and their hashes.
///
/// `Debug` shows the user names only, never a hash.
#[derive(Default, Clone)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
}

impl std::fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.users.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("PasswordFile")
            .field("users", &names)
            .finish()
    }
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
    pub fn parse(file: &str, text: &str) -> Result<PasswordFile, PasswdError> {
        let mut users = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let error = |message: String| PasswdError::Line {
                file: file.to_string(),
                line,
                message,
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = trimmed.split_once(':') else {
                return Err(error("expected `user:hash` (no `:` on this line)".into()));
            };
            let user = user.trim();
            if user.is_empty() {
                return Err(error("empty user name".into()));
            }
            let hash =
                parse_hash(hash.trim()).map_err(|why| error(format!("user {user:?}: {why}")))?;
            if users.insert(user.to_string(), hash).is_some() {
                return Err(error(format!("user {user:?} appears twice")));
            }
        }
        Ok(PasswordFile { users })
    }

    /// Whether `username` exists and `password` matches its hash.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        match self.users.get(username) {
            Some(hash) => hash.matches(password),
            None => {
                // Same work as for a real user of the default format, so an unknown
                // name does not answer faster than a wrong password.
                let decoy = Hash::Pbkdf2 {
                    iterations: DEFAULT_ITERATIONS,
                    salt: [0; SALT_LEN],
                    hash: [0; HASH_LEN],
                };
                let _ = decoy.matches(password);
                false
            }
        }
    }

    /// Whether the file names `username` (whatever its password).
    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// How many users the file holds.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file holds no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Decode one `$6$…` or `$7$…` field. The message never quotes the field itself.
fn parse_hash(field: &str) -> Result<Hash, String> {
    let Some(rest) = field.strip_prefix('$') else {
        return Err(
            "the password is not hashed (expected `$7$…` or `$6$…`; run mosquitto_passwd -U)"
                .into(),
        );
    };
    let parts: Vec<&str> = rest.split('$').collect();
    match parts.as_slice() {
        ["7", iterations, salt, hash] => {
            let iterations = match iterations.parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => return Err("`$7$` hash: iterations is not a whole number ≥ 1".into()),
            };
            Ok(Hash::Pbkdf2 {
                iterations,
                salt: decode::<SALT_LEN>(salt, "salt")?,
                hash: decode::<HASH_LEN>(hash, "hash")?,
            })
        }
        ["7", ..] => Err("`$7$` hash: expected `$7$<iterations>$<salt>$<hash>`".into()),
        ["6", salt, hash] => Ok(Hash::Sha512 {
            salt: decode::<SALT_LEN>(salt, "salt")?,
            hash: decode::<HASH_LEN>(hash, "hash")?,
        }),
        ["6", ..] => Err("`$6$` hash: expected `$6$<salt>$<hash>`".into()),
        _ => Err("unknown hash type (expected `$7$…` or `$6$…`)".into()),
    }
}

fn decode<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let bytes = BASE64
        .decode(text)
        .map_err(|_| format!("{what} is not valid base64"))?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{what} is {} bytes, expected {N}", bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A password file written by the real `mosquitto_passwd` (Debian package mosquitto).
    fn mosquitto_passwd(dir: &Path, args: &[&str]) {
        let status = Command::new("mosquitto_passwd")
            .args(args)
            .current_dir(dir)
            .status()
            .expect("mosquitto_passwd runs (apt-get install mosquitto)");
        assert!(status.success(), "mosquitto_passwd {args:?}: {status}");
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/auth")
            .join(name)
    }

    #[test]
    fn real_mosquitto_passwd_file_pbkdf2_default() {
        let dir = tempfile::tempdir().unwrap();
        mosquitto_passwd(dir.path(), &["-c", "-b", "pw", "alice", "s3cret pass"]);
        mosquitto_passwd(dir.path(), &["-b", "pw", "bob", "hunter2"]);
        let text = std::fs::read_to_string(dir.path().join("pw")).unwrap();
        assert!(text.contains("alice:$7$101$"), "{text}");

        let file = PasswordFile::load(&dir.path().join("pw")).unwrap();
        assert_eq!(file.len(), 2);
        assert!(!file.is_empty());
        assert!(file.verify("alice", b"s3cret pass"));
        assert!(file.verify("bob", b"hunter2"));
        assert!(!file.verify("alice", b"hunter2"));
        assert!(!file.verify("alice", b"s3cret pas"));
        assert!(!file.verify("alice", b""));
        assert!(!file.verify("Alice", b"s3cret pass"));
        assert!(!file.verify("carol", b"hunter2"));
        assert!(file.contains("bob"));
        assert!(!file.contains("carol"));
    }

    #[test]
    fn real_mosquitto_passwd_file_other_iterations_and_sha512() {
        let dir = tempfile::tempdir().unwrap();
        mosquitto_passwd(
            dir.path(),
            &["-c", "-I", "1000", "-b", "pw", "carol", "pässwörd"],
        );
        // `-H sha512` writes mosquitto 1.6's `$6$` format.
        mosquitto_passwd(
            dir.path(),
            &["-H", "sha512", "-b", "pw", "dave", "old:style"],
        );
        let text = std::fs::read_to_string(dir.path().join("pw")).unwrap();
        assert!(text.contains("carol:$7$1000$"), "{text}");
        assert!(text.contains("dave:$6$"), "{text}");

        let file = PasswordFile::load(&dir.path().join("pw")).unwrap();
        assert!(file.verify("carol", "pässwörd".as_bytes()));
        assert!(!file.verify("carol", b"passwort"));
        assert!(file.verify("dave", b"old:style"));
        assert!(!file.verify("dave", b"old:styl"));
    }

    /// Hashes computed independently by Python's hashlib (tests/fixtures/auth/README.md
    /// has the command), with comments, blank lines and blanks around fields.
    #[test]
    fn python_hashlib_fixture() {
        let file = PasswordFile::load(&fixture("hashlib.passwd")).unwrap();
        assert_eq!(file.len(), 3);
        assert!(file.verify("six", b"password six"));
        assert!(!file.verify("six", b"password 6"));
        assert!(file.verify("seven", b"password seven"));
        assert!(!file.verify("seven", b"password six"));
        assert!(file.verify("many", b"password many"));
        assert!(!file.verify("many", b"password seven"));
    }

    fn line_error(text: &str) -> (usize, String) {
        match PasswordFile::parse("pw.txt", text) {
            Err(PasswdError::Line {
                file,
                line,
                message,
            }) => {
                assert_eq!(file, "pw.txt");
                (line, message)
            }
            other => panic!("expected a line error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn malformed_lines_name_file_and_line_but_not_the_hash() {
        let good = "alice:$7$101$yGRjx4j0E6koRjdy$25fSWzbRLAw9JwTJjuqkhg2Gnerh1sWjS9bVFh5bYA79ha1pVijjWmMEjXlPtuV5AH7scH0ZcTtrDTu76Kthzg==";
        let salt = "yGRjx4j0E6koRjdy";
        let hash = "25fSWzbRLAw9JwTJjuqkhg2Gnerh1sWjS9bVFh5bYA79ha1pVijjWmMEjXlPtuV5AH7scH0ZcTtrDTu76Kthzg==";
        assert!(PasswordFile::parse("pw.txt", good).is_ok());
        let cases = [
            ("no colon here".to_string(), "no `:`"),
            (format!(":$7$101${salt}${hash}"), "empty user name"),
            ("bob:plaintext".to_string(), "not hashed"),
            (format!("bob:$5${salt}${hash}"), "unknown hash type"),
            (format!("bob:$7$0${salt}${hash}"), "iterations"),
            (format!("bob:$7$many${salt}${hash}"), "iterations"),
            (format!("bob:$7${salt}${hash}"), "expected `$7$"),
            (format!("bob:$6$101${salt}${hash}"), "expected `$6$"),
            (
                format!("bob:$7$101$!!{salt}${hash}"),
                "salt is not valid base64",
            ),
            (
                format!("bob:$7$101$AAAA${hash}"),
                "salt is 3 bytes, expected 12",
            ),
            (
                format!("bob:$6${salt}$AAAA"),
                "hash is 3 bytes, expected 64",
            ),
            (
                format!("bob:$7$101${salt}${hash}:extra"),
                "hash is not valid base64",
            ),
            (good.to_string(), "appears twice"),
        ];
        for (bad, expected) in cases {
            let text = format!("# users\n{good}\n\n{bad}\n");
            let (line, message) = line_error(&text);
            assert_eq!(line, 4, "{bad}: {message}");
            assert!(message.contains(expected), "{bad}: {message}");
            assert!(
                !message.contains(hash) && !message.contains(salt),
                "{message}"
            );
            let shown = PasswordFile::parse("pw.txt", &text)
                .unwrap_err()
                .to_string();
            assert!(shown.starts_with("pw.txt:4: "), "{shown}");
        }
    }

    #[test]
    fn empty_file_and_unreadable_file() {
        let file = PasswordFile::parse("pw", "# nobody yet\n\n   \n").unwrap();
        assert!(file.is_empty());
        assert!(!file.verify("anyone", b""));

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        match PasswordFile::load(&missing) {
            Err(PasswdError::Read { file, .. }) => assert_eq!(file, missing.display().to_string()),
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    #[test]
    fn debug_shows_no_hash() {
        let file = PasswordFile::load(&fixture("hashlib.passwd")).unwrap();
        let shown = format!("{file:?}");
        assert_eq!(shown, r#"PasswordFile { users: ["many", "seven", "six"] }"#);
    }

    /// Not a threshold: prints what one verify costs (`cargo test --release --lib
    /// broker::passwd::tests::verify_cost -- --nocapture`).
    #[test]
    fn verify_cost() {
        let dir = tempfile::tempdir().unwrap();
        mosquitto_passwd(dir.path(), &["-c", "-b", "pw", "alice", "secret"]);
        let file = PasswordFile::load(&dir.path().join("pw")).unwrap();
        let rounds = 200u32;
        let start = std::time::Instant::now();
        let mut ok = 0;
        for _ in 0..rounds {
            ok += usize::from(file.verify("alice", b"secret"));
        }
        let each = start.elapsed() / rounds;
        assert_eq!(ok, rounds as usize);
        println!("one verify at {DEFAULT_ITERATIONS} iterations: {each:?}");
    }
}
