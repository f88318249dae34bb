//! Keyset pagination. A page is asked for with a limit and the key of the
//! last item already seen; the API turns that key into an opaque cursor.

/// The default number of items on a page.
pub const DEFAULT_PAGE_LIMIT: u64 = 20;
/// The most items one page may hold.
pub const MAX_PAGE_LIMIT: u64 = 100;

/// Which page to read: items strictly after `after`, at most `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest<K> {
    /// How many items (1..=100).
    pub limit: u64,
    /// The key of the last item of the previous page.
    pub after: Option<K>,
}

/// One page of results.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, in the list's order.
    pub items: Vec<T>,
    /// Whether more items follow the last one.
    pub has_more: bool,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows: repositories read one row
    /// more than asked so they can tell whether another page exists without a
    /// second query.
    pub fn from_overfetch(mut rows: Vec<T>, limit: u64) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        Self { items: rows, has_more }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overfetch_sets_has_more_and_trims() {
        let page = Page::from_overfetch(vec![1, 2, 3], 2);
        assert_eq!(page.items, vec![1, 2]);
        assert!(page.has_more);
        let page = Page::from_overfetch(vec![1, 2], 2);
        assert!(!page.has_more);
    }
}
