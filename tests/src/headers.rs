//! Parsing the `RateLimit` and `RateLimit-Policy` headers with an RFC 9651
//! Structured Fields parser, so tests check the syntax, not only our format.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

/// A parsed SF list of `"name";key=int` items: name → integer parameters.
/// String parameters (the `qu` of a policy) are checked by
/// [`parse_sf_string_params`].
pub type PolicyList = BTreeMap<String, BTreeMap<String, i64>>;

fn parse(header: &str) -> Vec<(String, sfv::Parameters)> {
    let list: sfv::List = sfv::Parser::new(header).parse().expect("a valid RFC 9651 list");
    list.into_iter()
        .map(|entry| {
            let sfv::ListEntry::Item(item) = entry else { panic!("inner list in {header}") };
            let name = item.bare_item.as_string().expect("a string item").as_str().to_owned();
            (name, item.params)
        })
        .collect()
}

/// Parses `header` as an SF list of string items with integer or string
/// parameters, keeping the integers; panics (failing the test) on any
/// syntax error or any other kind of parameter.
pub fn parse_sf_list(header: &str) -> PolicyList {
    parse(header)
        .into_iter()
        .map(|(name, params)| {
            let params = params
                .iter()
                .filter(|(_, v)| v.as_string().is_none())
                .map(|(k, v)| {
                    (k.as_str().to_owned(), i64::from(v.as_integer().expect("integer parameter")))
                })
                .collect();
            (name, params)
        })
        .collect()
}

/// The string parameters of each item of `header`: name → key → value.
pub fn parse_sf_string_params(header: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    parse(header)
        .into_iter()
        .map(|(name, params)| {
            let strings = params
                .iter()
                .filter_map(|(k, v)| {
                    Some((k.as_str().to_owned(), v.as_string()?.as_str().to_owned()))
                })
                .collect();
            (name, strings)
        })
        .collect()
}

/// The parsed value of a response header, if present.
pub fn sf_header(response: &reqwest::Response, name: &str) -> Option<PolicyList> {
    response.headers().get(name).map(|v| parse_sf_list(v.to_str().unwrap()))
}
