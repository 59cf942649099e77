//! Handles: the owner of a hook added outside a scope.

use std::sync::Weak;

use crate::error::Direction;
use crate::point::HookPoint;

/// Owns one hook. Dropping the handle removes the hook, unless it was made permanent
/// ([`HookHandle::make_permanent`]) or released to the model ([`HookHandle::keep`]).
#[must_use = "dropping a HookHandle removes its hook at once; call .keep() to leave it attached"]
pub struct HookHandle {
    point: Weak<HookPoint>,
    direction: Direction,
    id: u64,
    /// Whether dropping the handle removes the hook. Hooks owned by a scope have unarmed handles:
    /// the scope removes them.
    armed: bool,
}

impl std::fmt::Debug for HookHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.point.upgrade().map(|p| p.name().to_owned());
        f.debug_struct("HookHandle")
            .field("hook_point", &name)
            .field("direction", &self.direction)
            .field("armed", &self.armed)
            .finish()
    }
}

impl HookHandle {
    pub(crate) fn new(point: Weak<HookPoint>, direction: Direction, id: u64, armed: bool) -> Self {
        HookHandle {
            point,
            direction,
            id,
            armed,
        }
    }

    /// Removes the hook now. Returns false if it was already gone (e.g. removed by `reset_hooks`).
    pub fn remove(mut self) -> bool {
        self.armed = false;
        self.point
            .upgrade()
            .is_some_and(|point| point.remove_by_id(self.direction, self.id))
    }

    /// Leaves the hook attached after the handle is gone; `reset_hooks` still removes it.
    pub fn keep(mut self) {
        self.armed = false;
    }

    /// Makes the hook permanent: only `reset_hooks` with `including_permanent` removes it.
    pub fn make_permanent(mut self) {
        self.armed = false;
        if let Some(point) = self.point.upgrade() {
            point.set_permanent(self.direction, self.id);
        }
    }

    /// The direction of the hook.
    pub fn direction(&self) -> Direction {
        self.direction
    }
}

impl Drop for HookHandle {
    fn drop(&mut self) {
        if self.armed {
            if let Some(point) = self.point.upgrade() {
                point.remove_by_id(self.direction, self.id);
            }
        }
    }
}
