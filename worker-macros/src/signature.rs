//! Checks the handler function's signature and sorts its parameters by role.
//!
//! The roles are read off the syntax alone: a type written `State<T>` (any path whose last
//! segment is `State`) is application state, `&mut T` the dedup transaction, `&T` the context,
//! anything else the event. Whether `T` is the right type is left to the spanned checks that
//! `expand` generates, so a wrong type is reported by the compiler at the parameter.

use syn::{FnArg, Ident, Pat, PatType, ReturnType, Signature, Type, TypeReference};

use crate::errors::Errors;

/// What the runtime passes for a parameter.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Role {
    /// The decoded event, taken by value.
    Event,
    /// `&Context`.
    Context,
    /// `&mut PgConnection`, the dedup transaction.
    Transaction,
    /// `State<T>`: application state, any number of them (one per type).
    State,
}

/// One parameter of the handler function.
pub(crate) struct Param {
    pub(crate) role: Role,
    /// The parameter, as written, to point at it.
    pub(crate) arg: PatType,
    /// The name the forwarding `handle` function gives it.
    pub(crate) name: Ident,
    /// For [`Role::State`]: `T` in `State<T>`.
    pub(crate) state: Option<Type>,
}

impl Param {
    /// The declared type, e.g. `OrderPlaced` or `&mut PgConnection`.
    pub(crate) fn ty(&self) -> &Type {
        &self.arg.ty
    }
}

/// The handler function's parameters, in the order the user wrote them.
pub(crate) struct Params {
    pub(crate) all: Vec<Param>,
}

impl Params {
    /// The parameter with `role`, if there is one.
    pub(crate) fn get(&self, role: Role) -> Option<&Param> {
        self.all.iter().find(|p| p.role == role)
    }
}

/// Checks everything about the signature that does not depend on the attribute's arguments, and
/// classifies the parameters. Errors go to `errors`; the result is usable either way.
pub(crate) fn check(sig: &Signature, errors: &mut Errors) -> Params {
    if sig.asyncness.is_none() {
        errors.at(sig.fn_token, "`#[handler]` functions must be `async`");
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.at(unsafety, "`#[handler]` functions cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        errors.at(abi, "`#[handler]` functions cannot have an `extern` ABI");
    }
    if let Some(constness) = &sig.constness {
        errors.at(constness, "`#[handler]` functions cannot be `const`");
    }
    if !sig.generics.params.is_empty() {
        errors.at(
            &sig.generics,
            "handlers cannot be generic: the runtime calls them with concrete types",
        );
    } else if let Some(where_clause) = &sig.generics.where_clause {
        errors.at(
            where_clause,
            "handlers cannot be generic: remove the `where` clause",
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.at(variadic, "handlers cannot be variadic");
    }
    if let ReturnType::Default = sig.output {
        errors.at(
            sig,
            "a handler returns `Result<(), E>`, where `E` is `HandlerError` or any error that converts into it",
        );
    }

    let mut all: Vec<Param> = Vec::new();
    for (index, input) in sig.inputs.iter().enumerate() {
        let arg = match input {
            FnArg::Typed(arg) => arg,
            FnArg::Receiver(receiver) => {
                errors.at(
                    receiver,
                    "handlers are free functions: they cannot take `self`",
                );
                continue;
            }
        };
        let mut state = None;
        let role = match &*arg.ty {
            Type::Path(path) if is_state(path) => match state_type(path) {
                Some(ty) => {
                    state = Some(ty.clone());
                    Role::State
                }
                None => {
                    errors.at(
                        &arg.ty,
                        "`State` takes the type of the application state: `State<AppState>`",
                    );
                    continue;
                }
            },
            Type::Reference(TypeReference {
                mutability: Some(_),
                ..
            }) => Role::Transaction,
            Type::Reference(_) => Role::Context,
            Type::ImplTrait(_) => {
                errors.at(
                    &arg.ty,
                    "handlers cannot be generic: name the event type instead of `impl Trait`",
                );
                continue;
            }
            _ => Role::Event,
        };
        if role != Role::State && all.iter().any(|p| p.role == role) {
            errors.at(arg, second_of(role));
            continue;
        }
        let name = match &*arg.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => pat.ident.clone(),
            _ => quote::format_ident!("arg{}", index),
        };
        all.push(Param {
            role,
            arg: arg.clone(),
            name,
            state,
        });
    }
    if !all.iter().any(|p| p.role == Role::Event) {
        errors.at(
            sig,
            "a handler takes the event as an owned parameter, e.g. `event: OrderPlaced`",
        );
    }
    Params { all }
}

/// Whether the type is written `State<...>` (or `path::State<...>`): the state role.
fn is_state(path: &syn::TypePath) -> bool {
    path.qself.is_none()
        && path
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "State")
}

