//! The dependency graph of a set of services (`after = [...]`).
//!
//! Owns: start order (topological, deterministic), stop order (its reverse), direct and
//! transitive dependents, and cycle detection that names the cycle. A built graph is always
//! acyclic; building refuses unknown dependencies (unless they are allowed as external, see
//! [`DependencyGraph::with_external`]), self-dependencies and cycles.
//!
//! It does not own what a dependency being up or down means for a service (the
//! [`super::Supervisor`] decides that) nor spec validation beyond the graph ([`super::spec`]).
//!
//! Order: Kahn's algorithm taking, among the services whose dependencies are all placed, the
//! one with the smallest name first. The order therefore depends only on the set of names and
//! edges, never on the order specs were listed or stored in.

use std::collections::{BTreeMap, BTreeSet};

use super::spec::error::SpecError;
use super::spec::service::ServiceSpec;

/// Dependencies among a set of services. Edges point from a service to what it runs after.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DependencyGraph {
    /// Service → its direct dependencies inside the graph.
    dependencies: BTreeMap<String, BTreeSet<String>>,
    /// Service → the services that directly depend on it.
    dependents: BTreeMap<String, BTreeSet<String>>,
    /// Service → its dependencies outside the graph (allowed only by
    /// [`DependencyGraph::with_external`]; e.g. services placed on another node).
    external: BTreeMap<String, BTreeSet<String>>,
    /// Every service, dependencies first.
    start_order: Vec<String>,
}

impl DependencyGraph {
    /// Builds the graph of `(service, dependencies)` pairs. Refuses duplicate services,
    /// self-dependencies, unknown dependencies and cycles.
    pub fn new<N, D>(services: impl IntoIterator<Item = (N, D)>) -> Result<Self, SpecError>
    where
        N: Into<String>,
        D: IntoIterator,
        D::Item: Into<String>,
    {
        Self::build(services, false)
    }

    /// Like [`DependencyGraph::new`], but a dependency that is not in the set is recorded as
    /// external (see [`DependencyGraph::external_dependencies`]) instead of refused.
    pub fn with_external<N, D>(
        services: impl IntoIterator<Item = (N, D)>,
    ) -> Result<Self, SpecError>
    where
        N: Into<String>,
        D: IntoIterator,
        D::Item: Into<String>,
    {
        Self::build(services, true)
    }

    /// The graph of a set of specs (all dependencies must be in the set).
    pub fn from_specs(specs: &[ServiceSpec]) -> Result<Self, SpecError> {
        Self::new(
            specs
                .iter()
                .map(|spec| (spec.name.clone(), spec.after.clone())),
        )
    }

    fn build<N, D>(
        services: impl IntoIterator<Item = (N, D)>,
        allow_external: bool,
    ) -> Result<Self, SpecError>
    where
        N: Into<String>,
        D: IntoIterator,
        D::Item: Into<String>,
    {
        let mut declared: Vec<(String, Vec<String>)> = Vec::new();
        let mut names = BTreeSet::new();
        for (name, dependencies) in services {
            let name = name.into();
            if !names.insert(name.clone()) {
                return Err(SpecError::DuplicateService { name });
            }
            declared.push((name, dependencies.into_iter().map(Into::into).collect()));
        }
        let mut graph = DependencyGraph::default();
        for (name, dependencies) in declared {
            graph.dependents.entry(name.clone()).or_default();
            let mut internal = BTreeSet::new();
            for dependency in dependencies {
                if dependency == name {
                    return Err(SpecError::SelfDependency { service: name });
                }
                if names.contains(&dependency) {
                    graph
                        .dependents
                        .entry(dependency.clone())
                        .or_default()
                        .insert(name.clone());
                    internal.insert(dependency);
                } else if allow_external {
                    graph
                        .external
                        .entry(name.clone())
                        .or_default()
                        .insert(dependency);
                } else {
                    return Err(SpecError::UnknownDependency {
                        service: name,
                        dependency,
                    });
                }
            }
            graph.dependencies.insert(name, internal);
        }
        graph.start_order =
            topological_order(&graph.dependencies, &graph.dependents).map_err(|()| {
                SpecError::DependencyCycle {
                    cycle: find_cycle(&graph.dependencies)
                        .expect("Kahn's algorithm stalls only on a cycle, which DFS then finds"),
                }
            })?;
        Ok(graph)
    }

