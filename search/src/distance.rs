//! Bounded Damerau–Levenshtein distance (optimal string alignment: insertions, deletions,
//! substitutions and transpositions of adjacent characters), with early exit past the bound.

/// Reusable rows, so that ranking 100k candidates does not allocate per comparison.
#[derive(Default)]
pub(crate) struct Scratch {
    rows: [Vec<usize>; 3],
}

/// The distance between `a` and `b` if it is at most `max`, else `None`.
pub(crate) fn within(a: &[char], b: &[char], max: usize, scratch: &mut Scratch) -> Option<usize> {
    if a.len().abs_diff(b.len()) > max {
        return None;
    }
    if a.is_empty() || b.is_empty() {
        return Some(a.len().max(b.len()));
    }
    if a == b {
        return Some(0);
    }
    let width = b.len() + 1;
    let [two_back, prev, cur] = &mut scratch.rows;
    for row in [&mut *two_back, &mut *prev, &mut *cur] {
        row.clear();
        row.resize(width, 0);
    }
    for (j, cell) in prev.iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        cur[0] = i;
        let mut row_min = i;
        for j in 1..width {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(two_back[j - 2] + 1);
            }
            cur[j] = d;
            row_min = row_min.min(d);
        }
        if row_min > max {
            return None;
        }
        std::mem::swap(two_back, prev);
        std::mem::swap(prev, cur);
    }
    let d = prev[b.len()];
    (d <= max).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(a: &str, b: &str, max: usize) -> Option<usize> {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        within(&a, &b, max, &mut Scratch::default())
    }

    #[test]
    fn counts_edits_and_transpositions() {
        assert_eq!(d("alice", "alice", 2), Some(0));
        assert_eq!(d("alcie", "alice", 1), Some(1));
        assert_eq!(d("alce", "alice", 1), Some(1));
        assert_eq!(d("allice", "alice", 1), Some(1));
        assert_eq!(d("alixe", "alice", 1), Some(1));
        assert_eq!(d("kitten", "sitting", 3), Some(3));
        assert_eq!(d("", "ab", 2), Some(2));
        assert_eq!(d("ca", "abc", 3), Some(3));
    }

    #[test]
    fn stops_past_the_bound() {
        assert_eq!(d("kitten", "sitting", 2), None);
        assert_eq!(d("bob", "alice", 2), None);
        assert_eq!(d("a", "abcd", 2), None);
        assert_eq!(d("北京", "北平", 1), Some(1));
    }
}
