//! The `#[resilient]` attribute of [buttress](https://docs.rs/buttress):
//! an `async fn` whose body runs under a named resilience policy.
//!
//! Use it through the facade, `buttress::resilient` (feature `macros`);
//! the crate docs there have the examples. The expansion calls
//! `buttress::policy::global().execute(name, ...)`, so the function's
//! body is retried, timed out, counted by a breaker and held by a
//! bulkhead as the policy says.
#![forbid(unsafe_code)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Error, Expr, ExprLit, FnArg, ItemFn, Lit, LitStr, Meta, Pat, ReturnType, Token, Type};

/// Runs the body of an `async fn` under a named policy of the
/// process-wide policy set: `#[resilient(policy = "database")]`.
///
/// The policy is looked up in `buttress::policy::global()` at each call:
/// the set installed with `PolicySet::install_global`, or, when none was
/// installed, the presets `api`, `ai`, `database`, `external` and
/// `critical`. A retry runs the body again, so every argument is cloned
/// for each attempt (references are copied). The function must return a
/// `Result<T, E>` whose error goes into a `buttress::BoxError` and comes
/// back out of one (`E: Into<BoxError> + From<BoxError>`; `BoxError`
/// itself, or an error type with a `From<BoxError>` that downcasts): the
/// body's error travels through the layers boxed, and a rejection, such as
/// an open circuit, arrives through `From`.
///
/// Refused at compile time: a function that is not `async`, that does not
/// return a `Result`, that takes `&mut self` or a pattern argument, or an
/// attribute without `policy = "..."`.
#[proc_macro_attribute]
pub fn resilient(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(attr: TokenStream2, item: TokenStream2) -> Result<TokenStream2, Error> {
    let policy = parse_policy(attr)?;
    let mut func: ItemFn = syn::parse2(item)?;
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        return Err(Error::new(
            sig.fn_token.span(),
            "#[resilient] applies to an `async fn`",
        ));
    }
    let ret = match &sig.output {
        ReturnType::Type(_, ty) if returns_result(ty) => ty,
        other => {
            return Err(Error::new(
                other.span(),
                "#[resilient] needs a function that returns a `Result<T, E>` \
                 (with `E: Into<buttress::BoxError> + From<buttress::BoxError>`)",
            ))
        }
    };

    // Each attempt gets its own copy of the arguments.
    let mut clones = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                if r.mutability.is_some() && r.reference.is_some() {
                    return Err(Error::new(
                        r.span(),
                        "#[resilient] cannot retry a body that borrows `&mut self`: \
                         every attempt would need the same mutable borrow",
                    ));
                }
                if r.reference.is_none() {
                    clones.push(quote_spanned! {r.span()=>
                        let self_ = ::core::clone::Clone::clone(&self_);
                    });
                }
            }
            FnArg::Typed(t) => match &*t.pat {
                Pat::Ident(id) if id.by_ref.is_none() && id.subpat.is_none() => {
                    let name = &id.ident;
                    clones.push(quote_spanned! {t.span()=>
                        let #name = ::core::clone::Clone::clone(&#name);
                    });
                }
                other => {
                    return Err(Error::new(
                        other.span(),
                        "#[resilient] needs plain argument names (`id: u64`), \
                         so that each attempt can clone them",
                    ))
                }
            },
        }
    }

    let by_value_self = sig
        .inputs
        .iter()
        .any(|i| matches!(i, FnArg::Receiver(r) if r.reference.is_none()));
    let body = &func.block;
    // A by-value `self` is moved into a binding the closure can clone.
    let body = if by_value_self {
        let renamed = rename_self(quote!(#body));
        quote!(#renamed)
    } else {
        quote!(#body)
    };
    let bind_self = if by_value_self {
        quote!(let self_ = self;)
    } else {
        quote!()
    };
    let new_body = quote! {{
        #bind_self
        let __buttress_result = ::buttress::policy::global()
            .execute(#policy, || {
                #(#clones)*
                async move {
                    let __buttress_out: #ret = async move #body.await;
                    __buttress_out
                }
            })
            .await;
        ::buttress::policy::__private::finish(__buttress_result)
    }};
    func.block = syn::parse2(new_body)?;
    Ok(quote!(#func))
}

/// `self` written as `self_` in a by-value method's body, which the
/// expansion binds and clones per attempt.
fn rename_self(tokens: TokenStream2) -> TokenStream2 {
    use proc_macro2::{Group, Ident, TokenTree};
    tokens
        .into_iter()
        .map(|tt| match tt {
            TokenTree::Ident(id) if id == "self" => {
                TokenTree::Ident(Ident::new("self_", id.span()))
            }
            TokenTree::Group(g) => {
                let mut new = Group::new(g.delimiter(), rename_self(g.stream()));
                new.set_span(g.span());
                TokenTree::Group(new)
            }
            other => other,
        })
        .collect()
}

fn returns_result(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Result"),
        _ => false,
    }
}

fn parse_policy(attr: TokenStream2) -> Result<LitStr, Error> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    let mut policy = None;
    for meta in metas {
        match meta {
            Meta::NameValue(nv) if nv.path.is_ident("policy") => {
                match nv.value {
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(s), ..
                    }) if !s.value().is_empty() => policy = Some(s),
                    other => return Err(Error::new(
                        other.span(),
                        "`policy` takes the name of a policy as a string: `policy = \"database\"`",
                    )),
                }
            }
            other => {
                return Err(Error::new(
                    other.span(),
                    "unknown argument: #[resilient] takes `policy = \"name\"`",
                ))
            }
        }
    }
    policy.ok_or_else(|| {
        Error::new(
            Span::call_site(),
            "#[resilient] needs a policy: #[resilient(policy = \"database\")]",
        )
    })
}
