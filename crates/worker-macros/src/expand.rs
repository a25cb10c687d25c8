//! Turns a checked handler function into a unit struct that implements `worker_core::Handler`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Ident, ItemFn, ReturnType};

use crate::attr::{self, Args};
use crate::errors::Errors;
use crate::signature::{self, Params, Role};

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

/// The span of `tokens` for code this macro writes: the location of the user's tokens (so errors
/// point there), the hygiene of the macro (so lints treat the code as generated).
fn at(tokens: &impl Spanned) -> Span {
    Span::call_site().located_at(tokens.span())
}

fn expand(args: &Args, name: &str, function: &ItemFn, params: &Params) -> TokenStream {
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
    let checks = checks(params);
    let spec = spec(args, name);
    let call = call(args, params, &hidden, output);

    quote! {
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
        impl ::worker_core::Handler for #ident {
            type Event = #event_ty;

            fn spec(&self) -> ::worker_core::HandlerSpec {
                #spec
            }

            #call
        }

        #(#cfgs)*
        #[allow(dead_code)]
        const _: () = {
            #checks
        };
    }
}

/// One check per parameter, spanned at its type, so a wrong type is reported at the parameter with
/// worker-core's explanation instead of somewhere in the generated `impl`.
fn checks(params: &Params) -> TokenStream {
    params
        .all
        .iter()
        .map(|p| {
            let ty = p.ty();
            let span = at(ty);
            let value = Ident::new("__value", span);
            match p.role {
                Role::Event => quote_spanned! {span=>
                    fn __check_event() { ::worker_core::__private::assert_event::<#ty>(); }
                },
                Role::Context => quote_spanned! {span=>
                    fn __check_context(#value: #ty) { ::worker_core::__private::assert_context(#value); }
                },
                Role::Transaction => quote_spanned! {span=>
                    fn __check_transaction(#value: #ty) { ::worker_core::__private::assert_transaction(#value); }
                },
            }
        })
        .collect()
}

/// The `HandlerSpec` literal: the attribute's values over the documented defaults.
fn spec(args: &Args, name: &str) -> TokenStream {
    let event = args.event.as_deref().expect("checked: `event` is set");
    let dedup = args.dedup.is_some();
    let millis = |ms: u64| quote!(::worker_core::__private::Duration::from_millis(#ms));
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
        quote!(::worker_core::RetryPolicy::DEFAULT)
    } else {
        quote!(::worker_core::RetryPolicy { #(#retry_fields)* ..::worker_core::RetryPolicy::DEFAULT })
    };
    let concurrency = match args.concurrency {
        Some(n) => (n as usize).into_token_stream(),
        None => quote!(::worker_core::handler::DEFAULT_CONCURRENCY),
    };
    // Only one of `base` and `cap` given: the other is the default, known to worker-core only.
    let bounds = match (&args.base, &args.cap) {
        (Some(base), None) => {
            let (span, base) = (at(&base.expr), millis(base.value));
            quote_spanned! {span=>
                const _: () = ::core::assert!(
                    #base.as_nanos() <= ::worker_core::RetryPolicy::DEFAULT.cap.as_nanos(),
                    "`base` is above the default `cap` (`RetryPolicy::DEFAULT.cap`): set `cap` too",
                );
            }
        }
        (None, Some(cap)) => {
            let (span, cap) = (at(&cap.expr), millis(cap.value));
            quote_spanned! {span=>
                const _: () = ::core::assert!(
                    #cap.as_nanos() >= ::worker_core::RetryPolicy::DEFAULT.base.as_nanos(),
                    "`cap` is below the default `base` (`RetryPolicy::DEFAULT.base`): set `base` too",
                );
            }
        }
        _ => TokenStream::new(),
    };
    quote! {
        #bounds
        ::worker_core::HandlerSpec {
            name: #name,
            event_type: #event,
            dedup: #dedup,
            retry: #retry,
            concurrency: #concurrency,
        }
    }
}

/// `Handler::call`: takes the transaction out of its `Option` for `dedup` handlers and calls the
/// user's function with the arguments in the order it declares them.
fn call(args: &Args, params: &Params, hidden: &Ident, output: &ReturnType) -> TokenStream {
    let take_tx = args.dedup.is_some().then(|| {
        quote! {
            let __tx = match __tx {
                ::core::option::Option::Some(tx) => tx,
                ::core::option::Option::None => {
                    return ::core::result::Result::Err(::worker_core::HandlerError::retryable(
                        "internal: dedup handler called without a transaction",
                    ));
                }
            };
        }
    });
    let call_args = params.all.iter().map(|p| match p.role {
        Role::Event => quote!(__event),
        Role::Context => quote!(__ctx),
        Role::Transaction => quote!(__tx),
    });
    // Spanned at the return type: an error type that does not convert is reported there.
    let into = match output {
        ReturnType::Type(_, ty) => at(ty),
        ReturnType::Default => Span::call_site(),
    };
    let map_err = quote_spanned! {into=>
        .map_err(::core::convert::Into::<::worker_core::HandlerError>::into)
    };
    quote! {
        fn call<'a>(
            &'a self,
            __event: Self::Event,
            __ctx: &'a ::worker_core::Context,
            __tx: ::core::option::Option<&'a mut ::worker_core::__private::PgConnection>,
        ) -> ::worker_core::__private::BoxFuture<
            'a,
            ::core::result::Result<(), ::worker_core::HandlerError>,
        > {
            ::worker_core::__private::Box::pin(async move {
                #take_tx
                #hidden(#(#call_args),*).await #map_err
            })
        }
    }
}
