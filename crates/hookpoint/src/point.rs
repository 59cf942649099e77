//! A hook point: a named place in a forward pass where hooks read or replace the activation,
//! and (natively, through libtorch) read or replace its gradient.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tch::Tensor;

use crate::error::{Direction, HookError, Result};
use crate::handle::HookHandle;
use crate::native;

/// The signature every hook has: it receives the activation (forward) or the gradient at the
/// hook point (backward) and returns `None` to leave it, or `Some(t)` to replace it for
/// everything downstream, later hooks on the same point included. Replacements must keep the
/// shape.
pub type HookFn = dyn Fn(&Tensor, &HookContext) -> Option<Tensor> + Send + Sync;

/// A hook function, cheap to clone so that one function can be attached to many hook points.
///
/// Hooks must be `Send + Sync`: libtorch runs backward hooks of CUDA tensors on its own device
/// threads.
#[derive(Clone)]
pub struct Hook(Arc<HookFn>);

impl Hook {
    /// Wraps a closure as a hook.
    pub fn new(
        f: impl Fn(&Tensor, &HookContext) -> Option<Tensor> + Send + Sync + 'static,
    ) -> Self {
        Hook(Arc::new(f))
    }

    pub(crate) fn call(&self, tensor: &Tensor, ctx: &HookContext) -> Option<Tensor> {
        (self.0)(tensor, ctx)
    }
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook(..)")
    }
}

/// What a hook is told about the call it is in.
#[derive(Clone, Debug)]
pub struct HookContext {
    name: Arc<str>,
    direction: Direction,
}

impl HookContext {
    /// The name the hook was registered under (an alias when it was added through one).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forward or backward.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The layer index in a `blocks.{i}.` name, if there is one.
    pub fn layer(&self) -> Option<usize> {
        layer_of(&self.name)
    }
}

/// Parses the integer after `blocks.` in a hook name.
pub fn layer_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blocks.")?;
    rest.split('.').next()?.parse().ok()
}

/// Where a new hook goes and who owns it.
#[derive(Clone, Copy, Debug, Default)]
pub struct AddOptions {
    /// Insert before the hooks already there instead of after them.
    pub prepend: bool,
    /// The scope that owns the hook (see [`crate::HookScope`]); `None` for hooks owned by a handle.
    pub scope: Option<u64>,
}

static NEXT_HOOK_ID: AtomicU64 = AtomicU64::new(1);

/// One registered hook.
pub(crate) struct HookEntry {
    pub(crate) id: u64,
    pub(crate) hook: Hook,
    pub(crate) context: HookContext,
    pub(crate) scope: Option<u64>,
    pub(crate) permanent: AtomicBool,
    /// Cleared on removal, so gradients still flowing through graphs built earlier pass through
    /// a removed backward hook untouched.
    pub(crate) active: AtomicBool,
}

#[derive(Default)]
struct HookLists {
    forward: Vec<Arc<HookEntry>>,
    backward: Vec<Arc<HookEntry>>,
}

impl HookLists {
    fn list_mut(&mut self, direction: Direction) -> &mut Vec<Arc<HookEntry>> {
        match direction {
            Direction::Forward => &mut self.forward,
            Direction::Backward => &mut self.backward,
        }
    }
}

/// A named point in a forward pass. Models create one per activation they expose and call
/// [`HookPoint::run`] on the activation.
pub struct HookPoint {
    name: Arc<str>,
    lists: Mutex<HookLists>,
    /// Number of hooks attached in either direction: the whole cost of an unhooked point is one
    /// load and one branch on this counter.
    attached: AtomicUsize,
}

impl std::fmt::Debug for HookPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookPoint")
            .field("name", &self.name)
            .field("forward_hooks", &self.hook_count(Direction::Forward))
            .field("backward_hooks", &self.hook_count(Direction::Backward))
            .finish()
    }
}