    /// Every service, each after all its dependencies; ties broken by name.
    pub fn start_order(&self) -> &[String] {
        &self.start_order
    }

    /// Every service, each before all its dependencies: the reverse of the start order.
    pub fn stop_order(&self) -> impl Iterator<Item = &str> {
        self.start_order.iter().rev().map(String::as_str)
    }

    pub fn contains(&self, service: &str) -> bool {
        self.dependencies.contains_key(service)
    }

    pub fn len(&self) -> usize {
        self.start_order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.start_order.is_empty()
    }

    /// Direct dependencies inside the graph, by name.
    pub fn dependencies(&self, service: &str) -> impl Iterator<Item = &str> {
        self.dependencies
            .get(service)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Direct dependencies outside the graph (see [`DependencyGraph::with_external`]).
    pub fn external_dependencies(&self, service: &str) -> impl Iterator<Item = &str> {
        self.external
            .get(service)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Services that directly depend on `service`, by name.
    pub fn dependents(&self, service: &str) -> impl Iterator<Item = &str> {
        self.dependents
            .get(service)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Everything that depends on `service` directly or through others, in start order
    /// (`service` itself excluded).
    pub fn transitive_dependents(&self, service: &str) -> Vec<&str> {
        let mut reached = BTreeSet::new();
        let mut stack: Vec<&str> = self.dependents(service).collect();
        while let Some(next) = stack.pop() {
            if reached.insert(next) {
                stack.extend(self.dependents(next));
            }
        }
        self.start_order
            .iter()
            .map(String::as_str)
            .filter(|name| reached.contains(name))
            .collect()
    }
}

/// Kahn's algorithm with a sorted ready set. `Err(())` if a cycle keeps some services from
/// ever being ready.
fn topological_order(
    dependencies: &BTreeMap<String, BTreeSet<String>>,
    dependents: &BTreeMap<String, BTreeSet<String>>,
) -> Result<Vec<String>, ()> {
    let mut waiting_on: BTreeMap<&str, usize> = dependencies
        .iter()
        .map(|(name, deps)| (name.as_str(), deps.len()))
        .collect();
    let mut ready: BTreeSet<&str> = waiting_on
        .iter()
        .filter(|(_, count)| **count == 0)
        .map(|(name, _)| *name)
        .collect();
    let mut order = Vec::with_capacity(dependencies.len());
    while let Some(next) = ready.pop_first() {
        order.push(next.to_string());
        for dependent in dependents.get(next).into_iter().flatten() {
            let count = waiting_on
                .get_mut(dependent.as_str())
                .expect("every dependent is a service of the graph");
            *count -= 1;
            if *count == 0 {
                ready.insert(dependent);
            }
        }
    }
    if order.len() == dependencies.len() {
        Ok(order)
    } else {
        Err(())
    }
}

/// Finds a dependency cycle, if any: the services around it with the first repeated at the
/// end (`["a", "b", "a"]`: `a` runs after `b`, which runs after `a`). Deterministic: the
/// search starts from the smallest name and follows dependencies in name order. Dependencies
/// that are not keys of the map are ignored.
pub fn find_cycle(dependencies: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for root in dependencies.keys() {
        if marks.contains_key(root.as_str()) {
            continue;
        }
        // Iterative DFS: the path so far, and for each path entry its remaining dependencies.
        let mut path: Vec<&str> = vec![root];
        let mut pending: Vec<Vec<&str>> = vec![next_dependencies(dependencies, root)];
        marks.insert(root, Mark::OnPath);
        while let Some(remaining) = pending.last_mut() {
            match remaining.pop() {
                Some(next) => match marks.get(next) {
                    Some(Mark::OnPath) => {
                        let start = path
                            .iter()
                            .position(|name| *name == next)
                            .expect("a node marked on-path is on the path");
                        let mut cycle: Vec<String> =
                            path[start..].iter().map(|name| name.to_string()).collect();
                        cycle.push(next.to_string());
                        return Some(cycle);
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(next, Mark::OnPath);
                        path.push(next);
                        pending.push(next_dependencies(dependencies, next));
                    }
                },
                None => {
                    pending.pop();
                    if let Some(done) = path.pop() {
                        marks.insert(done, Mark::Done);
                    }
                }
            }
        }
    }
    None
}

/// Dependencies of `name` that are services of the map, reversed so that popping visits
/// them in name order.
fn next_dependencies<'a>(
    dependencies: &'a BTreeMap<String, BTreeSet<String>>,
    name: &str,
) -> Vec<&'a str> {
    dependencies
        .get(name)
        .into_iter()
        .flatten()
        .filter(|dependency| dependencies.contains_key(dependency.as_str()))
        .rev()
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn graph(edges: &[(&str, &[&str])]) -> Result<DependencyGraph, SpecError> {
        DependencyGraph::new(
            edges
                .iter()
                .map(|(name, deps)| (*name, deps.iter().copied())),
        )
    }

    #[test]
    fn chain_starts_dependencies_first_and_stops_in_reverse() {
        let graph = graph(&[("web", &["api"]), ("api", &["db"]), ("db", &[])]).expect("DAG");
        assert_eq!(graph.start_order(), ["db", "api", "web"]);
        assert_eq!(graph.stop_order().collect::<Vec<_>>(), ["web", "api", "db"]);
        assert_eq!(graph.dependencies("web").collect::<Vec<_>>(), ["api"]);
        assert_eq!(graph.dependents("db").collect::<Vec<_>>(), ["api"]);
        assert_eq!(graph.transitive_dependents("db"), ["api", "web"]);
        assert!(graph.transitive_dependents("web").is_empty());
        assert_eq!(graph.len(), 3);
        assert!(graph.contains("api") && !graph.contains("cache"));
    }

    #[test]
    fn order_is_by_name_among_ready_services_whatever_the_input_order() {
        let edges: [(&str, &[&str]); 5] = [
            ("zeta", &[]),
            ("alpha", &["zeta"]),
            ("mid", &[]),
            ("beta", &[]),
            ("omega", &["alpha", "beta"]),
        ];
        let forward = graph(&edges).expect("DAG");
        let mut reversed = edges;
        reversed.reverse();
        let backward = graph(&reversed).expect("DAG");
        assert_eq!(
            forward.start_order(),
            ["beta", "mid", "zeta", "alpha", "omega"]
        );
        assert_eq!(forward.start_order(), backward.start_order());
    }

    #[test]
    fn diamond_dependents_are_transitive_and_unique() {
        let graph = graph(&[
            ("db", &[]),
            ("cache", &["db"]),
            ("api", &["db", "cache"]),
            ("web", &["api"]),
            ("batch", &["cache"]),
        ])
        .expect("DAG");
        assert_eq!(graph.start_order(), ["db", "cache", "api", "batch", "web"]);
        assert_eq!(
            graph.transitive_dependents("db"),
            ["cache", "api", "batch", "web"]
        );
        assert_eq!(
            graph.transitive_dependents("cache"),
            ["api", "batch", "web"]
        );
    }

    #[test]
    fn cycles_are_named() {
        let err = graph(&[("a", &["b"]), ("b", &["a"])]).expect_err("cycle");
        assert_eq!(err.to_string(), "dependency cycle: a -> b -> a");
        let err = graph(&[
            ("web", &["api"]),
            ("api", &["cache"]),
            ("cache", &["web"]),
            ("db", &[]),
        ])
        .expect_err("cycle");
        assert_eq!(
            err.to_string(),
            "dependency cycle: api -> cache -> web -> api"
        );
        // A cycle hanging off an acyclic part is found from wherever the search enters it.
        let err = graph(&[("a", &["x"]), ("x", &["y"]), ("y", &["z"]), ("z", &["x"])])
            .expect_err("cycle");
        assert_eq!(
            err,
            SpecError::DependencyCycle {
                cycle: ["x", "y", "z", "x"].map(String::from).to_vec()
            }
        );
    }

    #[test]
    fn self_unknown_and_duplicate_are_refused() {
        assert_eq!(
            graph(&[("a", &["a"])]).expect_err("self").to_string(),
            "service `a` depends on itself"
        );
        assert_eq!(
            graph(&[("a", &["b"])]).expect_err("unknown").to_string(),
            "service `a`: unknown dependency `b`"
        );
        assert_eq!(
            graph(&[("a", &[]), ("a", &[])])
                .expect_err("duplicate")
                .to_string(),
            "service `a` is defined twice"
        );
    }

    #[test]
    fn external_dependencies_are_kept_apart() {
        let graph =
            DependencyGraph::with_external([("api", vec!["db", "cache"]), ("cache", vec![])])
                .expect("db is external");
        assert_eq!(graph.start_order(), ["cache", "api"]);
        assert_eq!(graph.dependencies("api").collect::<Vec<_>>(), ["cache"]);
        assert_eq!(
            graph.external_dependencies("api").collect::<Vec<_>>(),
            ["db"]
        );
        assert!(!graph.contains("db"));
    }

    #[test]
    fn find_cycle_on_an_acyclic_map_is_none() {
        let map = BTreeMap::from([
            ("a".to_string(), BTreeSet::from(["b".to_string()])),
            ("b".to_string(), BTreeSet::new()),
        ]);
        assert_eq!(find_cycle(&map), None);
    }

    /// A random DAG: service `s{i}` may depend only on services with a smaller index, so the
    /// generated graph is acyclic by construction; names are shuffled through `label` so the
    /// name order says nothing about the topological order.
    fn arb_dag() -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
        (1usize..24).prop_flat_map(|n| {
            let edges = proptest::collection::vec(proptest::collection::vec(any::<bool>(), n), n);
            let labels = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            (edges, labels).prop_map(move |(edges, labels)| {
                let name = |index: usize| format!("svc-{:02}", labels[index]);
                (0..n)
                    .map(|i| {
                        let deps = (0..i).filter(|j| edges[i][*j]).map(name).collect();
                        (name(i), deps)
                    })
                    .collect()
            })
        })
    }

