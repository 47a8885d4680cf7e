//! `#[fragmenta::job]`: put on the `impl FragmentedJob for T` (or `impl TypedJob for T`) block
//! of a job type, it registers `T` with every cluster the program builds, through a link-time
//! registry: a type linked into the program cannot be forgotten on one host. Users reach it as
//! `fragmenta::job`; the generated code names the `fragmenta` facade.
//!
//! - Without a `const CLASS_ID` in the block, one is added: the hash of the type's module path
//!   and name (the same on every host running the same program). `#[job(name = "my-app.sum")]`
//!   picks the name instead, which keeps the id when the type moves or is renamed.
//! - `#[job(crate = path)]` names the facade when it is not `::fragmenta` (a renamed dependency).
//! - Generic impls are refused: each instantiation is a job type of its own, to be registered
//!   explicitly with `ClusterBuilder::register`.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{quote, ToTokens};
use syn::parse::Parser;
use syn::{parse_macro_input, ImplItem, ItemImpl, LitStr, Path};

/// Registers the job type of the `impl` block it is put on with every cluster the program
/// builds, and gives it a `CLASS_ID` when the block has none. See the crate docs.
#[proc_macro_attribute]
pub fn job(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut name: Option<LitStr> = None;
    let mut krate: Option<Path> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            name = Some(meta.value()?.parse()?);
            Ok(())
        } else if meta.path.is_ident("crate") {
            krate = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta
                .error("unknown argument of #[job]: expected `name = \"...\"` or `crate = path`"))
        }
    });
    if let Err(e) = parser.parse(attr) {
        return e.to_compile_error().into();
    }
    let mut block = parse_macro_input!(item as ItemImpl);
    match expand(&mut block, name, krate) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(
    block: &mut ItemImpl,
    name: Option<LitStr>,
    krate: Option<Path>,
) -> syn::Result<proc_macro2::TokenStream> {
    if block.trait_.is_none() {
        return Err(syn::Error::new(
            Span::call_site(),
            "#[job] goes on an `impl FragmentedJob for T` or `impl TypedJob for T` block",
        ));
    }
    if !block.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &block.generics,
            "#[job] cannot register a generic job type: register each instantiation with \
             `ClusterBuilder::register::<T>()`",
        ));
    }
    let krate: Path = krate.unwrap_or_else(|| syn::parse_quote!(::fragmenta));
    let ty = block.self_ty.clone();
    let has_class_id = block
        .items
        .iter()
        .any(|item| matches!(item, ImplItem::Const(c) if c.ident == "CLASS_ID"));
    if has_class_id {
        if let Some(name) = &name {
            return Err(syn::Error::new_spanned(
                name,
                "the block already has a CLASS_ID: drop `name = ...` or the constant",
            ));
        }
    } else {
        let class_name = match &name {
            Some(name) => name.to_token_stream(),
            None => {
                let ty_name = ty.to_token_stream().to_string().replace(' ', "");
                quote!(::core::concat!(::core::module_path!(), "::", #ty_name))
            }
        };
        block.items.push(syn::parse_quote! {
            const CLASS_ID: #krate::ClassId = #krate::ClassId::from_name(#class_name);
        });
    }
    Ok(quote! {
        #block
        #krate::__private::inventory::submit! {
            #krate::__private::LinkedJob::of::<#ty>()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(block: &str, name: Option<&str>) -> syn::Result<String> {
        let mut block: ItemImpl = syn::parse_str(block)?;
        let name = name.map(|n| LitStr::new(n, Span::call_site()));
        expand(&mut block, name, None).map(|t| t.to_string())
    }

    #[test]
    fn adds_a_class_id_from_the_type_and_submits_the_type() {
        let out = expand_str("impl TypedJob for a::Words { type Output = (); }", None).unwrap();
        assert!(out.contains("const CLASS_ID"), "{out}");
        assert!(out.contains("\"::\" , \"a::Words\""), "{out}");
        assert!(out.contains("inventory :: submit"), "{out}");
        assert!(out.contains("LinkedJob :: of :: < a :: Words >"), "{out}");
        let named = expand_str("impl TypedJob for W {}", Some("my.words")).unwrap();
        assert!(named.contains("from_name (\"my.words\")"), "{named}");
    }

    #[test]
    fn keeps_an_explicit_class_id_and_refuses_two() {
        let block =
            "impl FragmentedJob for W { const CLASS_ID: ClassId = ClassId::from_name(\"w\"); }";
        let out = expand_str(block, None).unwrap();
        assert_eq!(out.matches("CLASS_ID").count(), 1, "{out}");
        let err = expand_str(block, Some("other")).unwrap_err();
        assert!(err.to_string().contains("already has a CLASS_ID"), "{err}");
    }

    #[test]
    fn refuses_generic_and_inherent_impls() {
        let err = expand_str("impl<T> TypedJob for W<T> {}", None).unwrap_err();
        assert!(err.to_string().contains("generic"), "{err}");
        let err = expand_str("impl W {}", None).unwrap_err();
        assert!(
            err.to_string().contains("goes on an `impl FragmentedJob"),
            "{err}"
        );
    }
}