impl HookPoint {
    /// A hook point with no hooks.
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        Arc::new(HookPoint {
            name: Arc::from(name.into()),
            lists: Mutex::new(HookLists::default()),
            attached: AtomicUsize::new(0),
        })
    }

    /// The hook point's name, e.g. `blocks.0.hook_resid_pre`.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lists(&self) -> MutexGuard<'_, HookLists> {
        // A panic while the lock is held cannot leave the lists half-edited (every edit is a
        // single Vec operation), so a poisoned lock is still safe to use.
        self.lists
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Attaches `hook`; the returned handle removes it when dropped (see [`HookHandle`]).
    pub fn add_hook(
        self: &Arc<Self>,
        direction: Direction,
        hook: Hook,
        options: AddOptions,
    ) -> HookHandle {
        self.add_hook_named(direction, hook, options, self.name.clone())
    }

    /// Like [`HookPoint::add_hook`], but the hook is told `context_name` (an alias) as its name.
    pub(crate) fn add_hook_named(
        self: &Arc<Self>,
        direction: Direction,
        hook: Hook,
        options: AddOptions,
        context_name: Arc<str>,
    ) -> HookHandle {
        let entry = Arc::new(HookEntry {
            id: NEXT_HOOK_ID.fetch_add(1, Ordering::Relaxed),
            hook,
            context: HookContext {
                name: context_name,
                direction,
            },
            scope: options.scope,
            permanent: AtomicBool::new(false),
            active: AtomicBool::new(true),
        });
        let id = entry.id;
        {
            let mut lists = self.lists();
            let list = lists.list_mut(direction);
            if options.prepend {
                list.insert(0, entry);
            } else {
                list.push(entry);
            }
        }
        self.attached.fetch_add(1, Ordering::AcqRel);
        HookHandle::new(Arc::downgrade(self), direction, id, options.scope.is_none())
    }

    /// Number of hooks attached in `direction`.
    pub fn hook_count(&self, direction: Direction) -> usize {
        let mut lists = self.lists();
        lists.list_mut(direction).len()
    }

    /// Whether any hook is attached, in either direction.
    pub fn has_hooks(&self) -> bool {
        self.attached.load(Ordering::Acquire) > 0
    }

    /// Removes the hooks that match: `direction` (both when `None`), owned by `scope` (any when
    /// `None`), and permanent ones only if `including_permanent`. Returns how many were removed.
    pub fn remove_hooks(
        &self,
        direction: Option<Direction>,
        including_permanent: bool,
        scope: Option<u64>,
    ) -> usize {
        let matches = |entry: &HookEntry| {
            (including_permanent || !entry.permanent.load(Ordering::Acquire))
                && (scope.is_none() || entry.scope == scope)
        };
        let directions: &[Direction] = match direction {
            Some(Direction::Forward) => &[Direction::Forward],
            Some(Direction::Backward) => &[Direction::Backward],
            None => &[Direction::Forward, Direction::Backward],
        };
        let mut removed = 0;
        let mut lists = self.lists();
        for &dir in directions {
            lists.list_mut(dir).retain(|entry| {
                let remove = matches(entry);
                if remove {
                    entry.active.store(false, Ordering::Release);
                    removed += 1;
                }
                !remove
            });
        }
        drop(lists);
        self.attached.fetch_sub(removed, Ordering::AcqRel);
        removed
    }

    /// Removes one hook by id; used by handles.
    pub(crate) fn remove_by_id(&self, direction: Direction, id: u64) -> bool {
        let mut lists = self.lists();
        let list = lists.list_mut(direction);
        let Some(position) = list.iter().position(|entry| entry.id == id) else {
            return false;
        };
        let entry = list.remove(position);
        drop(lists);
        entry.active.store(false, Ordering::Release);
        self.attached.fetch_sub(1, Ordering::AcqRel);
        true
    }

    pub(crate) fn set_permanent(&self, direction: Direction, id: u64) {
        let mut lists = self.lists();
        if let Some(entry) = lists
            .list_mut(direction)
            .iter()
            .find(|entry| entry.id == id)
        {
            entry.permanent.store(true, Ordering::Release);
        }
    }

    fn snapshot(&self, direction: Direction) -> Vec<Arc<HookEntry>> {
        let mut lists = self.lists();
        lists.list_mut(direction).clone()
    }

    /// Passes an activation through the hook point: forward hooks run in order, each seeing the
    /// previous one's replacement; then, if backward hooks are attached and the activation takes
    /// part in autograd, they are registered natively on it.
    ///
    /// With no hook attached this returns `activation` untouched (no copy, no graph node).
    pub fn run(&self, activation: Tensor) -> Result<Tensor> {
        if self.attached.load(Ordering::Acquire) == 0 {
            return Ok(activation);
        }
        // Hooks run on a snapshot, without the lock, so a hook may add or remove hooks.
        let mut current = activation;
        for entry in self.snapshot(Direction::Forward) {
            if let Some(replacement) = call_forward(&entry, &current)? {
                check_shape(&entry.context, &current, &replacement)?;
                current = replacement;
            }
        }
        let backward = self.snapshot(Direction::Backward);
        if backward.is_empty() || !current.requires_grad() {
            return Ok(current);
        }
        // A fresh graph node per hook point, so two points that see the same tensor (say
        // resid_post of one block and resid_pre of the next) hold separate gradient hooks.
        let current = current.f_view_as(&current)?;
        for entry in &backward {
            native::register_backward_hook(&current, Arc::downgrade(entry))?;
        }
        Ok(current)
    }

    /// [`HookPoint::run`], also saying whether the activation came out untouched (see
    /// [`Passed::untouched`]). A replacement counts as an edit unless it is the same view of the
    /// same storage with the same kind; an in-place change is seen through the storage's version
    /// counter.
    pub fn run_noting_edits(&self, activation: Tensor) -> Result<Passed> {
        if self.attached.load(Ordering::Acquire) == 0 {
            return Ok(Passed {
                activation,
                untouched: true,
            });
        }
        let original = activation.shallow_clone();
        let version_before = native::version(&original);
        let activation = self.run(activation)?;
        let untouched = self.hook_count(Direction::Backward) == 0
            && version_before.is_some()
            && native::version(&activation) == version_before
            && activation.kind() == original.kind()
            && activation.is_set_to(&original);
        Ok(Passed {
            activation,
            untouched,
        })
    }
}

/// What [`HookPoint::run_noting_edits`] returns.
#[derive(Debug)]
pub struct Passed {
    /// The activation after the hooks, as [`HookPoint::run`] returns it.
    pub activation: Tensor,
    /// True when the hooks left the activation exactly as it came in: no hook returned a
    /// different tensor, none changed it in place, and no backward hook was registered on it.
    /// The caller may then compute what follows from the input by another route (a fused
    /// kernel) without the hooks being able to tell.
    pub untouched: bool,
}

fn call_forward(entry: &HookEntry, activation: &Tensor) -> Result<Option<Tensor>> {
    catch_unwind(AssertUnwindSafe(|| {
        entry.hook.call(activation, &entry.context)
    }))
    .map_err(|payload| HookError::HookPanicked {
        hook: entry.context.name.to_string(),
        direction: Direction::Forward,
        message: panic_message(payload.as_ref()),
    })
}

pub(crate) fn check_shape(
    context: &HookContext,
    original: &Tensor,
    replacement: &Tensor,
) -> Result<()> {
    let (expected, actual) = (original.size(), replacement.size());
    if expected == actual {
        Ok(())
    } else {
        Err(HookError::ShapeMismatch {
            hook: context.name.to_string(),
            expected,
            actual,
        })
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
