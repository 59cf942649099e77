//! The registry of a model's hook points (`hook_dict`), name filters, and hook scopes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Direction, HookError, Result};
use crate::handle::HookHandle;
use crate::point::{AddOptions, Hook, HookPoint};

/// Selects hook points by name, as TransformerLens's `names_filter` does.
#[derive(Clone, Default)]
pub enum NamesFilter {
    /// Every hook point.
    #[default]
    All,
    /// One name (an alias is accepted). Unknown names are an error.
    Name(String),
    /// Several names; unknown names are an error.
    Names(Vec<String>),
    /// Every hook point for which the predicate holds on its name or on one of its aliases.
    Predicate(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl NamesFilter {
    /// A predicate filter.
    pub fn predicate(f: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        NamesFilter::Predicate(Arc::new(f))
    }
}

impl std::fmt::Debug for NamesFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamesFilter::All => f.write_str("All"),
            NamesFilter::Name(name) => write!(f, "Name({name:?})"),
            NamesFilter::Names(names) => write!(f, "Names({names:?})"),
            NamesFilter::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

impl From<&str> for NamesFilter {
    fn from(name: &str) -> Self {
        NamesFilter::Name(name.to_owned())
    }
}

impl From<String> for NamesFilter {
    fn from(name: String) -> Self {
        NamesFilter::Name(name)
    }
}

impl From<&[&str]> for NamesFilter {
    fn from(names: &[&str]) -> Self {
        NamesFilter::Names(names.iter().map(|n| (*n).to_owned()).collect())
    }
}

impl<const N: usize> From<[&str; N]> for NamesFilter {
    fn from(names: [&str; N]) -> Self {
        NamesFilter::Names(names.iter().map(|n| (*n).to_owned()).collect())
    }
}

impl From<Vec<String>> for NamesFilter {
    fn from(names: Vec<String>) -> Self {
        NamesFilter::Names(names)
    }
}

/// One hook to add: which points, which direction, which function.
#[derive(Clone, Debug)]
pub struct HookSpec {
    /// The hook points.
    pub filter: NamesFilter,
    /// Forward or backward.
    pub direction: Direction,
    /// The function.
    pub hook: Hook,
}

impl HookSpec {
    /// A forward hook on the points `filter` selects.
    pub fn forward(filter: impl Into<NamesFilter>, hook: Hook) -> Self {
        HookSpec {
            filter: filter.into(),
            direction: Direction::Forward,
            hook,
        }
    }

    /// A backward hook on the points `filter` selects.
    pub fn backward(filter: impl Into<NamesFilter>, hook: Hook) -> Self {
        HookSpec {
            filter: filter.into(),
            direction: Direction::Backward,
            hook,
        }
    }
}

/// A hook point selected by a filter, with the name it was selected under.
#[derive(Clone, Debug)]
pub struct Selected {
    /// The name that matched (an alias when the filter named one).
    pub name: Arc<str>,
    /// The hook point.
    pub point: Arc<HookPoint>,
}

/// Scope ids are unique process-wide, so scopes opened through two registries that share hook
/// points (a registry and its clone) never remove each other's hooks.
static NEXT_SCOPE: AtomicU64 = AtomicU64::new(1);

/// The hook points of a model in firing order, their aliases, and the options that gate some
/// of them (TransformerLens's `use_attn_result` and friends).
///
/// Cloning gives a registry over the same hook points (hooks added through either reach the
/// model), whose own list can then grow, e.g. to wrap a model with extra points.
#[derive(Clone, Default)]
pub struct HookRegistry {
    points: Vec<Arc<HookPoint>>,
    index: HashMap<String, usize>,
    /// Alias -> index of the hook point it names.
    aliases: HashMap<String, usize>,
    /// Aliases of each point, in the order they were added.
    aliases_of: HashMap<usize, Vec<Arc<str>>>,
    /// Hook point -> the model option it needs, for points whose option is off.
    disabled: HashMap<usize, String>,
}

impl std::fmt::Debug for HookRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookRegistry")
            .field("hook_points", &self.points.len())
            .field("aliases", &self.aliases.len())
            .finish()
    }
}

