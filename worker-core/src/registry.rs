//! The handlers a worker runs, type-erased so handlers of different event types live together.

use std::collections::HashSet;
use std::sync::Arc;

use crate::handler::{BoxFuture, Handler, HandlerSpec};
use crate::message::inbound::InboundMessage;
use crate::pipeline::{self, disposition::Disposition, Runtime};
use crate::state::{StateType, States};

/// A handler behind a trait object: its spec and its pipeline.
pub trait ErasedHandler: Send + Sync + 'static {
    /// The spec as the handler declares it.
    fn spec(&self) -> HandlerSpec;
    /// The state types it takes (see [`Handler::states`]).
    fn states(&self) -> Vec<StateType>;
    /// Runs the pipeline for one delivery under the effective `spec`.
    fn process<'a>(
        &'a self,
        spec: &'a HandlerSpec,
        runtime: &'a Runtime,
        message: &'a InboundMessage,
    ) -> BoxFuture<'a, Disposition>;
    /// Runs the pipeline for several deliveries; for a dedup handler in one transaction (see
    /// [`process_batch`](crate::transport::pipeline::process_batch)). One disposition per message,
    /// in order.
    fn process_batch<'a>(
        &'a self,
        spec: &'a HandlerSpec,
        runtime: &'a Runtime,
        messages: &'a [InboundMessage],
    ) -> BoxFuture<'a, Vec<Disposition>>;
}

impl<H: Handler> ErasedHandler for H {
    fn spec(&self) -> HandlerSpec {
        Handler::spec(self)
    }

    fn states(&self) -> Vec<StateType> {
        Handler::states(self)
    }

    fn process<'a>(
        &'a self,
        spec: &'a HandlerSpec,
        runtime: &'a Runtime,
        message: &'a InboundMessage,
    ) -> BoxFuture<'a, Disposition> {
        Box::pin(pipeline::process(self, spec, runtime, message))
    }

    fn process_batch<'a>(
        &'a self,
        spec: &'a HandlerSpec,
        runtime: &'a Runtime,
        messages: &'a [InboundMessage],
    ) -> BoxFuture<'a, Vec<Disposition>> {
        Box::pin(pipeline::batch::process_batch(
            self, spec, runtime, messages,
        ))
    }
}

/// Why a set of handlers cannot run.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Nothing registered.
    #[error("no handlers registered: add at least one with `.handler(your_fn)` before `run()`")]
    Empty,
    /// Two handlers share a name (and so a queue and dedup state).
    #[error("two handlers are named `{0}`: names are queue names and dedup keys, so they must be unique (set `name = \"...\"` on one)")]
    DuplicateName(String),
    /// A handler takes a state type the worker was not given.
    #[error("handler `{handler}` takes `State<{state}>`, but the worker was given no `{state}`: add `.state(value)` to the worker's builder (given: {given})")]
    MissingState {
        /// The handler.
        handler: &'static str,
        /// The state type.
        state: &'static str,
        /// The state types the worker was given.
        given: String,
    },
}

/// The handlers of one worker.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: Vec<Arc<dyn ErasedHandler>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.handlers.iter().map(|h| h.spec().name))
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a handler.
    pub fn add<H: Handler>(&mut self, handler: H) {
        self.handlers.push(Arc::new(handler));
    }

    /// The registered handlers, in registration order.
    pub fn handlers(&self) -> &[Arc<dyn ErasedHandler>] {
        &self.handlers
    }

    /// Fails when there is no handler or two share a name.
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.handlers.is_empty() {
            return Err(RegistryError::Empty);
        }
        let mut names = HashSet::new();
        for handler in &self.handlers {
            let name = handler.spec().name;
            if !names.insert(name) {
                return Err(RegistryError::DuplicateName(name.to_owned()));
            }
        }
        Ok(())
    }

    /// Fails when a handler takes a state type that `states` has no value of.
    pub fn check_states(&self, states: &States) -> Result<(), RegistryError> {
        for handler in &self.handlers {
            if let Some(missing) = handler.states().into_iter().find(|t| !states.contains(t)) {
                let given = states.type_names();
                return Err(RegistryError::MissingState {
                    handler: handler.spec().name,
                    state: missing.name,
                    given: if given.is_empty() {
                        "none".to_owned()
                    } else {
                        given.join(", ")
                    },
                });
            }
        }
        Ok(())
    }
}