    proptest! {
        #[test]
        fn start_order_respects_every_edge(dag in arb_dag()) {
            let graph = DependencyGraph::new(dag.clone()).expect("acyclic by construction");
            let position: BTreeMap<&str, usize> = graph
                .start_order()
                .iter()
                .enumerate()
                .map(|(index, name)| (name.as_str(), index))
                .collect();
            prop_assert_eq!(position.len(), dag.len());
            for (service, deps) in &dag {
                for dep in deps {
                    prop_assert!(position[dep.as_str()] < position[service.as_str()],
                        "{} must start after {}", service, dep);
                }
            }
            let stop: Vec<&str> = graph.stop_order().collect();
            for (service, deps) in &dag {
                let at = |name: &str| stop.iter().position(|s| *s == name).expect("listed");
                for dep in deps {
                    prop_assert!(at(service) < at(dep), "{} must stop before {}", service, dep);
                }
                for dependent in graph.transitive_dependents(service) {
                    prop_assert!(position[dependent] > position[service.as_str()]);
                }
            }
        }

        #[test]
        fn adding_a_back_edge_is_always_a_named_cycle(dag in arb_dag()) {
            // Close a cycle along the first edge chain we find: dep -> ... -> service -> dep.
            if let Some((service, deps)) = dag.iter().find(|(_, deps)| !deps.is_empty()) {
                let dep = deps[0].clone();
                let mut with_cycle = dag.clone();
                for (name, deps) in with_cycle.iter_mut() {
                    if *name == dep {
                        deps.push(service.clone());
                    }
                }
                let err = DependencyGraph::new(with_cycle).expect_err("cycle");
                match err {
                    SpecError::DependencyCycle { cycle } => {
                        prop_assert!(cycle.len() >= 3);
                        prop_assert_eq!(cycle.first(), cycle.last());
                    }
                    other => prop_assert!(false, "expected a cycle, got {}", other),
                }
            }
        }
    }
}