impl HookRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates and registers a hook point. Registering a name twice is a programming error in
    /// the model and panics.
    pub fn register(&mut self, name: impl Into<String>) -> Arc<HookPoint> {
        let name = name.into();
        assert!(
            !self.index.contains_key(&name) && !self.aliases.contains_key(&name),
            "hook point '{name}' registered twice"
        );
        let point = HookPoint::new(name.clone());
        self.index.insert(name, self.points.len());
        self.points.push(point.clone());
        point
    }

    /// Makes `alias` another name for the hook point `target`.
    pub fn add_alias(&mut self, alias: impl Into<String>, target: &str) -> Result<()> {
        let alias = alias.into();
        let position = self.position(target)?;
        assert!(
            !self.index.contains_key(&alias) && !self.aliases.contains_key(&alias),
            "alias '{alias}' clashes with an existing name"
        );
        self.aliases_of
            .entry(position)
            .or_default()
            .push(Arc::from(alias.as_str()));
        self.aliases.insert(alias, position);
        Ok(())
    }

    /// Marks a hook point as firing only when model option `flag` is on. Adding a hook to it
    /// is then an error naming the option. `enabled = true` lifts the mark.
    pub fn set_gate(&mut self, name: &str, flag: &str, enabled: bool) -> Result<()> {
        let position = self.position(name)?;
        if enabled {
            self.disabled.remove(&position);
        } else {
            self.disabled.insert(position, flag.to_owned());
        }
        Ok(())
    }

    fn position(&self, name: &str) -> Result<usize> {
        self.index
            .get(name)
            .or_else(|| self.aliases.get(name))
            .copied()
            .ok_or_else(|| HookError::UnknownHook {
                name: name.to_owned(),
                suggestions: self.suggestions(name),
            })
    }

    /// The hook point called `name` (or aliased so).
    pub fn get(&self, name: &str) -> Result<&Arc<HookPoint>> {
        Ok(&self.points[self.position(name)?])
    }

    /// The canonical name a name or alias resolves to.
    pub fn canonical_name(&self, name: &str) -> Result<&str> {
        Ok(self.points[self.position(name)?].name())
    }

    /// Hook points in registration (firing) order.
    pub fn points(&self) -> impl Iterator<Item = &Arc<HookPoint>> {
        self.points.iter()
    }

    /// Names of all hook points, in registration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.points.iter().map(|p| p.name())
    }

    /// Every alias with the hook point name it stands for.
    pub fn aliases(&self) -> impl Iterator<Item = (&str, &str)> {
        self.aliases
            .iter()
            .map(|(alias, &position)| (alias.as_str(), self.points[position].name()))
    }

    /// Number of hook points (aliases not counted).
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the registry has no hook points.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The option a gated hook point needs, if it is currently off.
    pub fn disabled_by(&self, name: &str) -> Option<&str> {
        self.position(name)
            .ok()
            .and_then(|p| self.disabled.get(&p))
            .map(String::as_str)
    }

    /// The hook points `filter` selects, each once, in registration order. Unknown names in
    /// `Name`/`Names` are an error with suggestions.
    pub fn select(&self, filter: &NamesFilter) -> Result<Vec<Selected>> {
        let named = |name: &str| -> Result<Selected> {
            let position = self.position(name)?;
            Ok(Selected {
                name: Arc::from(name),
                point: self.points[position].clone(),
            })
        };
        match filter {
            NamesFilter::All => Ok(self
                .points
                .iter()
                .map(|p| Selected {
                    name: Arc::from(p.name()),
                    point: p.clone(),
                })
                .collect()),
            NamesFilter::Name(name) => Ok(vec![named(name)?]),
            NamesFilter::Names(names) => {
                let mut seen = std::collections::HashSet::new();
                let mut selected = Vec::with_capacity(names.len());
                for name in names {
                    let item = named(name)?;
                    if seen.insert(Arc::as_ptr(&item.point)) {
                        selected.push(item);
                    }
                }
                Ok(selected)
            }
            NamesFilter::Predicate(predicate) => Ok(self
                .points
                .iter()
                .enumerate()
                .filter_map(|(position, point)| {
                    let aliases = self
                        .aliases_of
                        .get(&position)
                        .map(Vec::as_slice)
                        .unwrap_or(&[]);
                    let canonical = Arc::from(point.name());
                    std::iter::once(&canonical)
                        .chain(aliases.iter())
                        .find(|name| predicate(name))
                        .map(|name| Selected {
                            name: name.clone(),
                            point: point.clone(),
                        })
                })
                .collect()),
        }
    }

    fn check_enabled(&self, selected: &Selected) -> Result<()> {
        match self.disabled_by(selected.point.name()) {
            Some(flag) => Err(HookError::FlagNotEnabled {
                hook: selected.name.to_string(),
                flag: flag.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Adds `spec`'s hook to every point it selects; each returned handle removes its hook on drop.
    /// Nothing is added when a name given explicitly is unknown or gated off; broad filters
    /// (`All`, `Predicate`) skip gated-off points.
    pub fn add_hook(&self, spec: &HookSpec) -> Result<Vec<HookHandle>> {
        self.add_with(spec, AddOptions::default())
    }

    /// Like [`HookRegistry::add_hook`] with explicit options.
    pub fn add_with(&self, spec: &HookSpec, options: AddOptions) -> Result<Vec<HookHandle>> {
        let mut selected = self.select(&spec.filter)?;
        match spec.filter {
            // A point named explicitly must be usable...
            NamesFilter::Name(_) | NamesFilter::Names(_) => {
                for item in &selected {
                    self.check_enabled(item)?;
                }
            }
            // ...while a broad filter simply skips points whose option is off (they never fire).
            NamesFilter::All | NamesFilter::Predicate(_) => {
                selected.retain(|item| self.disabled_by(item.point.name()).is_none())
            }
        }
        Ok(selected
            .into_iter()
            .map(|item| {
                item.point
                    .add_hook_named(spec.direction, spec.hook.clone(), options, item.name)
            })
            .collect())
    }

    /// Opens a scope: hooks added through it are removed when it is dropped (also during a panic),
    /// without touching hooks of other scopes, so nested scopes unwind independently.
    pub fn scope(&self) -> HookScope<'_> {
        HookScope {
            registry: self,
            id: NEXT_SCOPE.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Runs `body` with `hooks` attached and removes them afterwards, whether `body` returns,
    /// errors or panics (TransformerLens's `hooks()` context and `run_with_hooks`).
    pub fn with_hooks<R>(&self, hooks: &[HookSpec], body: impl FnOnce() -> R) -> Result<R> {
        let scope = self.scope();
        for spec in hooks {
            scope.add(spec)?;
        }
        Ok(body())
    }

    /// Removes hooks from every point: all non-permanent ones, and permanent ones too when
    /// `including_permanent`. Returns how many were removed.
    pub fn reset_hooks(&self, including_permanent: bool) -> usize {
        self.points
            .iter()
            .map(|p| p.remove_hooks(None, including_permanent, None))
            .sum()
    }

    /// Total number of hooks attached, both directions.
    pub fn hook_count(&self) -> usize {
        self.points
            .iter()
            .map(|p| p.hook_count(Direction::Forward) + p.hook_count(Direction::Backward))
            .sum()
    }

    /// Up to three valid names closest to `name` (edit distance), for error messages.
    pub fn suggestions(&self, name: &str) -> Vec<String> {
        let mut scored: Vec<(usize, &str)> = self
            .index
            .keys()
            .chain(self.aliases.keys())
            .map(|candidate| (edit_distance(name, candidate), candidate.as_str()))
            .collect();
        scored.sort();
        let limit = (name.len() / 2).max(3);
        scored
            .into_iter()
            .filter(|(d, _)| *d <= limit)
            .take(3)
            .map(|(_, n)| n.to_owned())
            .collect()
    }
}

/// Hooks added through a scope live until the scope is dropped.
pub struct HookScope<'r> {
    registry: &'r HookRegistry,
    id: u64,
}

impl HookScope<'_> {
    /// Adds a hook owned by this scope. Nothing is added when a selected name is unknown or
    /// gated off.
    pub fn add(&self, spec: &HookSpec) -> Result<()> {
        self.add_with(spec, false)
    }

    /// Adds a hook owned by this scope, before the hooks already on each point.
    pub fn prepend(&self, spec: &HookSpec) -> Result<()> {
        self.add_with(spec, true)
    }

    fn add_with(&self, spec: &HookSpec, prepend: bool) -> Result<()> {
        // Handles of scope-owned hooks are unarmed: dropping them leaves the hook to the scope.
        let handles = self.registry.add_with(
            spec,
            AddOptions {
                prepend,
                scope: Some(self.id),
            },
        )?;
        drop(handles);
        Ok(())
    }

    /// The registry this scope belongs to.
    pub fn registry(&self) -> &HookRegistry {
        self.registry
    }
}

impl Drop for HookScope<'_> {
    fn drop(&mut self) {
        for point in &self.registry.points {
            point.remove_hooks(None, false, Some(self.id));
        }
    }
}

/// Levenshtein distance over bytes (hook names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::edit_distance;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("hook_q", "hook_k"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("resid_pre", "resid_pre"), 0);
    }
}
