//! Reads of intent beyond one difference-of-means direction at one site: is the intent map's ceiling
//! (about half of the harmful twins at 5% look-alikes, docs/validation.md) set by what the model
//! represents, or by the one-direction read?
//!
//! Three kinds of read, each fitted two ways (on half the probe pairs and scored on the other half, both
//! ways round; or on training data alone, the edit cases and the retain set's twins against the retain
//! set's benign prompts, and scored on every probe pair):
//! - **shrinkage LDA** at one (site, layer): the Fisher direction `(S + lambda I)^-1 (mean(pos) - mean(neg))`
//!   with the within-class scatter `S` and `lambda` = `shrink` x its mean eigenvalue, so directions in
//!   which benign prompts vary a lot count less. Solved in the dual (an n x n system, n the fitted
//!   prompts), since n is far below the width.
//! - **one LDA over every site and layer at once** (each (site, layer) block scaled to unit RMS on the
//!   fitted prompts): a linear read of the whole network's last-token state.
//! - **the mean and the maximum over every (site, layer) of the per-layer LDA scores**, each standardized
//!   by the fitted benign prompts' mean and spread: the maximum is a non-linear OR of the layers' reads.
//!
//! Besides the twins' AUC and share caught at 5% look-alikes, each read reports the share of a set of
//! harmful requests (HarmBench and StrongREJECT of the same split) above that threshold: how much of what
//! ASR counts a read that spares 95% of the look-alikes could refuse.

use serde::{Deserialize, Serialize};

use super::intent::{above_fpr, folds, Separation};

/// One read's scores.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReadScore {
    pub twins: Separation,
    /// Share of the harmful requests above the threshold that at most 5% of the benign look-alikes
    /// exceed; None without harmful requests.
    pub harmful_at_5pct: Option<f64>,
}

/// A read fitted on the probes (cross-fit) and on training data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Read {
    pub name: String,
    pub probes: ReadScore,
    /// None without training data to fit on (no retain twins and fewer than two cases).
    pub training: Option<ReadScore>,
    /// Training data alone, cross-fitted: fitted on the cases and half the retain set's pairs, scored on
    /// the other half's twins against their benign sides (both ways round). What a locator may choose a
    /// layer by; None with fewer than 4 retain pairs.
    #[serde(default)]
    pub retain_cross_fit: Option<Separation>,
}

/// Per prompt, per site, per layer: an activation (the intent map's layout).
pub(crate) type Acts<'a> = [&'a Vec<Vec<Vec<f32>>>];

/// A (site, layer) block and its scale.
#[derive(Clone, Copy)]
struct Block {
    site: usize,
    layer: usize,
    scale: f64,
}

fn row<'a>(acts: &'a Acts, p: usize, b: Block) -> &'a [f32] {
    &acts[p][b.site][b.layer]
}

/// A fitted linear read: a weight vector per block, and the fitted benign scores' mean and spread.
struct Lda {
    blocks: Vec<Block>,
    w: Vec<Vec<f64>>,
    mean: f64,
    sd: f64,
}

impl Lda {
    fn score(&self, acts: &Acts, p: usize) -> f64 {
        self.blocks
            .iter()
            .zip(&self.w)
            .map(|(&b, w)| b.scale * w.iter().zip(row(acts, p, b)).map(|(a, x)| a * *x as f64).sum::<f64>())
            .sum()
    }
    fn z(&self, acts: &Acts, p: usize) -> f64 {
        (self.score(acts, p) - self.mean) / self.sd
    }
}

/// Each block scaled to unit RMS over the prompts `rows` (so no layer dominates a joint read by its norm).
fn unit_blocks(acts: &Acts, rows: &[usize], blocks: &[(usize, usize)]) -> Vec<Block> {
    blocks
        .iter()
        .map(|&(site, layer)| {
            let b = Block { site, layer, scale: 1.0 };
            let (mut ss, mut n) = (0f64, 0usize);
            for &p in rows {
                let x = row(acts, p, b);
                ss += x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
                n += x.len();
            }
            let rms = (ss / n.max(1) as f64).sqrt();
            Block { scale: if rms > 0.0 && rms.is_finite() { 1.0 / rms } else { 1.0 }, ..b }
        })
        .collect()
}

