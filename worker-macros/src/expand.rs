//! Turns a checked handler function into a unit struct that implements `worker_core::Handler`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{GenericArgument, Ident, ItemFn, PathArguments, ReturnType, Type};

use crate::attr::{self, Args};
use crate::errors::Errors;
use crate::signature::{self, Param, Params, Role};

/// The whole macro: parse, check, then expand, or report every error found.
pub(crate) fn handler(args: TokenStream, item: TokenStream) -> TokenStream {
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            let error = syn::Error::new(Span::call_site(), "`#[handler]` goes on an `async fn`");
            return fallback(item, error);
        }
    };
    let mut errors = Errors::default();
    let args = match syn::parse2::<Args>(args) {
        Ok(mut args) => {
            errors.append(std::mem::take(&mut args.errors));
            Some(args)
        }
        Err(error) => {
            errors.push(error);
            None
        }
    };
    let params = signature::check(&function.sig, &mut errors);
    let Some(args) = args else {
        return fallback(item, errors.finish().unwrap_err());
    };
    let name = check_against_function(&args, &function, &params, &mut errors);
    match errors.finish() {
        Ok(()) => expand(&args, &name, &function, &params),
        Err(error) => fallback(item, error),
    }
}

/// The user's function unchanged, so its body is still checked and its name still resolves, plus
/// one `compile_error!` per problem.
fn fallback(item: TokenStream, error: syn::Error) -> TokenStream {
    let errors = error.to_compile_error();
    quote!(#item #errors)
}

/// Checks the arguments against the function; returns the handler name.
fn check_against_function(
    args: &Args,
    function: &ItemFn,
    params: &Params,
    errors: &mut Errors,
) -> String {
    if !args.has_event() {
        errors.push(syn::Error::new(
            Span::call_site(),
            "`#[handler]` needs `event = \"EventType\"`: the routing key this handler consumes",
        ));
    }
    match (&args.dedup, params.get(Role::Transaction)) {
        (Some(dedup), None) => errors.at(
            dedup,
            "`dedup` handlers take the dedup transaction: add a parameter `tx: &mut PgConnection`; \
             its writes commit together with the dedup row",
        ),
        (None, Some(tx)) => errors.at(
            &tx.arg,
            "only `dedup` handlers get a transaction: add `dedup` to `#[handler(...)]` or remove this parameter",
        ),
        _ => {}
    }
    args.name.clone().unwrap_or_else(|| {
        let name = attr::default_name(&function.sig.ident);
        if let Err(msg) = attr::check_name(&name) {
            errors.at(
                &function.sig.ident,
                format_args!("{msg}; this name comes from the function's name: set `name = \"...\"` in `#[handler]`"),
            );
        }
        name
    })
}

/// The runtime's `__private` module as the user's crate reaches it: through `worker-rabbitmq`
/// when the crate depends on it (an application needs no other framework crate), else through
/// `worker-core`. Within those two packages (their doc tests and integration tests) the path is
/// the package's own name.
fn private_path() -> TokenStream {
    private_path_at(Span::call_site())
}

/// [`private_path`] with every token at `span`, for code spanned at the user's tokens: an error
/// in that code then points at the user's tokens, not at the whole attribute.
fn private_path_at(span: Span) -> TokenStream {
    use proc_macro_crate::{crate_name, FoundCrate};
    let path = |package: &str| {
        crate_name(package).ok().map(|found| match found {
            FoundCrate::Itself => package.replace('-', "_"),
            FoundCrate::Name(name) => name,
        })
    };
    // Neither found (a build tool that hides the manifest): the name an application uses.
    let name = path("worker-rabbitmq")
        .or_else(|| path("worker-core"))
        .unwrap_or_else(|| "worker_rabbitmq".to_owned());
    let name = Ident::new(&name, span);
    quote_spanned!(span=> ::#name::__private)
}

/// The span of `tokens` for code this macro writes: the location of the user's tokens (so errors
/// point there), the hygiene of the macro (so lints treat the code as generated).
fn at(tokens: &impl Spanned) -> Span {
    Span::call_site().located_at(tokens.span())
}

fn expand(args: &Args, name: &str, function: &ItemFn, params: &Params) -> TokenStream {
    let private = private_path();
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let ident = &sig.ident;
    let hidden = format_ident!("__worker_handler_{}", ident.unraw(), span = ident.span());
    let (docs, attrs): (Vec<_>, Vec<_>) = attrs.iter().partition(|a| a.path().is_ident("doc"));
    let cfgs: Vec<_> = attrs.iter().filter(|a| a.path().is_ident("cfg")).collect();
    let mut hidden_sig = sig.clone();
    hidden_sig.ident = hidden.clone();

    let handle_inputs = params.all.iter().map(|p| {
        let (name, ty) = (&p.name, p.ty());
        quote!(#name: #ty)
    });
    let handle_args = params.all.iter().map(|p| &p.name);
    let output = &sig.output;

    let event_ty = params
        .get(Role::Event)
        .expect("checked: a handler has an event")
        .ty();
    let event_check = event_check(event_ty);
    let spec = spec(args, name);
    let call = call(args, params, &hidden, output);
    let states = states(params);

    quote! {
        #(#cfgs)*
        #event_check

        #(#attrs)*
        #[doc(hidden)]
        #[allow(non_snake_case)]
        #hidden_sig #block

        #(#docs)*
        #(#cfgs)*
        #[allow(non_camel_case_types)]
        #[derive(
            ::core::fmt::Debug,
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::default::Default,
        )]
        #vis struct #ident;

        #(#cfgs)*
        impl #ident {
            /// Calls the handler function directly, without the runtime (for tests).
            #[allow(dead_code)]
            #vis async fn handle(#(#handle_inputs),*) #output {
                #hidden(#(#handle_args),*).await
            }
        }

        #(#cfgs)*
        #[automatically_derived]
        impl #private::Handler for #ident {
            type Event = #event_ty;

            fn spec(&self) -> #private::HandlerSpec {
                #spec
            }

            #states

            #call
        }
    }
}

