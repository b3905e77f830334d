//! Which of the services placed on this node it agrees to run: a pure function of the
//! placed specs, who added each, this node's `--accept-services` policy, its profile's
//! `max_services`, and whether each spec's account exists here.
//!
//! A refused service is not started and not silently skipped: the caller publishes it with
//! the state `refused` and the reason, and records an audit event. Owns the rules and their
//! wording; does not own reading the document or the user database (the actor passes what it
//! read), nor publishing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use super::spec::ServiceSpec;

/// `mesh agent --accept-services`: whose services this node runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AcceptServices {
    /// Every service placed on it, from any node of the mesh (the default).
    #[default]
    All,
    /// Only services added (or last updated) through this node's own API.
    Own,
    /// None: the node runs no services.
    None,
}

impl fmt::Display for AcceptServices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::All => "all",
            Self::Own => "own",
            Self::None => "none",
        })
    }
}

impl FromStr for AcceptServices {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "all" => Ok(Self::All),
            "own" => Ok(Self::Own),
            "none" => Ok(Self::None),
            other => Err(format!("`{other}`: expected all, own or none")),
        }
    }
}

/// A service placed on this node, as the document has it.
#[derive(Clone, Debug, PartialEq)]
pub struct Placed {
    pub spec: ServiceSpec,
    /// Node id whose API wrote the current spec (`None`: unknown, an older document).
    pub added_by: Option<String>,
    /// Name of that node, for messages.
    pub added_by_name: String,
}

/// What this node runs, and what it refuses with the reason.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Screened {
    pub accepted: Vec<ServiceSpec>,
    pub refused: BTreeMap<String, String>,
}

/// The policy's verdict on one service added by `added_by`: `Some(reason)` to refuse.
pub fn policy_refusal(
    policy: AcceptServices,
    added_by: Option<&str>,
    added_by_name: &str,
    local_id: &str,
) -> Option<String> {
    match policy {
        AcceptServices::All => None,
        AcceptServices::None => {
            Some("this node runs no services (--accept-services none)".to_string())
        }
        AcceptServices::Own if added_by == Some(local_id) => None,
        AcceptServices::Own => Some(format!(
            "added through {}'s API; this node runs only services added through its own \
             (--accept-services own)",
            added_by.map_or("an unknown node", |_| added_by_name)
        )),
    }
}

/// Screens the services placed here. Order of the rules: the policy, then the account
/// (`account_error` says why a spec's user or group cannot be used here), then
/// `max_services`: services this node already runs (`running`) keep their places, the others
/// are taken in name order until the limit.
pub fn screen(
    placed: Vec<Placed>,
    policy: AcceptServices,
    local_id: &str,
    max_services: usize,
    running: &BTreeSet<String>,
    account_error: impl Fn(&ServiceSpec) -> Option<String>,
) -> Screened {
    let mut screened = Screened::default();
    let mut candidates = Vec::new();
    for item in placed {
        let refusal = policy_refusal(
            policy,
            item.added_by.as_deref(),
            &item.added_by_name,
            local_id,
        )
        .or_else(|| account_error(&item.spec));
        match refusal {
            Some(reason) => {
                screened.refused.insert(item.spec.name, reason);
            }
            None => candidates.push(item.spec),
        }
    }
    // Running ones first (stable: name order within each part).
    candidates.sort_by_key(|spec| (!running.contains(&spec.name), spec.name.clone()));
    for spec in candidates {
        if screened.accepted.len() < max_services {
            screened.accepted.push(spec);
        } else {
            screened.refused.insert(
                spec.name,
                format!(
                    "this node runs at most {max_services} services (its profile's max_services)"
                ),
            );
        }
    }
    screened
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(name: &str, by: Option<&str>) -> Placed {
        Placed {
            spec: ServiceSpec::new(name, "true"),
            added_by: by.map(String::from),
            added_by_name: by.map_or("?".to_string(), |id| format!("name-of-{id}")),
        }
    }

    fn names(specs: &[ServiceSpec]) -> Vec<&str> {
        specs.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn all_accepts_every_service_from_any_node() {
        let out = screen(
            vec![
                placed("a", Some("me")),
                placed("b", Some("other")),
                placed("c", None),
            ],
            AcceptServices::All,
            "me",
            16,
            &BTreeSet::new(),
            |_| None,
        );
        assert_eq!(names(&out.accepted), ["a", "b", "c"]);
        assert!(out.refused.is_empty());
    }

    #[test]
    fn own_refuses_services_added_elsewhere_or_by_an_unknown_node_and_says_who() {
        let out = screen(
            vec![
                placed("a", Some("me")),
                placed("b", Some("other")),
                placed("c", None),
            ],
            AcceptServices::Own,
            "me",
            16,
            &BTreeSet::new(),
            |_| None,
        );
        assert_eq!(names(&out.accepted), ["a"]);
        assert_eq!(
            out.refused["b"],
            "added through name-of-other's API; this node runs only services added through \
             its own (--accept-services own)"
        );
        assert!(out.refused["c"].starts_with("added through an unknown node's API"));
    }

    #[test]
    fn none_refuses_even_its_own() {
        let out = screen(
            vec![placed("a", Some("me"))],
            AcceptServices::None,
            "me",
            16,
            &BTreeSet::new(),
            |_| None,
        );
        assert!(out.accepted.is_empty());
        assert_eq!(
            out.refused["a"],
            "this node runs no services (--accept-services none)"
        );
    }

    #[test]
    fn an_unknown_account_is_refused_with_the_lookup_reason() {
        let out = screen(
            vec![placed("a", Some("me")), placed("b", Some("me"))],
            AcceptServices::All,
            "me",
            16,
            &BTreeSet::new(),
            |spec| (spec.name == "b").then(|| "user `ghost` does not exist on this node".into()),
        );
        assert_eq!(names(&out.accepted), ["a"]);
        assert_eq!(out.refused["b"], "user `ghost` does not exist on this node");
    }

    #[test]
    fn max_services_keeps_running_ones_and_refuses_the_rest_by_name() {
        let running = BTreeSet::from(["z".to_string()]);
        let out = screen(
            vec![
                placed("a", Some("me")),
                placed("b", Some("me")),
                placed("z", Some("me")),
            ],
            AcceptServices::All,
            "me",
            2,
            &running,
            |_| None,
        );
        assert_eq!(names(&out.accepted), ["z", "a"]);
        assert_eq!(
            out.refused["b"],
            "this node runs at most 2 services (its profile's max_services)"
        );
    }

    #[test]
    fn the_policy_parses_and_prints() {
        for text in ["all", "own", "none"] {
            assert_eq!(text.parse::<AcceptServices>().unwrap().to_string(), text);
        }
        assert!("some".parse::<AcceptServices>().is_err());
    }
}