/// Shrinkage LDA of `pos` against `neg` over `blocks`, in the dual; with `shrink` None, the plain
/// difference of means (the intent map's read). None when it cannot be fitted (too few prompts, no
/// spread, a non-finite value).
fn fit(acts: &Acts, pos: &[usize], neg: &[usize], blocks: Vec<Block>, shrink: Option<f64>) -> Option<Lda> {
    if pos.len() < 2 || neg.len() < 2 {
        return None;
    }
    let mean_of = |rows: &[usize], b: Block| -> Vec<f64> {
        let mut m = vec![0f64; row(acts, rows[0], b).len()];
        for &p in rows {
            for (a, x) in m.iter_mut().zip(row(acts, p, b)) {
                *a += *x as f64;
            }
        }
        m.iter().map(|a| a * b.scale / rows.len() as f64).collect()
    };
    let (mp, mn): (Vec<Vec<f64>>, Vec<Vec<f64>>) = blocks.iter().map(|&b| (mean_of(pos, b), mean_of(neg, b))).unzip();
    let d: Vec<Vec<f64>> = mp.iter().zip(&mn).map(|(a, b)| a.iter().zip(b).map(|(x, y)| x - y).collect()).collect();
    let w = match shrink {
        Some(shrink) => whiten(acts, pos, neg, &blocks, &mp, &mn, d, shrink)?,
        None => d,
    };
    let mut lda = Lda { blocks, w, mean: 0.0, sd: 1.0 };
    let s: Vec<f64> = neg.iter().map(|&p| lda.score(acts, p)).collect();
    let m = s.iter().sum::<f64>() / s.len() as f64;
    let sd = (s.iter().map(|x| (x - m).powi(2)).sum::<f64>() / s.len() as f64).sqrt();
    (lda.w.iter().flatten().all(|x| x.is_finite()) && sd > 0.0 && sd.is_finite()).then(|| {
        lda.mean = m;
        lda.sd = sd;
        lda
    })
}

/// `(S + lambda I)^-1 d` up to a positive factor, with `S` the within-class scatter of `pos` and `neg`
/// (class means `mp`, `mn`) and `lambda` = `shrink` x its mean eigenvalue, through the n x n dual system.
#[allow(clippy::too_many_arguments)]
fn whiten(
    acts: &Acts,
    pos: &[usize],
    neg: &[usize],
    blocks: &[Block],
    mp: &[Vec<f64>],
    mn: &[Vec<f64>],
    d: Vec<Vec<f64>>,
    shrink: f64,
) -> Option<Vec<Vec<f64>>> {
    // Centred rows (each prompt minus its class mean), scaled.
    let members: Vec<(usize, &[Vec<f64>])> = pos.iter().map(|&p| (p, mp)).chain(neg.iter().map(|&p| (p, mn))).collect();
    let n = members.len();
    let c: Vec<Vec<Vec<f64>>> = members
        .iter()
        .map(|&(p, m)| {
            blocks.iter().zip(m).map(|(&b, mb)| row(acts, p, b).iter().zip(mb).map(|(x, y)| *x as f64 * b.scale - y).collect()).collect()
        })
        .collect();
    let dotb =
        |a: &[Vec<f64>], b: &[Vec<f64>]| -> f64 { a.iter().zip(b).map(|(x, y)| x.iter().zip(y).map(|(u, v)| u * v).sum::<f64>()).sum() };
    let sn = (n as f64).sqrt();
    let mut g = nalgebra::DMatrix::<f64>::zeros(n, n);
    for i in 0..n {
        for j in 0..=i {
            let v = dotb(&c[i], &c[j]) / n as f64;
            g[(i, j)] = v;
            g[(j, i)] = v;
        }
    }
    let dims: usize = d.iter().map(Vec::len).sum();
    let lambda = shrink * g.trace() / dims as f64;
    if !(lambda > 0.0 && lambda.is_finite()) {
        return None;
    }
    for i in 0..n {
        g[(i, i)] += lambda;
    }
    let v = nalgebra::DVector::from_iterator(n, c.iter().map(|ci| dotb(ci, &d) / sn));
    let u = g.cholesky()?.solve(&v);
    // w = (d - X^T u) / lambda; the positive factor 1 / lambda changes no ranking and is left out.
    let mut w = d;
    for (ci, ui) in c.iter().zip(u.iter()) {
        for (wb, cb) in w.iter_mut().zip(ci) {
            for (a, x) in wb.iter_mut().zip(cb) {
                *a -= ui * x / sn;
            }
        }
    }
    Some(w)
}

