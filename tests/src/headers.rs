//! Parsing the `RateLimit` and `RateLimit-Policy` headers with an RFC 9651
//! Structured Fields parser, so tests check the syntax, not only our format.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

/// A parsed SF list of `"name";key=int` items: name → parameters.
pub type PolicyList = BTreeMap<String, BTreeMap<String, i64>>;

/// Parses `header` as an SF list of string items with integer parameters;
/// panics (failing the test) on any syntax error.
pub fn parse_sf_list(header: &str) -> PolicyList {
    let list: sfv::List = sfv::Parser::new(header).parse().expect("a valid RFC 9651 list");
    list.into_iter()
        .map(|entry| {
            let sfv::ListEntry::Item(item) = entry else { panic!("inner list in {header}") };
            let name = item.bare_item.as_string().expect("a string item").as_str().to_owned();
            let params = item
                .params
                .iter()
                .map(|(k, v)| {
                    (k.as_str().to_owned(), i64::from(v.as_integer().expect("integer parameter")))
                })
                .collect();
            (name, params)
        })
        .collect()
}

/// The parsed value of a response header, if present.
pub fn sf_header(response: &reqwest::Response, name: &str) -> Option<PolicyList> {
    response.headers().get(name).map(|v| parse_sf_list(v.to_str().unwrap()))
}
