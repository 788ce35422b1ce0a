//! MQTT topic filters: matching a topic name against a filter with `+` and `#`.

/// Does `topic` match `filter`? MQTT 3.1.1 §4.7: `+` is one level, `#` (last) is the
/// rest including the parent level; wildcards at the first level do not match topics
/// that start with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Is `filter` a valid subscription filter?
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i + 1 == levels.len(),
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// Does filter `a` match every topic filter `b` matches?
pub fn covers(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) => return true,
            (_, Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(x), Some(y)) if x == y && y != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Can some topic match both filters?
pub fn overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The fewest filters that receive every topic matching any of `wanted`, each topic
/// through exactly one of them: a filter covered by another is left out, and filters
/// that overlap without one covering the other are replaced by `#`.
pub fn plan(wanted: &[String]) -> Vec<String> {
    let mut keep: Vec<String> = Vec::new();
    for (i, f) in wanted.iter().enumerate() {
        let covered = wanted
            .iter()
            .enumerate()
            .any(|(j, g)| j != i && covers(g, f) && (f != g || j < i));
        if !covered {
            keep.push(f.clone());
        }
    }
    for (i, a) in keep.iter().enumerate() {
        if keep[i + 1..].iter().any(|b| overlap(a, b)) {
            return vec!["#".to_string()];
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(matches("sensorgate/+/+/set", "sensorgate/boiler/temp/set"));
        assert!(!matches("sensorgate/+/+/set", "sensorgate/boiler/temp"));
    }

    #[test]
    fn covering_and_overlapping() {
        assert!(covers("a/#", "a/b/+"));
        assert!(covers("a/#", "a"));
        assert!(covers("+/b", "a/b"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(overlap("a/+/c", "a/b/+"));
        assert!(!overlap("p/status", "p/+/+/set"));
        assert!(overlap("p/#", "p/+/+/set"));
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(plan(&s(&["p/+/+/set", "p/status", "p/#"])), s(&["p/#"]));
        assert_eq!(
            plan(&s(&["p/+/+/set", "p/status"])),
            s(&["p/+/+/set", "p/status"])
        );
        assert_eq!(plan(&s(&["a/+/c", "a/b/+"])), s(&["#"]));
        assert_eq!(plan(&s(&["a/b", "a/b"])), s(&["a/b"]));
    }

    #[test]
    fn filter_validity() {
        assert!(valid_filter("a/+/#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a/b+"));
        assert!(!valid_filter(""));
    }
}