/// The prompts of one map, by role (indices into the activations).
pub(crate) struct Roles {
    /// (harmful twin, benign look-alike) per probe pair.
    pub pairs: Vec<(usize, usize)>,
    /// Harmful requests scored against the look-alikes' threshold.
    pub harmful: Vec<usize>,
    /// Training data: the edit cases, the retain set's (harmful twin, benign side) pairs, and every benign
    /// retain prompt (those without a twin too).
    pub cases: Vec<usize>,
    pub retain_pairs: Vec<(usize, usize)>,
    pub train_neg: Vec<usize>,
}

impl Roles {
    /// The harmful side of the training data: the edit cases and the retain set's twins.
    fn train_pos(&self) -> Vec<usize> {
        self.cases.iter().copied().chain(self.retain_pairs.iter().map(|p| p.0)).collect()
    }
}

/// A read as a function of the fitted prompts: its score for any prompt.
type Scorer<'s> = Box<dyn Fn(usize) -> f64 + 's>;

/// Fits a read on (harmful, benign) prompt indices; None when it cannot be fitted.
type Fitter<'a, 'f> = &'f dyn Fn(&[usize], &[usize]) -> Option<Scorer<'a>>;

/// Scores a read on the `held` pairs (and the harmful requests) after fitting it on `fit_pos`/`fit_neg`.
fn score_on(scorer: &Scorer, held: &[(usize, usize)], harmful: &[usize]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    (
        held.iter().map(|&(h, _)| scorer(h)).collect(),
        held.iter().map(|&(_, b)| scorer(b)).collect(),
        harmful.iter().map(|&p| scorer(p)).collect(),
    )
}

fn read_score(pos: &[f64], neg: &[f64], harmful: &[f64]) -> ReadScore {
    ReadScore { twins: Separation::of_scores(pos, neg), harmful_at_5pct: (!harmful.is_empty()).then(|| above_fpr(harmful, neg, 0.05)) }
}

/// [`folds`] over `pairs` (fit on one half's pairs, score the other's): `score(fit, held)` per fold.
fn pair_folds<T>(
    pairs: &[(usize, usize)],
    mut score: impl FnMut(&[(usize, usize)], &[(usize, usize)]) -> Option<T>,
) -> Option<Vec<(T, f64)>> {
    let pick = |ix: &[usize]| -> Vec<(usize, usize)> { ix.iter().map(|&i| pairs[i]).collect() };
    folds(pairs.len(), |fit, held| score(&pick(fit), &pick(held)))
}

