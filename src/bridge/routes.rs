//! Routes, exactly like a mosquitto bridge `topic` line:
//! `topic <filter> <out|in|both> <qos> <local_prefix> <remote_prefix>`.
//!
//! Out: a local topic `local_prefix + T`, with `T` matching `filter`, goes upstream as
//! `remote_prefix + T`. In: a remote topic `remote_prefix + T` comes down as
//! `local_prefix + T`. The first route that matches wins.

use crate::config::{Direction, Route};
use crate::topic;

#[derive(Debug, Clone)]
pub struct Routes {
    routes: Vec<Route>,
}

fn outward(r: &Route) -> bool {
    matches!(r.direction, Direction::Out | Direction::Both)
}

fn inward(r: &Route) -> bool {
    matches!(r.direction, Direction::In | Direction::Both)
}

/// `prefix + T` with `T` matching `filter`: returns `T`.
fn strip<'t>(prefix: &str, filter: &str, t: &'t str) -> Option<&'t str> {
    let rest = t.strip_prefix(prefix)?;
    topic::matches(filter, rest).then_some(rest)
}

impl Routes {
    pub fn new(routes: Vec<Route>) -> Routes {
        Routes { routes }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The remote topic and QoS of a local topic bound upstream, if a route sends it.
    pub fn outbound(&self, local: &str) -> Option<(String, u8)> {
        self.routes.iter().filter(|r| outward(r)).find_map(|r| {
            strip(&r.local_prefix, &r.filter, local)
                .map(|t| (format!("{}{t}", r.remote_prefix), r.qos))
        })
    }

    /// The local topic of a remote topic coming down, if a route brings it.
    pub fn inbound(&self, remote: &str) -> Option<String> {
        self.routes.iter().filter(|r| inward(r)).find_map(|r| {
            strip(&r.remote_prefix, &r.filter, remote).map(|t| format!("{}{t}", r.local_prefix))
        })
    }

    /// Local filters to subscribe to, for messages other local clients publish.
    pub fn local_filters(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .routes
            .iter()
            .filter(|r| outward(r))
            .map(|r| format!("{}{}", r.local_prefix, r.filter))
            .collect();
        v.dedup();
        v
    }

    /// Remote filters to subscribe to upstream, with their QoS.
    pub fn remote_filters(&self) -> Vec<(String, u8)> {
        let mut v: Vec<(String, u8)> = self
            .routes
            .iter()
            .filter(|r| inward(r))
            .map(|r| (format!("{}{}", r.remote_prefix, r.filter), r.qos))
            .collect();
        v.dedup();
        v
    }

    /// Where the gateway's `<prefix>/status` goes upstream: through the first out route
    /// that matches it, else unchanged.
    pub fn status_topic(&self, local_status: &str) -> String {
        self.outbound(local_status)
            .map(|(t, _)| t)
            .unwrap_or_else(|| local_status.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(filter: &str, dir: Direction, qos: u8, lp: &str, rp: &str) -> Route {
        Route {
            filter: filter.into(),
            direction: dir,
            qos,
            local_prefix: lp.into(),
            remote_prefix: rp.into(),
        }
    }

    #[test]
    fn like_mosquitto_topic_lines() {
        let r = Routes::new(vec![
            route("sensorgate/#", Direction::Out, 1, "", "sites/lr/"),
            route("cmd/#", Direction::In, 1, "sensorgate/", "sites/lr/"),
            route("x/+", Direction::Both, 0, "loc/", "rem/"),
        ]);
        assert_eq!(
            r.outbound("sensorgate/boiler/temp"),
            Some(("sites/lr/sensorgate/boiler/temp".into(), 1))
        );
        assert_eq!(r.outbound("other/topic"), None);
        assert_eq!(r.outbound("loc/x/1"), Some(("rem/x/1".into(), 0)));
        assert_eq!(
            r.inbound("sites/lr/cmd/boiler"),
            Some("sensorgate/cmd/boiler".into())
        );
        assert_eq!(
            r.inbound("sites/lr/sensorgate/boiler/temp"),
            None,
            "out only"
        );
        assert_eq!(r.inbound("rem/x/2"), Some("loc/x/2".into()));
        assert_eq!(r.local_filters(), ["sensorgate/#", "loc/x/+"]);
        assert_eq!(
            r.remote_filters(),
            [
                ("sites/lr/cmd/#".to_string(), 1),
                ("rem/x/+".to_string(), 0)
            ]
        );
        assert_eq!(
            r.status_topic("sensorgate/status"),
            "sites/lr/sensorgate/status"
        );
        assert_eq!(Routes::new(vec![]).status_topic("p/status"), "p/status");
    }
}
