//! The broker's `acl_file`, in mosquitto's acl format.
//!
//! Read against mosquitto 2.0's default checker (`src/security_default.c`:
//! `aclfile__parse`, `mosquitto_acl_check_default`) and its man page (`mosquitto.conf(5)`):
//!
//! ```text
//! # anonymous clients: the lines before any `user` line
//! topic read sensorgate/#
//! # from here on: the rules of user `dashboard`
//! user dashboard
//! topic readwrite sensorgate/+/+/set
//! topic deny sensorgate/secret/#
//! # every client; %c = client id, %u = user name
//! pattern readwrite clients/%c/#
//! ```
//!
//! - `topic [read|write|readwrite|deny] <filter>`: no access word means readwrite. The
//!   filter is the rest of the line (it may hold blanks, then the access word is needed);
//!   a single word after `topic` is the filter, even `topic read`.
//! - `user <name>` starts that user's block (the rest of the line, trimmed); a user named
//!   in two blocks gets the rules of both. Rules before the first `user` line apply to
//!   anonymous clients only; a client with a user name never gets them.
//! - `pattern [access] <filter>` applies to every client, whichever block it sits in, with
//!   `%c` replaced by the client id and `%u` by the user name (anywhere in the filter, as
//!   mosquitto does); a client without user name skips the patterns that hold `%u`.
//! - `#` comments and blank lines are skipped (a comment may be indented; mosquitto
//!   only skips `#` in the first column). A `#` after a rule is not a comment: it is part
//!   of the filter or user name, as in mosquitto. Words may be separated by blanks or tabs.
//! - Anything else is an error naming the file and line: an unknown keyword or access
//!   word, a missing filter or user name, an invalid filter (`+`/`#` not a whole level,
//!   `#` not last).
//!
//! Checks, for a loaded file:
//!
//! - What no rule allows is denied, and a client with no rules can do nothing.
//! - `deny` wins: a matching deny rule, topic or pattern, refuses whatever any allow
//!   says. mosquitto puts deny rules first within the user's topic rules and within the
//!   patterns, but checks the topic rules before the patterns, so there a topic allow
//!   beats a pattern deny; here it does not (the stricter reading of the man page's
//!   "deny topics are handled before topics that grant read/write access").
//! - `read` grants Read, `write` grants Write, `readwrite` both.
//! - Matching is MQTT's: `+` one level, `#` the rest (and the parent level: `a/#` matches
//!   `a`), and a `+` or `#` in the first level does not match a topic starting with `$`.
//! - A client whose user name or client id holds `+` or `#` gets nothing from pattern
//!   allows (mosquitto denies such a client everything its topic rules don't allow, so
//!   it cannot widen a pattern by its name); pattern denies still apply to it.
//!
//! SUBSCRIBE: mosquitto 2's acl_file checker does not check SUBSCRIBE at all (it accepts
//! any filter, "FIXME - implement ACL subscription strings"; mosquitto 2.0.11 grants
//! QoS 0 to `actuators/#` with only `topic read sensors/+/temp`) and instead checks Read on
//! every message it is about to deliver, retained ones included. Its dynamic-security
//! plugin instead requires the filter to lie inside an allowed ACL filter. Here:
//!
//! - [`Acl::allows_subscribe`] accepts a filter when at least one topic it matches could
//!   be readable: some read rule overlaps the filter, and that overlap does not lie
//!   wholly inside one deny rule. So `read sensors/#` allows `sensors/+/temp`, and
//!   `read sensors/+/temp` allows `sensors/#` and `#` too (the client gets the
//!   `sensors/*/temp` messages only), while `actuators/#` is refused (SUBACK failure)
//!   since nothing there could ever be delivered. (A filter whose readable part only
//!   several deny rules cover together is still accepted.) The front must still check
//!   [`Acl::allows`] with [`Access::Read`] on each message it delivers, as mosquitto does.
//! - [`Acl::allows_whole_subscription`] is the strict answer: every topic the filter
//!   matches is readable (the filter lies inside one read rule and overlaps no deny
//!   rule), so per-message checks could be skipped for that subscription.

use std::collections::HashMap;
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

/// The access word of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn parse(word: &str) -> Option<Grant> {
        match word {
            "read" => Some(Grant::Read),
            "write" => Some(Grant::Write),
            "readwrite" => Some(Grant::ReadWrite),
            "deny" => Some(Grant::Deny),
            _ => None,
        }
    }

    fn grants(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Grant::ReadWrite, _) | (Grant::Read, Access::Read) | (Grant::Write, Access::Write)
        )
    }
}