/// `T` in `State<T>`, when there is exactly one type argument.
fn state_type(path: &syn::TypePath) -> Option<&Type> {
    let syn::PathArguments::AngleBracketed(args) = &path.path.segments.last()?.arguments else {
        return None;
    };
    match args.args.iter().collect::<Vec<_>>()[..] {
        [syn::GenericArgument::Type(ty)] => Some(ty),
        _ => None,
    }
}

/// The error for a second parameter of `role`.
fn second_of(role: Role) -> &'static str {
    match role {
        Role::Event => {
            "a handler takes exactly one event parameter, and this is a second owned parameter \
             (the context is `&Context` and the dedup transaction `&mut PgConnection`)"
        }
        Role::Context => "a handler takes the context (`&Context`) at most once",
        Role::Transaction => {
            "a handler takes the dedup transaction (`&mut PgConnection`) at most once"
        }
        Role::State => unreachable!("a handler may take several `State<T>`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_str(src: &str) -> (Vec<(Role, String)>, Vec<String>) {
        let sig: Signature = syn::parse_str(src).unwrap();
        let mut errors = Errors::default();
        let params = check(&sig, &mut errors);
        let roles = params
            .all
            .iter()
            .map(|p| (p.role, p.name.to_string()))
            .collect();
        let errors = match errors.finish() {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        };
        (roles, errors)
    }

    #[test]
    fn roles_in_declared_order() {
        let (roles, errors) =
            check_str("async fn h(event: E, tx: &mut PgConnection, ctx: &Context) -> Result<(), HandlerError>");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            roles,
            [
                (Role::Event, "event".into()),
                (Role::Transaction, "tx".into()),
                (Role::Context, "ctx".into())
            ]
        );
        let (roles, _) = check_str("async fn h(_: &Context, mut e: E, E { id }: E2) -> R");
        assert_eq!(
            roles,
            [(Role::Context, "arg0".into()), (Role::Event, "e".into())]
        );
    }

    #[test]
    fn mistakes() {
        let (_, errors) = check_str("fn h<T>(self, a: A, b: B, c: &C, d: &D) where T: Copy");
        assert_eq!(errors.len(), 6, "{errors:?}");
        assert!(errors[0].contains("must be `async`"));
        assert!(errors[1].contains("cannot be generic"));
        assert!(errors[2].contains("returns `Result<(), E>`"));
        assert!(errors[3].contains("cannot take `self`"));
        assert!(errors[4].contains("exactly one event"));
        assert!(errors[5].contains("context (`&Context`) at most once"));
        let (roles, errors) = check_str(
            "async fn h(State(g): State<Gateway>, e: E, s: worker::State<Arc<Settings>>) -> R",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            roles,
            [
                (Role::State, "arg0".into()),
                (Role::Event, "e".into()),
                (Role::State, "s".into())
            ]
        );
        let (_, errors) = check_str("async fn h(e: E, s: State, t: State<A, B>) -> R");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("`State<AppState>`"));
        let (_, errors) = check_str("async fn h(ctx: &Context) -> R");
        assert_eq!(
            errors,
            ["a handler takes the event as an owned parameter, e.g. `event: OrderPlaced`"]
        );
    }
}
