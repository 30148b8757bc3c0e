//! The dependency graph of the checks: cycle detection and topological
//! order. Pure functions over names, so they are tested on their own.

use std::collections::{BTreeSet, HashMap, HashSet};

/// A cycle through `start`, if `start`'s dependencies lead back to it:
/// `[start, a, b, start]`. `deps` gives the dependencies of a registered
/// name (`None` for a name not registered, which has none yet).
///
/// The graph without `start` is acyclic (every registration is checked),
/// so a new cycle must pass through `start`: one depth-first search from
/// it finds it. Iterative, so a long chain cannot overflow the stack.
pub(crate) fn cycle_through<'a>(
    start: &'a str,
    deps: impl Fn(&str) -> Option<&'a [String]>,
) -> Option<Vec<String>> {
    let mut visited: HashSet<&str> = HashSet::new();
    // (node, index of the next dependency to follow)
    let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
    while let Some(&mut (node, ref mut next)) = stack.last_mut() {
        let edges = deps(node).unwrap_or(&[]);
        if *next >= edges.len() {
            stack.pop();
            continue;
        }
        let dep = edges[*next].as_str();
        *next += 1;
        if dep == start {
            let mut cycle: Vec<String> = stack.iter().map(|(n, _)| (*n).to_owned()).collect();
            cycle.push(start.to_owned());
            return Some(cycle);
        }
        if visited.insert(dep) {
            stack.push((dep, 0));
        }
    }
    None
}

/// The indices of `names` in dependency order (every check after the ones
/// it depends on), ties broken by registration order. Dependencies on
/// names not registered are left out. The graph must be acyclic.
pub(crate) fn topological(names: &[&str], deps: &[&[String]]) -> Vec<usize> {
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut missing = vec![0usize; names.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    for (i, ds) in deps.iter().enumerate() {
        let mut seen = HashSet::new();
        for d in ds.iter() {
            if let Some(&j) = index.get(d.as_str()) {
                if seen.insert(j) {
                    missing[i] += 1;
                    dependents[j].push(i);
                }
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..names.len()).filter(|&i| missing[i] == 0).collect();
    let mut order = Vec::with_capacity(names.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &k in &dependents[i] {
            missing[k] -= 1;
            if missing[k] == 0 {
                ready.insert(k);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(n, ds)| {
                (
                    (*n).to_owned(),
                    ds.iter().map(|d| (*d).to_owned()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_cycle_through_the_new_node_is_found_and_named_in_order() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &[])]);
        let cycle = cycle_through("a", |n| g.get(n).map(Vec::as_slice)).unwrap();
        assert_eq!(cycle, ["a", "b", "c", "a"]);
    }

    #[test]
    fn a_self_dependency_is_a_cycle() {
        let g = graph(&[("a", &["a"])]);
        assert_eq!(
            cycle_through("a", |n| g.get(n).map(Vec::as_slice)).unwrap(),
            ["a", "a"]
        );
    }

    #[test]
    fn a_diamond_is_not_a_cycle() {
        let g = graph(&[
            ("top", &["l", "r"]),
            ("l", &["base"]),
            ("r", &["base"]),
            ("base", &[]),
        ]);
        assert_eq!(cycle_through("top", |n| g.get(n).map(Vec::as_slice)), None);
    }

    #[test]
    fn a_long_chain_does_not_overflow_the_stack() {
        let n = 100_000;
        let g: HashMap<String, Vec<String>> = (0..n)
            .map(|i| (i.to_string(), vec![((i + 1) % n).to_string()]))
            .collect();
        let cycle = cycle_through("0", |n| g.get(n).map(Vec::as_slice)).unwrap();
        assert_eq!(cycle.len(), n + 1);
    }

    #[test]
    fn topological_order_puts_dependencies_first_and_keeps_registration_order_otherwise() {
        let names = ["app", "db", "cache", "network"];
        let d_app = vec!["db".to_owned(), "cache".to_owned()];
        let d_db = vec!["network".to_owned()];
        let d_cache = vec!["network".to_owned(), "unknown".to_owned()];
        let deps: [&[String]; 4] = [&d_app, &d_db, &d_cache, &[]];
        let order: Vec<&str> = topological(&names, &deps)
            .into_iter()
            .map(|i| names[i])
            .collect();
        assert_eq!(order, ["network", "db", "cache", "app"]);
    }
}