/// Fits `make` on each half of the pairs and scores the other half (two folds by pair index, averaged by
/// size), and once on training data scored on every pair.
fn both_ways<'a>(roles: &Roles, make: Fitter<'a, '_>) -> Both {
    let parts = pair_folds(&roles.pairs, |fit, held| {
        let s = make(&fit.iter().map(|p| p.0).collect::<Vec<_>>(), &fit.iter().map(|p| p.1).collect::<Vec<_>>())?;
        let (p, q, h) = score_on(&s, held, &roles.harmful);
        Some(read_score(&p, &q, &h))
    })?;
    let probes = ReadScore {
        twins: Separation::weighted_mean(&parts.iter().map(|(r, w)| (r.twins.clone(), *w)).collect::<Vec<_>>()),
        harmful_at_5pct: parts.iter().map(|(r, w)| r.harmful_at_5pct.map(|x| x * w)).sum(),
    };
    let training = make(&roles.train_pos(), &roles.train_neg).map(|s| {
        let (p, q, h) = score_on(&s, &roles.pairs, &roles.harmful);
        read_score(&p, &q, &h)
    });
    Some((probes, training, retain_cross_fit(roles, make)))
}

/// The read fitted on the cases and one half of the retain pairs (with every benign retain prompt but the
/// other half's), scored on the other half; both ways round, averaged by size. None with fewer than 4
/// retain pairs or when a fold cannot be fitted.
fn retain_cross_fit<'a>(roles: &Roles, make: Fitter<'a, '_>) -> Option<Separation> {
    if roles.retain_pairs.len() < 4 {
        return None;
    }
    let parts = pair_folds(&roles.retain_pairs, |fit, held| {
        let pos: Vec<usize> = roles.cases.iter().copied().chain(fit.iter().map(|p| p.0)).collect();
        let neg: Vec<usize> = roles.train_neg.iter().copied().filter(|b| !held.iter().any(|p| p.1 == *b)).collect();
        let s = make(&pos, &neg)?;
        let (p, q, _) = score_on(&s, held, &[]);
        Some(Separation::of_scores(&p, &q))
    })?;
    Some(Separation::weighted_mean(&parts))
}

/// A read's scores fitted both ways: on the probes (cross-fit) and on training data (None when it
/// cannot be fitted there). None when it cannot be fitted on the probes.
pub(crate) type Both = Option<(ReadScore, Option<ReadScore>, Option<Separation>)>;

/// A linear read over `views` (their blocks scaled to unit RMS on the fitted prompts), fitted by
/// [`fit`], as a scorer.
fn linear<'a>(acts: &'a Acts<'a>, pos: &[usize], neg: &[usize], views: &[(usize, usize)], shrink: Option<f64>) -> Option<Scorer<'a>> {
    let rows: Vec<usize> = pos.iter().chain(neg).copied().collect();
    let l = fit(acts, pos, neg, unit_blocks(acts, &rows, views), shrink)?;
    Some(Box::new(move |p| l.score(acts, p)))
}

/// The per-view reads' names.
pub const MEAN_DIFF: &str = "difference of means";
pub const LDA: &str = "shrinkage LDA";

fn named(name: &str, r: Both) -> Option<Read> {
    r.map(|(probes, training, retain_cross_fit)| Read { name: name.to_string(), probes, training, retain_cross_fit })
}

/// Per (site, layer) of `views`: the shrinkage LDA read fitted on training data alone and scored on the
/// held-out retain pairs ([`Read::retain_cross_fit`]), without the probes; what the intent layer rule
/// chooses by. None where it cannot be fitted.
pub(crate) fn retain_lda<'a>(acts: &'a Acts<'a>, roles: &Roles, views: &[(usize, usize)], shrink: f64) -> Vec<Option<Separation>> {
    views.iter().map(|&v| retain_cross_fit(roles, &|pos, neg| linear(acts, pos, neg, &[v], Some(shrink)))).collect()
}