/// One `topic` or `pattern` line.
#[derive(Debug, Clone)]
struct Rule {
    grant: Grant,
    /// The filter as written; for a pattern, before substitution.
    filter: String,
}

/// The rules of an ACL file.
#[derive(Debug, Default, Clone)]
pub struct Acl {
    /// `topic` lines before any `user` line: anonymous clients only.
    anonymous: Vec<Rule>,
    /// `topic` lines by user name (all blocks of one user together).
    users: HashMap<String, Vec<Rule>>,
    /// `pattern` lines: every client, after substituting `%c` and `%u`.
    patterns: Vec<Rule>,
}

/// A rule as it applies to one client: the filter after substitution.
struct Applied<'a> {
    grant: Grant,
    filter: std::borrow::Cow<'a, str>,
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
    pub fn parse(file: &str, text: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let error = |message: String| AclError::Line {
                file: file.to_string(),
                line: index + 1,
                message,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "topic" | "pattern" => {
                    if rest.is_empty() {
                        return Err(error(format!("`{keyword}` without a topic")));
                    }
                    let (first, after) = split_word(rest);
                    let (grant, filter) = if after.is_empty() {
                        (Grant::ReadWrite, first)
                    } else {
                        let grant = Grant::parse(first).ok_or_else(|| {
                            error(format!(
                                "unknown access `{first}` (read, write, readwrite or deny)"
                            ))
                        })?;
                        (grant, after)
                    };
                    check_filter(filter)
                        .map_err(|why| error(format!("invalid topic `{filter}`: {why}")))?;
                    let rule = Rule {
                        grant,
                        filter: filter.to_string(),
                    };
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(name) = &user {
                        acl.users.entry(name.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                "user" => {
                    if rest.is_empty() {
                        return Err(error("`user` without a user name".into()));
                    }
                    user = Some(rest.to_string());
                }
                other => {
                    return Err(error(format!(
                        "unknown keyword `{other}` (expected topic, pattern or user)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// Whether `client` may `access` the concrete topic `topic` (no wildcards): a PUBLISH
    /// it sends (Write), or a message about to be delivered to it (Read).
    pub fn allows(&self, client: Client<'_>, topic: &str, access: Access) -> bool {
        if topic.is_empty() || topic.contains(['+', '#']) {
            return false;
        }
        let topic: Vec<&str> = topic.split('/').collect();
        let rules = self.applied(client);
        if rules
            .iter()
            .any(|r| r.grant == Grant::Deny && matches(&levels(&r.filter), &topic))
        {
            return false;
        }
        rules
            .iter()
            .any(|r| r.grant.grants(access) && matches(&levels(&r.filter), &topic))
    }

    /// Whether `client` may SUBSCRIBE to `filter` (wildcards allowed): some topic the
    /// filter matches may be readable (see the module doc). Each delivered message still
    /// needs [`Acl::allows`] with [`Access::Read`].
    pub fn allows_subscribe(&self, client: Client<'_>, filter: &str) -> bool {
        if check_filter(filter).is_err() {
            return false;
        }
        let filter = levels(filter);
        let rules = self.applied(client);
        let denies: Vec<Vec<&str>> = rules
            .iter()
            .filter(|r| r.grant == Grant::Deny)
            .map(|r| levels(&r.filter))
            .collect();
        rules
            .iter()
            .filter(|r| r.grant.grants(Access::Read))
            .filter_map(|r| intersect(&filter, &levels(&r.filter)))
            .any(|overlap| !denies.iter().any(|deny| subset(&overlap, deny)))
    }

    /// Whether every topic `filter` matches is readable by `client`: the filter lies
    /// inside one read rule and overlaps no deny rule. Implies [`Acl::allows_subscribe`];
    /// messages delivered through such a subscription need no further Read check.
    pub fn allows_whole_subscription(&self, client: Client<'_>, filter: &str) -> bool {
        if check_filter(filter).is_err() {
            return false;
        }
        let filter = levels(filter);
        let rules = self.applied(client);
        let denied = rules
            .iter()
            .filter(|r| r.grant == Grant::Deny)
            .any(|r| intersect(&filter, &levels(&r.filter)).is_some());
        !denied
            && rules
                .iter()
                .filter(|r| r.grant.grants(Access::Read))
                .any(|r| subset(&filter, &levels(&r.filter)))
    }

    /// How many rules the file holds.
    pub fn len(&self) -> usize {
        self.anonymous.len()
            + self.users.values().map(Vec::len).sum::<usize>()
            + self.patterns.len()
    }

    /// Whether the file holds no rules.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rules that apply to `client`: its block's topic rules, then the patterns with
    /// `%c` and `%u` replaced.
    fn applied<'s>(&'s self, client: Client<'_>) -> Vec<Applied<'s>> {
        let block = match client.username {
            Some(name) => self.users.get(name).map(Vec::as_slice).unwrap_or_default(),
            None => self.anonymous.as_slice(),
        };
        let mut out: Vec<Applied<'s>> = block
            .iter()
            .map(|r| Applied {
                grant: r.grant,
                filter: r.filter.as_str().into(),
            })
            .collect();
        let dangerous = client.client_id.contains(['+', '#'])
            || client.username.is_some_and(|u| u.contains(['+', '#']));
        for rule in &self.patterns {
            if dangerous && rule.grant != Grant::Deny {
                continue;
            }
            if let Some(filter) = substitute(&rule.filter, client) {
                out.push(Applied {
                    grant: rule.grant,
                    filter,
                });
            }
        }
        out
    }
}

/// The first blank-separated word of `s` (already trimmed) and the trimmed rest.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once([' ', '\t']) {
        Some((word, rest)) => (word, rest.trim()),
        None => (s, ""),
    }
}

/// A valid MQTT topic filter: not empty, `+` and `#` only as a whole level, `#` last.
fn check_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("empty");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.len() > 1 && level.contains(['+', '#']) {
            return Err("`+` and `#` must be a whole level");
        }
        if *level == "#" && i + 1 != levels.len() {
            return Err("`#` must be the last level");
        }
    }
    Ok(())
}

/// A pattern with `%c` and `%u` replaced as mosquitto does (left to right; any other
/// `%` stays). None: the pattern holds `%u` and the client has no user name.
fn substitute<'a>(pattern: &'a str, client: Client<'_>) -> Option<std::borrow::Cow<'a, str>> {
    if !pattern.contains('%') {
        return Some(pattern.into());
    }
    if client.username.is_none() && pattern.contains("%u") {
        return None;
    }
    let mut out = String::with_capacity(pattern.len() + client.client_id.len());
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek(), client.username) {
            ('%', Some('c'), _) => {
                chars.next();
                out.push_str(client.client_id);
            }
            ('%', Some('u'), Some(user)) => {
                chars.next();
                out.push_str(user);
            }
            _ => out.push(c),
        }
    }
    Some(out.into())
}

fn levels(filter: &str) -> Vec<&str> {
    filter.split('/').collect()
}

fn is_wild(level: &str) -> bool {
    level == "+" || level == "#"
}

/// Whether a wildcard first level of one side meets a `$` first level of the other (no
/// match then: wildcards never match a `$` level at the top).
fn dollar_clash(a: &[&str], b: &[&str]) -> bool {
    match (a.first(), b.first()) {
        (Some(x), Some(y)) => {
            (is_wild(x) && !is_wild(y) && y.starts_with('$'))
                || (is_wild(y) && !is_wild(x) && x.starts_with('$'))
        }
        _ => false,
    }
}

/// Whether `filter` matches the concrete `topic`.
fn matches(filter: &[&str], topic: &[&str]) -> bool {
    if dollar_clash(filter, topic) {
        return false;
    }
    for (i, level) in filter.iter().enumerate() {
        match (*level, topic.get(i)) {
            ("#", _) => return true,
            (_, None) => return false,
            ("+", Some(_)) => {}
            (l, Some(t)) if l == *t => {}
            _ => return false,
        }
    }
    filter.len() == topic.len()
}

/// The filter matching exactly the topics both filters match, or None if there are none.
/// The empty topic name is not a topic (MQTT forbids it): `+` and `/#` share only that.
fn intersect<'a>(a: &[&'a str], b: &[&'a str]) -> Option<Vec<&'a str>> {
    if dollar_clash(a, b) {
        return None;
    }
    let topic = |out: Vec<&'a str>| (out != [""]).then_some(out);
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let mut i = 0;
    loop {
        match (a.get(i).copied(), b.get(i).copied()) {
            (Some("#"), _) => {
                out.extend_from_slice(&b[i.min(b.len())..]);
                return topic(out);
            }
            (_, Some("#")) => {
                out.extend_from_slice(&a[i.min(a.len())..]);
                return topic(out);
            }
            (None, None) => return topic(out),
            (None, Some(_)) | (Some(_), None) => return None,
            (Some(x), Some(y)) => {
                if x == "+" {
                    out.push(y);
                } else if y == "+" || x == y {
                    out.push(x);
                } else {
                    return None;
                }
            }
        }
        i += 1;
    }
}

/// Whether every topic filter `a` matches is matched by filter `b`.
fn subset(a: &[&str], b: &[&str]) -> bool {
    if dollar_clash(a, b) {
        return false;
    }
    let mut i = 0;
    loop {
        match (a.get(i).copied(), b.get(i).copied()) {
            (_, Some("#")) => return true,
            (Some("#"), _) => return false,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) => {
                if !(y == "+" || x == y) {
                    return false;
                }
            }
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn anon(client_id: &str) -> Client<'_> {
        Client {
            username: None,
            client_id,
        }
    }

    fn user<'a>(name: &'a str, client_id: &'a str) -> Client<'a> {
        Client {
            username: Some(name),
            client_id,
        }
    }

    fn acl(text: &str) -> Acl {
        Acl::parse("acl.txt", text).unwrap()
    }

    #[test]
    fn anonymous_block_then_user_blocks() {
        let acl = acl("# comment\n\
             topic read public/#\n\
             \n\
             user alice\n\
             topic readwrite alice/#\n\
             user bob\n\
             topic write bob/in\n\
             user alice\n\
             topic read shared/+\n");
        assert_eq!(acl.len(), 4);
        let a = user("alice", "c1");
        let b = user("bob", "c2");
        let nobody = anon("c3");
        assert!(acl.allows(nobody, "public/x", Access::Read));
        assert!(!acl.allows(nobody, "public/x", Access::Write));
        assert!(!acl.allows(nobody, "alice/x", Access::Read));
        // A user never gets the anonymous rules.
        assert!(!acl.allows(a, "public/x", Access::Read));
        assert!(acl.allows(a, "alice/x", Access::Write));
        assert!(
            acl.allows(a, "alice", Access::Read),
            "`#` matches the parent level"
        );
        // Two blocks of one user merge.
        assert!(acl.allows(a, "shared/1", Access::Read));
        assert!(!acl.allows(a, "shared/1/2", Access::Read));
        assert!(acl.allows(b, "bob/in", Access::Write));
        assert!(!acl.allows(b, "bob/in", Access::Read));
        assert!(!acl.allows(b, "alice/x", Access::Read));
        // A user with no block and no patterns can do nothing.
        assert!(!acl.allows(user("carol", "c4"), "public/x", Access::Read));
        assert!(!acl.allows(user("carol", "c4"), "carol/x", Access::Write));
    }

    #[test]
    fn access_words() {
        let acl = acl("topic r\ntopic read r2\ntopic write w\ntopic readwrite rw\ntopic deny d\n");
        let c = anon("c");
        for (topic, read, write) in [
            ("r", true, true), // no access word: readwrite
            ("r2", true, false),
            ("w", false, true),
            ("rw", true, true),
            ("d", false, false),
            ("other", false, false),
        ] {
            assert_eq!(acl.allows(c, topic, Access::Read), read, "{topic} read");
            assert_eq!(acl.allows(c, topic, Access::Write), write, "{topic} write");
        }
        // One word after `topic` is the topic, even an access word (as mosquitto).
        let odd = Acl::parse("acl", "topic read\n").unwrap();
        assert!(odd.allows(c, "read", Access::Write));
    }

    #[test]
    fn topics_with_blanks_tabs_and_indented_comments() {
        let acl = acl("  # indented comment\n\ttopic\tread   my room/temp  \n");
        assert!(acl.allows(anon("c"), "my room/temp", Access::Read));
        assert!(!acl.allows(anon("c"), "my room/temp", Access::Write));
    }

    #[test]
    fn deny_wins_wherever_it_is() {
        let acl = acl("user alice\n\
             topic read sensors/#\n\
             topic deny sensors/secret/#\n\
             topic readwrite devices/#\n\
             pattern deny devices/%c/locked\n\
             pattern read sensors/%u/#\n");
        let a = user("alice", "dev1");
        assert!(acl.allows(a, "sensors/x", Access::Read));
        assert!(!acl.allows(a, "sensors/secret", Access::Read));
        assert!(!acl.allows(a, "sensors/secret/x", Access::Read));
        assert!(acl.allows(a, "devices/dev1/x", Access::Write));
        // A pattern deny beats a topic allow (mosquitto would let the topic allow win).
        assert!(!acl.allows(a, "devices/dev1/locked", Access::Write));
        assert!(acl.allows(a, "devices/dev2/locked", Access::Write));
        // Deny before allow in file order makes no difference.
        let reversed = Acl::parse("acl", "topic deny a/b\ntopic read a/#\n").unwrap();
        assert!(!reversed.allows(anon("c"), "a/b", Access::Read));
        assert!(reversed.allows(anon("c"), "a/c", Access::Read));
    }

    #[test]
    fn patterns_substitute_client_id_and_user_name() {
        let acl = acl("pattern readwrite clients/%c/#\n\
             pattern read users/%u/inbox\n\
             pattern write mixed/%u-%c/x\n\
             pattern read literal/%x/%%c\n\
             user alice\n\
             topic read alice-only\n");
        let a = user("alice", "phone");
        let nobody = anon("sensor7");
        assert!(acl.allows(a, "clients/phone/a/b", Access::Write));
        assert!(!acl.allows(a, "clients/other/a", Access::Write));
        assert!(acl.allows(a, "users/alice/inbox", Access::Read));
        assert!(!acl.allows(a, "users/bob/inbox", Access::Read));
        assert!(acl.allows(a, "mixed/alice-phone/x", Access::Write));
        assert!(acl.allows(a, "literal/%x/%phone", Access::Read));
        // A topic rule keeps %c as written.
        let plain = Acl::parse("acl", "topic read x/%c\n").unwrap();
        assert!(plain.allows(anon("c"), "x/%c", Access::Read));
        assert!(!plain.allows(anon("c"), "x/c", Access::Read));
        // Patterns apply to anonymous clients too, but not those holding %u.
        assert!(acl.allows(nobody, "clients/sensor7/t", Access::Write));
        assert!(!acl.allows(nobody, "users/%u/inbox", Access::Read));
        assert!(!acl.allows(nobody, "users//inbox", Access::Read));
        assert!(!acl.allows(nobody, "alice-only", Access::Read));
    }

    #[test]
    fn wildcard_names_get_nothing_from_pattern_allows() {
        let acl = acl("pattern readwrite clients/%c/#\n\
             pattern deny top/%c\n\
             user evil+\n\
             topic read own/#\n");
        // Client id `+` would turn the pattern into clients/+/#.
        assert!(!acl.allows(anon("+"), "clients/other/x", Access::Read));
        assert!(!acl.allows(anon("#"), "clients/x", Access::Read));
        assert!(!acl.allows(user("evil+", "ok"), "clients/ok/x", Access::Read));
        // Its topic rules still apply; pattern denies too.
        assert!(acl.allows(user("evil+", "ok"), "own/x", Access::Read));
        assert!(acl.allows(anon("fine"), "clients/fine/x", Access::Read));
        assert!(!acl.allows(anon("fine"), "top/fine", Access::Read));
    }

    #[test]
    fn dollar_topics_need_a_dollar_rule() {
        let acl = acl("topic read #\ntopic read +/x\ntopic read $SYS/broker/#\n");
        let c = anon("c");
        assert!(acl.allows(c, "a/b", Access::Read));
        assert!(acl.allows(c, "a/x", Access::Read));
        assert!(!acl.allows(c, "$other/x", Access::Read));
        assert!(acl.allows(c, "$SYS/broker/load", Access::Read));
        assert!(!acl.allows(c, "$SYS/other", Access::Read));
        assert!(acl.allows_subscribe(c, "$SYS/#"), "overlaps $SYS/broker/#");
        assert!(!acl.allows_subscribe(c, "$other/#"));
        assert!(!acl.allows_whole_subscription(c, "$SYS/#"));
        assert!(acl.allows_whole_subscription(c, "#"));
    }

    #[test]
    fn allows_takes_concrete_topics_only() {
        let acl = acl("topic readwrite #\n");
        let c = anon("c");
        assert!(acl.allows(c, "a/b", Access::Write));
        assert!(acl.allows(c, "/", Access::Write));
        assert!(!acl.allows(c, "a/+", Access::Write));
        assert!(!acl.allows(c, "#", Access::Read));
        assert!(!acl.allows(c, "", Access::Read));
    }

    #[test]
    fn subscribe_rules() {
        let acl = acl("user u\n\
             topic read sensors/#\n\
             topic deny sensors/secret/#\n\
             topic read rooms/+/temp\n\
             topic write actuators/#\n");
        let u = user("u", "c");
        // `sensors/#` matches `sensors` itself.
        assert!(acl.allows_subscribe(u, "sensors"));
        assert!(acl.allows_whole_subscription(u, "sensors"));
        // `read sensors/#` covers `sensors/+/temp`.
        assert!(acl.allows_subscribe(u, "sensors/+/temp"));
        assert!(
            !acl.allows_whole_subscription(u, "sensors/+/temp"),
            "overlaps the deny"
        );
        assert!(acl.allows_whole_subscription(u, "sensors/kitchen/+"));
        // `read rooms/+/temp` overlaps `rooms/#` and `#`: accepted, delivery filters.
        assert!(acl.allows_subscribe(u, "rooms/#"));
        assert!(acl.allows_subscribe(u, "#"));
        assert!(acl.allows_subscribe(u, "+/+/temp"));
        assert!(!acl.allows_whole_subscription(u, "rooms/#"));
        assert!(acl.allows_whole_subscription(u, "rooms/+/temp"));
        assert!(acl.allows_whole_subscription(u, "rooms/hall/temp"));
        // Nothing readable: refused.
        assert!(!acl.allows_subscribe(u, "rooms/hall/humidity"));
        assert!(!acl.allows_subscribe(u, "rooms/+"));
        assert!(!acl.allows_subscribe(u, "actuators/#"), "write only");
        assert!(
            !acl.allows_subscribe(u, "sensors/secret/#"),
            "wholly denied"
        );
        assert!(!acl.allows_subscribe(u, "sensors/secret/+/x"));
        assert!(
            acl.allows_subscribe(u, "sensors/+/x"),
            "sensors/a/x is readable"
        );
        // Invalid filters.
        assert!(!acl.allows_subscribe(u, "sensors/#/x"));
        assert!(!acl.allows_subscribe(u, "sensors/a+"));
        assert!(!acl.allows_subscribe(u, ""));
        // Other clients.
        assert!(!acl.allows_subscribe(anon("c"), "sensors/#"));
        assert!(!acl.allows_subscribe(user("v", "c"), "#"));
    }

    #[test]
    fn the_empty_topic_is_no_overlap() {
        // `/#` matches "" (its parent level), `+` too: but "" is no topic.
        let a = acl("topic /#\n");
        assert!(!a.allows_subscribe(anon("c"), "+"));
        assert!(a.allows_subscribe(anon("c"), "+/x"));
        assert!(a.allows_subscribe(anon("c"), "#"));
    }

    #[test]
    fn filter_set_operations() {
        let l = |s| levels(s);
        assert_eq!(intersect(&l("a/#"), &l("+/b")), Some(vec!["a", "b"]));
        assert_eq!(intersect(&l("a/#"), &l("a")), Some(vec!["a"]));
        assert_eq!(intersect(&l("a"), &l("a/#")), Some(vec!["a"]));
        assert_eq!(intersect(&l("a/+"), &l("a")), None);
        assert_eq!(intersect(&l("#"), &l("+/x/#")), Some(vec!["+", "x", "#"]));
        assert_eq!(intersect(&l("#"), &l("$s/x")), None);
        assert!(subset(&l("a"), &l("a/#")));
        assert!(!subset(&l("a/#"), &l("a/+/#")));
        assert!(subset(&l("a/+/#"), &l("a/#")));
        assert!(!subset(&l("a/+"), &l("a/b")));
        assert!(!subset(&l("$s/x"), &l("+/x")));
    }

    fn line_error(text: &str) -> (usize, String) {
        match Acl::parse("acl.txt", text) {
            Err(AclError::Line {
                file,
                line,
                message,
            }) => {
                assert_eq!(file, "acl.txt");
                (line, message)
            }
            other => panic!("expected a line error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        for (bad, expected) in [
            ("topic", "without a topic"),
            ("pattern   ", "without a topic"),
            ("user", "without a user name"),
            ("topic rw a/b", "unknown access `rw`"),
            ("topic read a/#/b", "`#` must be the last level"),
            ("pattern read a/b#", "whole level"),
            ("topic read a+/b", "whole level"),
            ("subscribe a/b", "unknown keyword `subscribe`"),
            ("Topic read a", "unknown keyword `Topic`"),
        ] {
            let text = format!("# head\ntopic read ok/#\n{bad}\ntopic read later\n");
            let (line, message) = line_error(&text);
            assert_eq!(line, 3, "{bad}");
            assert!(message.contains(expected), "{bad}: {message}");
            let shown = Acl::parse("acl.txt", &text).unwrap_err().to_string();
            assert!(shown.starts_with("acl.txt:3: "), "{shown}");
        }
    }

    #[test]
    fn empty_and_unreadable_files() {
        let empty = acl("# nothing\n\n");
        assert!(empty.is_empty());
        assert!(!empty.allows(anon("c"), "a", Access::Read));
        assert!(!empty.allows_subscribe(anon("c"), "#"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl");
        assert!(matches!(Acl::load(&path), Err(AclError::Read { .. })));
        std::fs::write(&path, "topic read a\nbogus\n").unwrap();
        let shown = Acl::load(&path).unwrap_err().to_string();
        assert_eq!(
            shown,
            format!(
                "{}:2: unknown keyword `bogus` (expected topic, pattern or user)",
                path.display()
            )
        );
    }

    // ---- property tests against a reference written separately ----

    /// Reference MQTT matcher: recursive over levels, `$` rule first.
    fn reference_matches(filter: &str, topic: &str) -> bool {
        fn go(f: &[&str], t: &[&str]) -> bool {
            match (f.split_first(), t.split_first()) {
                (Some((&"#", _)), _) => true,
                (Some((&"+", fr)), Some((_, tr))) => go(fr, tr),
                (Some((fl, fr)), Some((tl, tr))) => fl == tl && go(fr, tr),
                (None, None) => true,
                _ => false,
            }
        }
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        go(&f, &t)
    }

    #[derive(Debug, Clone)]
    struct GenRule {
        /// Block: None = anonymous; ignored for patterns.
        section: Option<&'static str>,
        pattern: bool,
        grant: Option<&'static str>,
        filter: String,
    }

    const USERS: [&str; 3] = ["a", "b", "u#"];
    const TOPIC_LEVELS: [&str; 5] = ["a", "b", "$s", "", "z"];

    /// Filters of 1 to 3 levels; with `placeholders`, `%c` and `%u` levels too.
    fn filter_strategy(placeholders: bool) -> impl Strategy<Value = String> {
        let mut inner = vec!["a", "b", "$s", "", "+"];
        if placeholders {
            inner.extend(["%c", "%u"]);
        }
        let mut last = inner.clone();
        last.push("#");
        let (inner, last) = (prop::sample::select(inner), prop::sample::select(last));
        (prop::collection::vec(inner, 0..3), last).prop_map(|(mut v, l)| {
            v.push(l);
            let filter = v.join("/");
            // A lone empty level is the empty string: no filter at all.
            if filter.is_empty() {
                "/".to_string()
            } else {
                filter
            }
        })
    }

    fn rule_strategy() -> impl Strategy<Value = GenRule> {
        (
            prop::option::of(prop::sample::select(USERS.to_vec())),
            prop::option::of(prop::sample::select(vec![
                "read",
                "write",
                "readwrite",
                "deny",
            ])),
            // Patterns hold %c / %u; a topic rule keeps them literal, which no topic of
            // the universe below holds, so topic rules go without.
            any::<bool>().prop_flat_map(|pattern| (Just(pattern), filter_strategy(pattern))),
        )
            .prop_map(|(section, grant, (pattern, filter))| GenRule {
                section,
                pattern,
                grant,
                filter,
            })
    }

    fn client_strategy() -> impl Strategy<Value = (Option<&'static str>, &'static str)> {
        (
            prop::option::of(prop::sample::select(vec!["a", "b", "u#", "z"])),
            prop::sample::select(vec!["a", "b", "z", "c+"]),
        )
    }

    /// Anonymous rules first, then a `user` line whenever the block changes (so a user
    /// may get two blocks).
    fn render(rules: &[GenRule]) -> String {
        let mut sorted: Vec<&GenRule> = rules.iter().collect();
        sorted.sort_by_key(|r| r.section.is_some());
        let mut text = String::new();
        let mut current: Option<&str> = None;
        for r in sorted {
            if !r.pattern && r.section != current {
                if let Some(u) = r.section {
                    text.push_str(&format!("user {u}\n"));
                }
                current = r.section;
            }
            let keyword = if r.pattern { "pattern" } else { "topic" };
            match r.grant {
                Some(g) => text.push_str(&format!("{keyword} {g} {}\n", r.filter)),
                None => text.push_str(&format!("{keyword} {}\n", r.filter)),
            }
        }
        text
    }

    /// The rules of the module doc, straight from the generated list.
    fn reference_allows(
        rules: &[GenRule],
        username: Option<&str>,
        client_id: &str,
        topic: &str,
        access: Access,
    ) -> bool {
        let dangerous =
            client_id.contains(['+', '#']) || username.is_some_and(|u| u.contains(['+', '#']));
        let mut applied = Vec::new();
        for r in rules {
            let grant = r.grant.unwrap_or("readwrite");
            if r.pattern {
                if dangerous && grant != "deny" {
                    continue;
                }
                if r.filter.contains("%u") && username.is_none() {
                    continue;
                }
                let f = r.filter.replace("%c", client_id);
                let f = match username {
                    Some(u) => f.replace("%u", u),
                    None => f,
                };
                applied.push((grant, f));
            } else if r.section == username {
                applied.push((grant, r.filter.clone()));
            }
        }
        let hit = |g: &str| {
            applied
                .iter()
                .any(|(grant, f)| *grant == g && reference_matches(f, topic))
        };
        if hit("deny") {
            return false;
        }
        hit("readwrite")
            || match access {
                Access::Read => hit("read"),
                Access::Write => hit("write"),
            }
    }

    /// Every topic of 1 to 4 levels over TOPIC_LEVELS: enough to witness any overlap of
    /// the generated filters (at most 3 levels, over the same names).
    fn universe() -> Vec<String> {
        let mut all: Vec<String> = TOPIC_LEVELS.iter().map(|s| s.to_string()).collect();
        let mut last = all.clone();
        for _ in 1..4 {
            let next: Vec<String> = last
                .iter()
                .flat_map(|t| TOPIC_LEVELS.iter().map(move |l| format!("{t}/{l}")))
                .collect();
            all.extend(next.iter().cloned());
            last = next;
        }
        all.retain(|t| !t.is_empty());
        all
    }

    proptest! {
        // No regression files in the source tree: a failure prints its minimal input.
        #![proptest_config(ProptestConfig {
            cases: 1024,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn allows_agrees_with_reference(
            rules in prop::collection::vec(rule_strategy(), 0..8),
            (username, client_id) in client_strategy(),
            topic_levels in prop::collection::vec(prop::sample::select(TOPIC_LEVELS.to_vec()), 1..5),
            write in any::<bool>(),
        ) {
            let topic = topic_levels.join("/");
            prop_assume!(!topic.is_empty());
            let text = render(&rules);
            let acl = Acl::parse("acl", &text).unwrap();
            let client = Client { username, client_id };
            let access = if write { Access::Write } else { Access::Read };
            prop_assert_eq!(
                acl.allows(client, &topic, access),
                reference_allows(&rules, username, client_id, &topic, access),
                "acl:\n{}topic {} {:?}", text, topic, access
            );
        }

        #[test]
        fn subscribe_agrees_with_readable_topics(
            rules in prop::collection::vec(rule_strategy(), 0..6),
            (username, client_id) in client_strategy(),
            filter in filter_strategy(false),
        ) {
            let text = render(&rules);
            let acl = Acl::parse("acl", &text).unwrap();
            let client = Client { username, client_id };
            let matched: Vec<String> = universe()
                .into_iter()
                .filter(|t| reference_matches(&filter, t))
                .collect();
            let readable = matched.iter().filter(|t| acl.allows(client, t, Access::Read)).count();
            let subscribe = acl.allows_subscribe(client, &filter);
            let whole = acl.allows_whole_subscription(client, &filter);
            if !subscribe {
                prop_assert_eq!(readable, 0, "refused, yet readable\nacl:\n{}filter {}", text, filter);
            }
            if whole {
                prop_assert!(subscribe);
                prop_assert_eq!(readable, matched.len(), "whole, yet not all readable\nacl:\n{}filter {}", text, filter);
            }
            // Without deny rules the overlap test is exact.
            if !rules.iter().any(|r| r.grant == Some("deny")) {
                prop_assert_eq!(subscribe, readable > 0, "acl:\n{}filter {}", text, filter);
            }
        }
    }
}
