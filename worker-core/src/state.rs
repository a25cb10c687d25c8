//! Application state: the dependencies a handler needs (an HTTP client, a payment gateway
//! client, settings), given to the worker once and handed to handlers as [`State<T>`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A handler parameter that receives a clone of the application state of type `T`, as axum's
/// `State` does.
///
/// Give the value once, to the worker's builder (`.state(value)`, one value per type); a handler
/// takes it as a parameter, by pattern or by name:
///
/// ```
/// use worker_core::{handler, HandlerError, State};
///
/// #[derive(Clone)]
/// struct Gateway { base_url: String }
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { amount: i64 }
///
/// #[handler(event = "OrderPlaced")]
/// async fn charge(event: OrderPlaced, State(gateway): State<Gateway>) -> Result<(), HandlerError> {
///     let _ = (&gateway.base_url, event.amount);
///     Ok(())
/// }
/// ```
///
/// `T` is cloned for every delivery, so make it cheap to clone (put large or shared parts in an
/// `Arc`, as clients usually are already). A worker that is not given a `T` that one of its
/// handlers takes refuses to start, naming the handler and the type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State<T>(pub T);

/// One state type a handler takes: its name (for error messages) and its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateType {
    /// `std::any::type_name` of the type.
    pub name: &'static str,
    /// Its `TypeId`.
    pub id: TypeId,
}

impl StateType {
    /// The entry for `T`.
    pub fn of<T: 'static>() -> Self {
        Self {
            name: std::any::type_name::<T>(),
            id: TypeId::of::<T>(),
        }
    }
}

impl fmt::Display for StateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// The application state of a worker: at most one value per type, shared by every delivery.
#[derive(Clone, Default)]
pub struct States {
    values: Arc<HashMap<TypeId, Entry>>,
}

#[derive(Clone)]
struct Entry {
    name: &'static str,
    value: Arc<dyn Any + Send + Sync>,
}

impl States {
    /// No state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value`; a value of the same type given before is replaced.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        Arc::make_mut(&mut self.values).insert(
            TypeId::of::<T>(),
            Entry {
                name: std::any::type_name::<T>(),
                value: Arc::new(value),
            },
        );
    }

    /// The value of type `T`, if one was given.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|entry| entry.value.downcast_ref::<T>())
    }

    /// Whether a value of this type was given.
    pub fn contains(&self, ty: &StateType) -> bool {
        self.values.contains_key(&ty.id)
    }

    /// The names of the types given, sorted (for error messages).
    pub fn type_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.values.values().map(|entry| entry.name).collect();
        names.sort_unstable();
        names
    }
}

impl fmt::Debug for States {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.type_names()).finish()
    }
}

/// Implemented for every type a handler can take as [`State<T>`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be application state",
    label = "state must be `Clone + Send + Sync + 'static`",
    note = "the worker clones the state for every delivery: derive `Clone` (wrap what cannot be cloned in an `Arc`)"
)]
pub trait StateValue: Clone + Send + Sync + 'static {}
impl<T: Clone + Send + Sync + 'static> StateValue for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Gateway(&'static str);

    #[test]
    fn one_value_per_type_the_last_one_wins() {
        let mut states = States::new();
        assert!(states.get::<Gateway>().is_none());
        states.insert(Gateway("a"));
        states.insert(7_u32);
        states.insert(Gateway("b"));
        assert_eq!(states.get::<Gateway>(), Some(&Gateway("b")));
        assert_eq!(states.get::<u32>(), Some(&7));
        assert!(states.contains(&StateType::of::<u32>()));
        assert!(!states.contains(&StateType::of::<u64>()));
        assert_eq!(states.type_names().len(), 2);
        let shared = states.clone();
        states.insert(Gateway("c"));
        assert_eq!(
            shared.get::<Gateway>(),
            Some(&Gateway("b")),
            "clones are snapshots"
        );
    }
}