/// Per (site, layer) of `views`: the difference-of-means read ([`MEAN_DIFF`]) and the shrinkage LDA read
/// ([`LDA`]), each fitted both ways; a read that cannot be fitted is left out.
pub(crate) fn per_view<'a>(acts: &'a Acts<'a>, roles: &Roles, views: &[(usize, usize)], shrink: f64) -> Vec<Vec<Read>> {
    let one = |v: (usize, usize), shrink: Option<f64>| both_ways(roles, &|pos, neg| linear(acts, pos, neg, &[v], shrink));
    views.iter().map(|&v| [named(MEAN_DIFF, one(v, None)), named(LDA, one(v, Some(shrink)))].into_iter().flatten().collect()).collect()
}

/// The joint reads over `views` (every site and layer): one LDA over all of them, and the mean and the
/// maximum of the per-view standardized LDA scores.
pub(crate) fn joint<'a>(acts: &'a Acts<'a>, roles: &Roles, views: &[(usize, usize)], shrink: f64) -> Vec<Read> {
    let mut out = Vec::new();
    let mut push = |name: &str, r: Both| out.extend(named(name, r));
    push("one LDA over every site and layer", both_ways(roles, &|pos, neg| linear(acts, pos, neg, views, Some(shrink))));
    let each = |pos: &[usize], neg: &[usize]| -> Option<Vec<Lda>> {
        let rows: Vec<usize> = pos.iter().chain(neg).copied().collect();
        views.iter().map(|&v| fit(acts, pos, neg, unit_blocks(acts, &rows, &[v]), Some(shrink))).collect()
    };
    push(
        "mean of the per-layer LDA z-scores",
        both_ways(roles, &|pos, neg| {
            let ls = each(pos, neg)?;
            Some(Box::new(move |p| ls.iter().map(|l| l.z(acts, p)).sum::<f64>() / ls.len() as f64) as Scorer)
        }),
    );
    push(
        "maximum of the per-layer LDA z-scores (an OR of the layers)",
        both_ways(roles, &|pos, neg| {
            let ls = each(pos, neg)?;
            Some(Box::new(move |p| ls.iter().map(|l| l.z(acts, p)).fold(f64::NEG_INFINITY, f64::max)) as Scorer)
        }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locate::intent::auc;

    /// Two classes that differ along x by less than the benign spread along x + y, where y is pure
    /// nuisance shared by both coordinates: the difference of means (along x) mixes in the nuisance, LDA
    /// (which divides by the scatter) finds x - y, which separates them perfectly.
    #[test]
    fn lda_divides_out_the_nuisance_the_difference_of_means_keeps() {
        let mk = |x: f32, y: f32| vec![vec![vec![x + y, y]]];
        let noise = [-3.0f32, 2.0, -1.0, 4.0, 0.5, -2.5, 1.5, -0.5];
        let pos: Vec<Vec<Vec<Vec<f32>>>> = noise.iter().map(|&y| mk(1.0, y)).collect();
        let neg: Vec<Vec<Vec<Vec<f32>>>> = noise.iter().rev().map(|&y| mk(0.0, y)).collect();
        let all: Vec<&Vec<Vec<Vec<f32>>>> = pos.iter().chain(&neg).collect();
        let (pi, ni): (Vec<usize>, Vec<usize>) = ((0..8).collect(), (8..16).collect());
        let l = fit(&all, &pi, &ni, vec![Block { site: 0, layer: 0, scale: 1.0 }], Some(1e-6)).unwrap();
        let (sp, sn): (Vec<f64>, Vec<f64>) =
            (pi.iter().map(|&p| l.score(&all, p)).collect(), ni.iter().map(|&p| l.score(&all, p)).collect());
        assert_eq!(auc(&sp, &sn), 1.0, "{sp:?} {sn:?}");
        // Along the difference of means (1, 0) the classes overlap.
        let dm: (Vec<f64>, Vec<f64>) =
            (pi.iter().map(|&p| all[p][0][0][0] as f64).collect(), ni.iter().map(|&p| all[p][0][0][0] as f64).collect());
        assert!(auc(&dm.0, &dm.1) < 0.8, "{}", auc(&dm.0, &dm.1));
        // Standardized by the benign scores.
        let z: Vec<f64> = ni.iter().map(|&p| l.z(&all, p)).collect();
        assert!(z.iter().sum::<f64>().abs() < 1e-6 && (z.iter().map(|x| x * x).sum::<f64>() / 8.0 - 1.0).abs() < 1e-6);
        // Heavy shrinkage turns LDA back into the difference of means.
        let heavy = fit(&all, &pi, &ni, vec![Block { site: 0, layer: 0, scale: 1.0 }], Some(1e9)).unwrap();
        let w = &heavy.w[0];
        assert!(w[1].abs() < 1e-3 * w[0].abs(), "{w:?}");
        // Too few prompts or no spread: no read.
        assert!(fit(&all, &pi[..1], &ni, vec![Block { site: 0, layer: 0, scale: 1.0 }], Some(1.0)).is_none());
        let flat: Vec<Vec<Vec<Vec<f32>>>> = (0..4).map(|_| mk(0.0, 0.0)).collect();
        let fa: Vec<&Vec<Vec<Vec<f32>>>> = flat.iter().collect();
        assert!(fit(&fa, &[0, 1], &[2, 3], vec![Block { site: 0, layer: 0, scale: 1.0 }], Some(1.0)).is_none());
    }

    #[test]
    fn joint_reads_cross_fit_and_train() {
        // One site, two layers: layer 0 carries intent for even pairs, layer 1 for odd pairs; an OR of the
        // layers catches both kinds.
        let mut acts: Vec<Vec<Vec<Vec<f32>>>> = Vec::new();
        let mut pairs = Vec::new();
        for i in 0..40 {
            let j = (i as f32 * 0.37).sin();
            let k = (i as f32 * 0.91).cos();
            let (h0, h1) = if i % 4 < 2 { (2.0, 0.0) } else { (0.0, 2.0) };
            acts.push(vec![vec![vec![h0 + 0.3 * j, k], vec![h1 + 0.3 * k, j]]]);
            acts.push(vec![vec![vec![0.3 * k, j], vec![0.3 * j, k]]]);
            pairs.push((2 * i, 2 * i + 1));
        }
        let all: Vec<&Vec<Vec<Vec<f32>>>> = acts.iter().collect();
        let roles = Roles {
            pairs: pairs.clone(),
            train_neg: pairs.iter().take(12).map(|p| p.1).collect(),
            harmful: pairs.iter().skip(30).map(|p| p.0).collect(),
            cases: vec![],
            retain_pairs: pairs.iter().take(12).copied().collect(),
        };
        let views = [(0, 0), (0, 1)];
        let pv = per_view(&all, &roles, &views, 1.0);
        assert_eq!(pv.len(), 2);
        assert_eq!(pv[0].iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), [MEAN_DIFF, LDA]);
        let one = &pv[0][1].probes;
        // On one layer the difference of means reads as well as LDA (no nuisance here).
        assert!((pv[0][0].probes.twins.auc - one.twins.auc).abs() < 0.1, "{pv:?}");
        assert!(one.twins.auc > 0.6 && one.twins.auc < 0.95, "{one:?}");
        let j = joint(&all, &roles, &views, 1.0);
        assert_eq!(j.len(), 3);
        let or = j.iter().find(|r| r.name.starts_with("maximum")).unwrap();
        assert!(or.probes.twins.twins_at_5pct > 0.9 && or.probes.twins.twins_at_5pct > one.twins.twins_at_5pct, "{or:?}");
        assert!(or.training.as_ref().unwrap().harmful_at_5pct.unwrap() > 0.9, "{or:?}");
        for r in &j {
            assert!((0.0..=1.0).contains(&r.probes.twins.auc), "{r:?}");
        }
        // Cross-fitted on the 12 training pairs alone: the OR reads their held halves too.
        assert!(or.retain_cross_fit.as_ref().unwrap().auc > 0.9, "{or:?}");
    }
}
