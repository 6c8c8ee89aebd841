//! Pure score functions: tensors in, numbers out.

/// Ranks (0 = lowest) of `v`, ties broken by index so the result is deterministic.
pub fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].partial_cmp(&v[b]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    let mut r = vec![0.0; v.len()];
    for (rank, &i) in idx.iter().enumerate() {
        r[i] = rank as f64;
    }
    r
}

/// Rank-sum combination of several score vectors (scale-free): higher = more important.
pub fn rank_sum(signals: &[&[f64]]) -> Vec<f64> {
    let n = signals.first().map(|s| s.len()).unwrap_or(0);
    let mut out = vec![0.0; n];
    for s in signals {
        for (o, r) in out.iter_mut().zip(ranks(s)) {
            *o += r;
        }
    }
    out
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(v: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].partial_cmp(&v[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// First index of the maximum (strict `>`, as EasyEdit's loop).
pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// `v / sum(v)` (all zeros stay zeros).
pub fn normalized(v: &[f64]) -> Vec<f64> {
    let s: f64 = v.iter().sum();
    if s > 0.0 {
        v.iter().map(|x| x / s).collect()
    } else {
        v.to_vec()
    }
}

/// Jaccard overlap of two index sets.
pub fn jaccard(a: &[usize], b: &[usize]) -> f64 {
    let sa: std::collections::HashSet<_> = a.iter().collect();
    let sb: std::collections::HashSet<_> = b.iter().collect();
    let inter = sa.intersection(&sb).count() as f64;
    let uni = sa.union(&sb).count() as f64;
    if uni == 0.0 {
        1.0
    } else {
        inter / uni
    }
}

/// (top1 - top2) / top1 of a profile: how decisive an argmax is.
pub fn relative_gap(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
    if s.len() < 2 || s[0] == 0.0 {
        return 0.0;
    }
    (s[0] - s[1]) / s[0].abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert_eq!(ranks(&[3.0, 1.0, 2.0]), vec![2.0, 0.0, 1.0]);
        assert_eq!(rank_sum(&[&[3.0, 1.0, 2.0], &[0.0, 5.0, 1.0]]), vec![2.0, 2.0, 2.0]);
        assert_eq!(top_k(&[0.1, 0.9, 0.5, 0.9], 3), vec![1, 3, 2]);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(normalized(&[1.0, 3.0]), vec![0.25, 0.75]);
        assert!((jaccard(&[1, 2, 3], &[2, 3, 4]) - 0.5).abs() < 1e-12);
        assert!((relative_gap(&[4.0, 1.0, 3.0]) - 0.25).abs() < 1e-12);
    }
}