/// The event check, spanned at the event's type: a type that does not deserialize is reported
/// there with worker-core's explanation (`Event`'s `on_unimplemented`).
fn event_check(event_ty: &Type) -> TokenStream {
    let private = private_path_at(at(event_ty));
    quote_spanned! {at(event_ty)=>
        #[allow(dead_code)]
        const _: () = {
            fn __check_event() {
                #private::assert_event::<#event_ty>();
            }
        };
    }
}

/// `Handler::states` for a handler with `State<T>` parameters (the default, none, otherwise).
/// Whether `T` can be state is checked where it is taken out of the context (see `argument`).
fn states(params: &Params) -> TokenStream {
    let types: Vec<&Type> = params.all.iter().filter_map(|p| p.state.as_ref()).collect();
    if types.is_empty() {
        return TokenStream::new();
    }
    let private = private_path();
    quote! {
        fn states(&self) -> ::std::vec::Vec<#private::StateType> {
            ::std::vec![#(#private::StateType::of::<#types>()),*]
        }
    }
}

/// For the context and the transaction: a function from what the runtime passes to the declared
/// type, spanned at that type. A wrong type is one error there, and the call that uses the
/// function's result still type-checks, so the mistake is not reported a second time.
fn argument(p: &Param) -> (Option<TokenStream>, TokenStream) {
    let ty = p.ty();
    let span = at(ty);
    let private = private_path_at(span);
    let (runtime, arg, given) = match p.role {
        Role::Event => return (None, quote!(__event)),
        Role::State => {
            let state = p
                .state
                .as_ref()
                .expect("checked: a state parameter has its type");
            let local = format_ident!("__state_{}", p.name);
            let extract = quote_spanned! {span=>
                let #local: #ty = match #private::extract_state::<#state>(__ctx) {
                    ::core::result::Result::Ok(state) => state,
                    ::core::result::Result::Err(error) => return ::core::result::Result::Err(error),
                };
            };
            return (Some(extract), quote!(#local));
        }
        Role::Context => (
            quote!(&#private::Context),
            format_ident!("__context_arg"),
            quote!(__ctx),
        ),
        Role::Transaction => (
            quote!(&mut #private::PgConnection),
            format_ident!("__transaction_arg"),
            quote!(__tx),
        ),
    };
    let arg = Ident::new(&arg.to_string(), span);
    let value = Ident::new("__value", span);
    let function = quote_spanned! {span=>
        fn #arg(#value: #runtime) -> #ty {
            #value
        }
    };
    (Some(function), quote!(#arg(#given)))
}

/// The `HandlerSpec` literal: the attribute's values over the documented defaults.
fn spec(args: &Args, name: &str) -> TokenStream {
    let private = private_path();
    let event = args.event.as_deref().expect("checked: `event` is set");
    let dedup = args.dedup.is_some();
    let millis = |ms: u64| quote!(#private::Duration::from_millis(#ms));
    let mut retry_fields = Vec::new();
    if let Some(max_attempts) = args.retry {
        retry_fields.push(quote!(max_attempts: #max_attempts,));
    }
    if let Some(base) = &args.base {
        let base = millis(base.value);
        retry_fields.push(quote!(base: #base,));
    }
    if let Some(cap) = &args.cap {
        let cap = millis(cap.value);
        retry_fields.push(quote!(cap: #cap,));
    }
    if let Some(jitter) = args.jitter {
        let jitter = millis(jitter);
        retry_fields.push(quote!(jitter: #jitter,));
    }
    let retry = if retry_fields.is_empty() {
        quote!(#private::RetryPolicy::DEFAULT)
    } else if retry_fields.len() == 4 {
        // Every field is given: a `..DEFAULT` would be a no-op (clippy: needless_update).
        quote!(#private::RetryPolicy { #(#retry_fields)* })
    } else {
        quote!(#private::RetryPolicy { #(#retry_fields)* ..#private::RetryPolicy::DEFAULT })
    };
    let concurrency = match (args.concurrency, &args.partitions) {
        (_, Some(partitions)) => (partitions.value as usize).into_token_stream(),
        (Some(n), None) => (n as usize).into_token_stream(),
        (None, None) => quote!(#private::DEFAULT_CONCURRENCY),
    };
    let partition = match (&args.partition_key, &args.partitions) {
        (Some(key), Some(partitions)) => {
            let (key, partitions) = (&key.value, partitions.value as u16);
            quote!(::core::option::Option::Some(#private::Partitioning {
                key: #key,
                partitions: #partitions,
            }))
        }
        _ => quote!(::core::option::Option::None),
    };
    // Only one of `base` and `cap` given: the other is the default, known to worker-core only.
    let bounds = match (&args.base, &args.cap) {
        (Some(base), None) => {
            let (span, base) = (at(&base.expr), millis(base.value));
            quote_spanned! {span=>
                const _: () = ::core::assert!(
                    #base.as_nanos() <= #private::RetryPolicy::DEFAULT.cap.as_nanos(),
                    "`base` is above the default `cap` (`RetryPolicy::DEFAULT.cap`): set `cap` too",
                );
            }
        }
        (None, Some(cap)) => {
            let (span, cap) = (at(&cap.expr), millis(cap.value));
            quote_spanned! {span=>
                const _: () = ::core::assert!(
                    #cap.as_nanos() >= #private::RetryPolicy::DEFAULT.base.as_nanos(),
                    "`cap` is below the default `base` (`RetryPolicy::DEFAULT.base`): set `base` too",
                );
            }
        }
        _ => TokenStream::new(),
    };
    let breaker = match args.breaker {
        None => quote!(#private::BreakerSettings::DEFAULT),
        Some(0) => quote!(#private::BreakerSettings::OFF),
        Some(failures) => quote!(#private::BreakerSettings {
            failures: #failures,
            ..#private::BreakerSettings::DEFAULT
        }),
    };
    let version = args.version.unwrap_or(1);
    quote! {
        #bounds
        #private::HandlerSpec {
            name: #name,
            event_type: #event,
            dedup: #dedup,
            retry: #retry,
            concurrency: #concurrency,
            partition: #partition,
            breaker: #breaker,
            version: #version,
        }
    }
}

/// `Handler::call`: takes the transaction out of its `Option` for `dedup` handlers and calls the
/// user's function with the arguments in the order it declares them.
fn call(args: &Args, params: &Params, hidden: &Ident, output: &ReturnType) -> TokenStream {
    let private = private_path();
    let take_tx = args.dedup.is_some().then(|| {
        quote! {
            let __tx = match __tx {
                ::core::option::Option::Some(tx) => tx,
                ::core::option::Option::None => {
                    return ::core::result::Result::Err(#private::HandlerError::retryable(
                        "internal: dedup handler called without a transaction",
                    ));
                }
            };
        }
    });
    let (preludes, call_args): (Vec<_>, Vec<_>) = params.all.iter().map(argument).unzip();
    // Conversion functions go before the future; state is taken out of the context inside it.
    let (extracts, arg_functions): (Vec<_>, Vec<_>) = params
        .all
        .iter()
        .zip(preludes)
        .partition(|(p, _)| p.role == Role::State);
    let extracts = extracts.into_iter().map(|(_, e)| e);
    let arg_functions = arg_functions.into_iter().map(|(_, f)| f);
    // Spanned at the return type and at its error type: a result that is not `Result<(), _>`, and
    // an error that does not convert into `HandlerError`, are reported there.
    let (output, error) = match output {
        ReturnType::Type(_, ty) => (at(ty), at(error_type(ty))),
        ReturnType::Default => (Span::call_site(), Span::call_site()),
    };
    let result = Ident::new("__result", output);
    let unit_ok = quote_spanned! {output=>
        let __result: ::core::result::Result<(), _> = #result;
    };
    let error_private = private_path_at(error);
    let map_err = quote_spanned! {error=>
        __result.map_err(::core::convert::Into::<#error_private::HandlerError>::into)
    };
    // Spanned at the function's name: a future that is not `Send` is reported there.
    let hidden_private = private_path_at(at(&hidden));
    let boxed = quote_spanned! {at(&hidden)=>
        #hidden_private::Box::pin(async move {
            #take_tx
            #(#extracts)*
            let #result = #hidden(#(#call_args),*).await;
            #unit_ok
            #map_err
        })
    };
    quote! {
        fn call<'a>(
            &'a self,
            __event: Self::Event,
            __ctx: &'a #private::Context,
            __tx: ::core::option::Option<&'a mut #private::PgConnection>,
        ) -> #private::BoxFuture<
            'a,
            ::core::result::Result<(), #private::HandlerError>,
        > {
            #(#arg_functions)*
            #boxed
        }
    }
}

/// `E` in `Result<(), E>` (however `Result` is spelled), else the whole type.
fn error_type(ty: &Type) -> &Type {
    let Type::Path(path) = ty else { return ty };
    let Some(PathArguments::AngleBracketed(args)) = path.path.segments.last().map(|s| &s.arguments)
    else {
        return ty;
    };
    match args.args.iter().nth(1) {
        Some(GenericArgument::Type(error)) => error,
        _ => ty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(args: &str, item: &str) -> String {
        handler(args.parse().unwrap(), item.parse().unwrap()).to_string()
    }

    #[test]
    fn expansion_is_valid_rust() {
        let out = expand_str(
            r#"event = "OrderPlaced", dedup, retry = 12, base = 250ms"#,
            "/// Charges.\npub async fn charge(event: OrderPlaced, tx: &mut PgConnection, ctx: &Context) \
             -> Result<(), HandlerError> { Ok(()) }",
        );
        if std::env::var_os("SHOW_EXPANSION").is_some() {
            println!("{out}");
        }
        let file: syn::File = syn::parse_str(&out).unwrap();
        assert!(!out.contains("compile_error"), "{out}");
        assert!(out.contains("fn __worker_handler_charge"));
        assert!(out.contains("pub struct charge"));
        assert!(file.items.len() >= 5);
    }

    #[test]
    fn errors_keep_the_function() {
        let item = "fn charge(event: OrderPlaced) -> Result<(), HandlerError> { Ok(()) }";
        let out = expand_str("retry = 0, dedup", item);
        assert_eq!(out.matches("compile_error").count(), 4, "{out}"); // retry, async, event, dedup
        assert!(out.starts_with(&item.parse::<TokenStream>().unwrap().to_string()));
    }
}
