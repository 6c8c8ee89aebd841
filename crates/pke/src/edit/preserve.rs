//! Null-space edits (`preserve_energy`): the change to each edited `down_proj` is kept orthogonal to what
//! benign inputs feed it, so their outputs at that layer stay as they were by construction, not by a
//! penalty (AlphaEdit, Fang et al. 2025, restricted to the hotspot columns).
//!
//! A `down_proj` column j is multiplied by neuron j's activation ("key"). For the edited columns C, the
//! benign keys k_C (every position of the retain set's benign prompts with the original model's reply,
//! and of the cases' locality pairs) give a second-moment matrix S = mean k_C k_C^T. Its top
//! eigen-directions holding `preserve_energy` of the trace (chosen in per-neuron standardized units) are
//! protected, and so is the first position's key (the attention sink); the edit trains coordinates in an
//! orthonormal basis of the remaining directions, so its change D = W[:, C] - W0[:, C] satisfies D = D P
//! and D k = D P k is small for any benign key. A harmful prompt's keys change the output only through
//! directions the benign inputs barely use: the edit has to find what separates the two, where a soft
//! retain penalty tends to shrink the whole edit instead.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::decoder::index_tensor;
use crate::model::Decoder;
use crate::trace::{Capture, Site};
use crate::{Error, Result};

/// The projector of one edited `down_proj` and what it leaves free.
#[derive(Debug)]
pub struct Projector {
    pub name: String,
    /// The edited columns, as u32 indices.
    idx: Tensor,
    /// (|C|, free dims): an orthonormal basis of the free directions.
    pub basis: Tensor,
    /// (1, free dims) with [`whiten`]: the step's scale along each basis direction (none: 1 everywhere).
    weights: Option<Tensor>,
    pub summary: PreserveSummary,
}

/// What a projector protects, for the delta's metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreserveSummary {
    pub layer: usize,
    pub columns: usize,
    /// Benign key positions the second moment was taken over.
    pub positions: usize,
    /// Directions left free (the edit may use them).
    pub free_dims: usize,
    /// Share of the benign keys' energy in the free directions.
    pub benign_energy_free: f64,
    /// The same for the benign prompts' keys at their last token only.
    pub benign_last_free: f64,
    /// The same for the harmful cases' keys at their last prompt token: how much of them the edit can
    /// still act on. Near `benign_last_free`: the two are not separable in these neurons.
    pub harmful_last_free: f64,
    /// With `preserve_whiten`: how the whitened step weighs the free directions.
    #[serde(default)]
    pub whitened: Option<Whitened>,
}

/// What [`whiten`] did to one projector's free directions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Whitened {
    /// `preserve_whiten`: the benign variance, in units of its mean over the free directions, at which a
    /// direction's step is halved.
    pub shrink: f64,
    /// `whiten_last`: the moment is the last prompt token's within-class scatter, not every position's keys.
    #[serde(default)]
    pub last: bool,
    /// Key rows of the whitening moment (every position of the null space's benign sequences and
    /// `whiten_text`'s prose; with `last`, the benign prompts and the cases).
    pub positions: usize,
    /// Sum of the step weights (the free directions' count when nothing is damped).
    pub weight_sum: f64,
    /// Share of the benign prompts' last-token key energy the weighted step reaches: ||K B diag(w)||^2 / ||K||^2.
    pub benign_last: f64,
    /// The same for the harmful cases' last prompt tokens.
    pub harmful_last: f64,
}

/// Below this separation a null-space edit has measured narrow: 48 requests of six kinds at 1.6x learned
/// their replies and barely refused (SmolLM2); the edits that refused held-out requests stood 3x (Qwen, 4
/// AdvBench cases) and 5x (SmolLM2, 8) apart.
pub const LOW_SEPARATION: f64 = 2.0;

impl PreserveSummary {
    /// How much more of the harmful cases' last-prompt-token key energy than of the benign prompts' the
    /// free directions hold (None without benign last tokens). Near 1: in these neurons the cases look
    /// like the benign prompts, so the edit can refuse them only narrowly (what the cases share beyond
    /// harm) or by moving the benign prompts too. On SmolLM2's layer 11: 5.0 for the 8 AdvBench cases,
    /// whose edit refuses held-out requests; 1.6 for 48 requests of six kinds of harm, whose edit barely
    /// does (docs/validation.md, "Why the precise edit is narrow").
    pub fn separation(&self) -> Option<f64> {
        (self.benign_last_free > 0.0).then(|| self.harmful_last_free / self.benign_last_free)
    }

    /// One line for people: layer, free directions, the two shares and their ratio, with a warning below
    /// [`LOW_SEPARATION`].
    pub fn describe(&self) -> String {
        let sep = match self.separation() {
            Some(r) if r < LOW_SEPARATION => format!(
                " (separation {r:.1}x: low; the edits measured below {LOW_SEPARATION}x learned their cases' replies without refusing more, docs/validation.md \"Why the precise edit is narrow\")"
            ),
            Some(r) => format!(" (separation {r:.1}x)"),
            None => String::new(),
        };
        let white = match &self.whitened {
            Some(w) => format!(
                "; whitened (preserve_whiten {}, {} {}): step weights sum to {:.0}, reaching {:.2}% of the cases' and {:.2}% of the benign prompts' last-token energy{}",
                w.shrink,
                w.positions,
                if w.last { "last prompt tokens' scatter" } else { "key positions" },
                w.weight_sum,
                100.0 * w.harmful_last,
                100.0 * w.benign_last,
                if w.benign_last > 0.0 { format!(" (separation {:.1}x)", w.harmful_last / w.benign_last) } else { String::new() }
            ),
            None => String::new(),
        };
        format!(
            "null space at layer {}: {} of {} directions free; they hold {:.1}% of the cases' last-prompt-token key energy and {:.1}% of the benign prompts'{sep}{white}",
            self.layer,
            self.free_dims,
            self.columns,
            100.0 * self.harmful_last_free,
            100.0 * self.benign_last_free,
        )
    }
}

impl Projector {
    /// A full-weight gradient in the free basis's coordinates: G_C basis, (rows, free dims).
    pub fn coordinates(&self, g: &Tensor) -> Result<Tensor> {
        self.column_coordinates(&g.index_select(&self.idx, 1)?)
    }

    /// As [`Projector::coordinates`] for a gradient of the edited columns alone (d, |C|).
    pub fn column_coordinates(&self, g: &Tensor) -> Result<Tensor> {
        Ok(g.matmul(&self.basis)?)
    }

    /// `w` moved by `-lr * u basis^T` in the edited columns (`u` in free-basis coordinates).
    pub fn step(&self, w: &Tensor, u: &Tensor, lr: f64) -> Result<Tensor> {
        Ok(w.index_add(&self.idx, &self.column_step(u, lr)?, 1)?)
    }

    /// The change `-lr * u basis^T` to the edited columns (d, |C|); whitened, `-lr * (u diag(w)) basis^T`.
    pub fn column_step(&self, u: &Tensor, lr: f64) -> Result<Tensor> {
        let u = match &self.weights {
            Some(w) => u.broadcast_mul(w)?,
            None => u.clone(),
        };
        Ok((u.matmul(&self.basis.t()?)? * -lr)?)
    }
}

/// Per target (layer, edited columns) and per sequence, the keys (positions, |cols|) of that layer's MLP,
/// from one forward pass per sequence.
pub(crate) fn keys(model: &Decoder, seqs: &[Vec<u32>], targets: &[(usize, Tensor)]) -> Result<Vec<Vec<Tensor>>> {
    let mut out: Vec<Vec<Tensor>> = targets.iter().map(|_| Vec::with_capacity(seqs.len())).collect();
    let stop = targets.iter().map(|(l, _)| *l).max();
    for ids in seqs {
        let mut cap = Capture::new(targets.iter().map(|(l, _)| Site::MlpAct(*l)));
        cap.stop = stop;
        model.forward_with(&crate::model::Input::single(ids), &mut cap, None)?;
        for ((layer, cols), o) in targets.iter().zip(out.iter_mut()) {
            let k = cap.get(Site::MlpAct(*layer)).expect("captured").squeeze(0)?;
            o.push(k.index_select(cols, 1)?.to_dtype(DType::F32)?);
        }
    }
    Ok(out)
}

/// One target's benign keys (one tensor per sequence) split at the attention sink: every position after
/// the first, stacked; the mean first-position key; and the number of positions in all. An error naming
/// `what` when every sequence is a single token.
fn split_sink(kb: &[Tensor], what: &str) -> Result<(Tensor, Vec<f64>, usize)> {
    let rest: Vec<Tensor> =
        kb.iter().filter(|k| k.dim(0).is_ok_and(|n| n > 1)).map(|k| k.narrow(0, 1, k.dim(0)? - 1)).collect::<candle_core::Result<_>>()?;
    if rest.is_empty() {
        return Err(Error::Input(format!("{what}: every benign sequence is a single token")));
    }
    let rest = Tensor::cat(&rest, 0)?;
    let sink = Tensor::cat(&kb.iter().map(|k| k.narrow(0, 0, 1)).collect::<candle_core::Result<Vec<_>>>()?, 0)?;
    let positions = rest.dim(0)? + sink.dim(0)?;
    let sink = (sink.sum(0)? / sink.dim(0)? as f64)?.to_vec1::<f32>()?.into_iter().map(f64::from).collect();
    Ok((rest, sink, positions))
}

/// The key row at each benign sequence's last prompt token, for the sequences whose prompt length is known.
fn prompt_last_rows(kb: &[Tensor], benign: &[(Vec<u32>, Option<usize>)]) -> Result<Vec<Tensor>> {
    Ok(kb.iter().zip(benign).filter_map(|(k, (_, n))| n.map(|n| k.narrow(0, n - 1, 1))).collect::<candle_core::Result<_>>()?)
}

/// The last key row of each sequence (the harmful prompts are prompt ids alone).
fn last_rows(kh: &[Tensor]) -> Result<Vec<Tensor>> {
    Ok(kh.iter().map(|k| k.narrow(0, k.dim(0)? - 1, 1)).collect::<candle_core::Result<_>>()?)
}

/// The second moment K^T K / n as a row-major f64 matrix.
fn second_moment(k: &Tensor) -> Result<(Vec<f64>, usize)> {
    let n = k.dim(0)?;
    let c = k.dim(1)?;
    let s = (k.t()?.matmul(k)? / n as f64)?;
    Ok((s.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect(), c))
}

/// The null space of the benign keys' second moment S (row-major, c x c). The directions to protect are
/// chosen on the per-neuron standardized S (z = k / rms(k_j)): a few neurons with activations orders of
/// magnitude above the rest would otherwise hold nearly all the energy and leave every other direction
/// "free". The projector itself is orthogonal in the neurons' own units (protected key directions
/// k = R z, R = diag(rms)), so a projected change is never larger than the change itself.
pub struct NullSpace {
    c: usize,
    /// Projector onto the free directions (symmetric, idempotent).
    p: Vec<f64>,
    pub free_dims: usize,
}

impl NullSpace {
    /// Protect the top eigen-directions of the standardized S that hold `energy` of its trace, and the
    /// key directions in `always` (each of length c; the attention sink's).
    pub fn new(s: &[f64], c: usize, energy: f64, always: &[Vec<f64>]) -> Result<Self> {
        if !(0.0..1.0).contains(&energy) || s.len() != c * c {
            return Err(Error::Input(format!("preserve_energy must be in [0, 1), got {energy}")));
        }
        let scale = (0..c).map(|i| s[i * c + i]).sum::<f64>() / c as f64;
        if !(scale > 0.0 && scale.is_finite()) {
            return Err(Error::Input("preserve_energy: the benign keys are all zero or not finite in the edited columns".into()));
        }
        // A neuron that never fires on benign inputs gets a floor, so its standardized entries stay finite.
        let rms: Vec<f64> = (0..c).map(|i| s[i * c + i].max(1e-6 * scale).sqrt()).collect();
        let m = nalgebra::DMatrix::from_fn(c, c, |a, b| s[a * c + b] / (rms[a] * rms[b]));
        let eig = nalgebra::SymmetricEigen::new(m);
        let mut order: Vec<usize> = (0..c).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        let total: f64 = eig.eigenvalues.iter().map(|x| x.max(0.0)).sum();
        let mut acc = 0.0;
        let mut protected = 0;
        for &i in &order {
            if acc >= energy * total {
                break;
            }
            acc += eig.eigenvalues[i].max(0.0);
            protected += 1;
        }
        let mut p = vec![0f64; c * c];
        for i in 0..c {
            p[i * c + i] = 1.0;
        }
        let always: Vec<&Vec<f64>> = always.iter().filter(|k| k.len() == c && k.iter().any(|x| *x != 0.0)).collect();
        let n = (protected + always.len()).min(c);
        if n > 0 {
            // Orthonormal basis of the protected key directions (R u_i and the sink's), then P = I - Q Q^T.
            let v = nalgebra::DMatrix::from_fn(c, protected + always.len(), |a, j| {
                if j < protected {
                    rms[a] * eig.eigenvectors[(a, order[j])]
                } else {
                    always[j - protected][a]
                }
            });
            let svd = v.svd(true, false);
            let u = svd.u.expect("asked for U");
            let top = svd.singular_values.max();
            for j in (0..svd.singular_values.len()).filter(|&j| svd.singular_values[j] > 1e-9 * top) {
                for a in 0..c {
                    for b in 0..c {
                        p[a * c + b] -= u[(a, j)] * u[(b, j)];
                    }
                }
            }
        }
        let free_dims = (0..c).map(|i| p[i * c + i]).sum::<f64>().round() as usize;
        if free_dims == 0 {
            return Err(Error::Input(format!(
                "preserve_energy {energy} protects every direction of the {c} edited columns: nothing is left to edit; lower it"
            )));
        }
        Ok(NullSpace { c, p, free_dims })
    }

    /// An orthonormal basis of the free directions (c x free dims, column-major as nalgebra keeps it).
    pub fn free_basis(&self) -> nalgebra::DMatrix<f64> {
        let c = self.c;
        let e = nalgebra::SymmetricEigen::new(nalgebra::DMatrix::from_row_slice(c, c, &self.p));
        let cols: Vec<_> = (0..c).filter(|&i| e.eigenvalues[i] > 0.5).map(|i| e.eigenvectors.column(i).clone_owned()).collect();
        nalgebra::DMatrix::from_columns(&cols)
    }

    /// The projector for a change D of the columns (D <- D P).
    pub fn column_projector(&self) -> Vec<f64> {
        self.p.clone()
    }

    /// Share of the energy of keys with second moment `s` in the free directions: tr(P S) / tr(S).
    pub fn free_share(&self, s: &[f64]) -> f64 {
        let c = self.c;
        let tr: f64 = (0..c).map(|i| s[i * c + i]).sum();
        let tps: f64 = s.iter().zip(&self.p).map(|(a, b)| a * b).sum();
        if tr > 0.0 {
            tps / tr
        } else {
            0.0
        }
    }
}

/// A projector for each edited `down_proj` (`targets`: name, layer, columns), from the benign sequences'
/// keys at every position. `benign` pairs each sequence with its prompt's length where it has one (those
/// prompts' last-token keys go into the summary); `harmful` are prompt ids. The summary compares benign and
/// harmful keys at the last prompt token, where the reply's first token, refusal or answer, is decided.
///
/// The first position is the attention sink: its activations are orders of magnitude larger than any
/// other's and would decide the whole spectrum, so it is kept out of S (and, with `protect_sink`,
/// protected as a direction of its own).
pub fn projectors(
    model: &Decoder,
    targets: &[(String, usize, Vec<usize>)],
    benign: &[(Vec<u32>, Option<usize>)],
    harmful: &[Vec<u32>],
    energy: f64,
    protect_sink: bool,
    last_share: f64,
) -> Result<Vec<Projector>> {
    if !(0.0..1.0).contains(&last_share) {
        return Err(Error::Input(format!("preserve_last must be in [0, 1), got {last_share}")));
    }
    if benign.is_empty() {
        return Err(Error::Input(
            "preserve_energy > 0 but there are no benign sequences to preserve (retain set and locality pairs are empty)".into(),
        ));
    }
    let at: Vec<(usize, Tensor)> =
        targets.iter().map(|(_, layer, cols)| Ok((*layer, index_tensor(cols, model.device())?))).collect::<Result<_>>()?;
    let ids: Vec<Vec<u32>> = benign.iter().map(|(ids, _)| ids.clone()).collect();
    let benign_keys = keys(model, &ids, &at)?;
    let harmful_keys = keys(model, harmful, &at)?;
    let mut out = Vec::new();
    for ((((name, layer, _), (_, idx)), kb), kh) in targets.iter().zip(at).zip(&benign_keys).zip(&harmful_keys) {
        let (rest, sink, positions) = split_sink(kb, "preserve_energy")?;
        let (s, c) = second_moment(&rest)?;
        let always = if protect_sink { vec![sink] } else { vec![] };
        let benign_last = prompt_last_rows(kb, benign)?;
        // With `last_share`, the benign prompts' last tokens (where the reply's first token, refusal or
        // answer, is decided) weigh that share of the protected second moment instead of one position in
        // a hundred.
        let protected = if last_share > 0.0 && !benign_last.is_empty() {
            let (sl, _) = second_moment(&Tensor::cat(&benign_last, 0)?)?;
            s.iter().zip(&sl).map(|(a, b)| (1.0 - last_share) * a + last_share * b).collect()
        } else {
            s.clone()
        };
        let ns = NullSpace::new(&protected, c, energy, &always)?;
        let harmful_last = last_rows(kh)?;
        // Share of the free directions in the second moment of some key rows (0 without rows).
        let share = |rows: Vec<Tensor>| -> Result<f64> {
            if rows.is_empty() {
                return Ok(0.0);
            }
            Ok(ns.free_share(&second_moment(&Tensor::cat(&rows, 0)?)?.0))
        };
        let summary = PreserveSummary {
            layer: *layer,
            columns: c,
            positions,
            free_dims: ns.free_dims,
            benign_energy_free: ns.free_share(&s),
            benign_last_free: share(benign_last)?,
            harmful_last_free: share(harmful_last)?,
            whitened: None,
        };
        let b = ns.free_basis();
        let fd = b.ncols();
        let basis = Tensor::from_vec((0..c * fd).map(|i| b[(i / fd, i % fd)] as f32).collect::<Vec<_>>(), (c, fd), model.device())?;
        out.push(Projector { name: name.clone(), idx, basis, weights: None, summary });
    }
    Ok(out)
}

/// A soft null space on top of the hard one (`preserve_whiten`): each projector's free basis is turned to the
/// eigen-directions of the benign keys' second moment within the free directions (eigenvalues l_i), and the
/// step along direction i is scaled by w_i = 1 / (1 + l_i / (shrink * mean l)). The hard cut leaves every
/// free direction equally open however much benign inputs still use it (a tenth of their energy at
/// `preserve_energy = 0.9`); the weights damp the step where benign keys vary and keep it where they are
/// quiet: the edit reads the cases' keys through (S + lambda I)^-1, the shrinkage LDA read of
/// docs/validation.md ("Reads beyond one direction"), restricted to the free directions. The whitening
/// moment comes from `benign` (every position after the first; typically the null space's sequences plus
/// more prose than the null space protects); `harmful` (prompt ids) and the benign prompts' lengths only
/// feed the summary. With `last`, the moment is instead the within-class scatter of the last prompt token's
/// keys (the benign prompts' about their mean and the cases' about theirs: LDA's S_w), so the step is damped
/// along the directions in which prompts of one kind differ (topic, wording) and kept along the ones in
/// which the two kinds differ consistently. Adam runs in the rotated basis, the weights scale its update.
pub fn whiten(
    model: &Decoder,
    projectors: &mut [Projector],
    benign: &[(Vec<u32>, Option<usize>)],
    harmful: &[Vec<u32>],
    shrink: f64,
    last: bool,
) -> Result<()> {
    if !(shrink > 0.0 && shrink.is_finite()) {
        return Err(Error::Input(format!("preserve_whiten must be > 0 and finite, got {shrink}")));
    }
    if projectors.is_empty() {
        return Ok(());
    }
    if benign.is_empty() {
        return Err(Error::Input("preserve_whiten: there are no benign sequences to whiten by".into()));
    }
    let at: Vec<(usize, Tensor)> = projectors.iter().map(|p| (p.summary.layer, p.idx.clone())).collect();
    let ids: Vec<Vec<u32>> = benign.iter().map(|(ids, _)| ids.clone()).collect();
    let benign_keys = keys(model, &ids, &at)?;
    let harmful_keys = keys(model, harmful, &at)?;
    let dev = model.device().clone();
    for ((pr, kb), kh) in projectors.iter_mut().zip(&benign_keys).zip(&harmful_keys) {
        let (benign_last, harmful_last) = (prompt_last_rows(kb, benign)?, last_rows(kh)?);
        let (rows, positions) = if last {
            if benign_last.is_empty() || harmful_last.is_empty() {
                return Err(Error::Input(
                    "whiten_last: the within-class scatter needs benign prompts (the retain set's) and harmful cases".into(),
                ));
            }
            let centred = |rows: &[Tensor]| -> Result<Tensor> {
                let k = Tensor::cat(rows, 0)?;
                Ok(k.broadcast_sub(&k.mean_keepdim(0)?)?)
            };
            (Tensor::cat(&[centred(&benign_last)?, centred(&harmful_last)?], 0)?, benign_last.len() + harmful_last.len())
        } else {
            let (rest, _, positions) = split_sink(kb, "preserve_whiten")?;
            (rest, positions)
        };
        // M = B^T S B, the whitening moment in the free basis's coordinates.
        let (m, f) = second_moment(&rows.matmul(&pr.basis)?)?;
        let eig = nalgebra::SymmetricEigen::new(nalgebra::DMatrix::from_row_slice(f, f, &m));
        let mean = eig.eigenvalues.iter().map(|l| l.max(0.0)).sum::<f64>() / f as f64;
        let w: Vec<f32> =
            eig.eigenvalues.iter().map(|l| if mean > 0.0 { (1.0 / (1.0 + l.max(0.0) / (shrink * mean))) as f32 } else { 1.0 }).collect();
        let v = Tensor::from_vec((0..f * f).map(|i| eig.eigenvectors[(i / f, i % f)] as f32).collect::<Vec<_>>(), (f, f), &dev)?;
        pr.basis = pr.basis.matmul(&v)?;
        let weights = Tensor::from_vec(w.clone(), (1, f), &dev)?;
        // Share of some key rows' energy that the weighted step reaches (0 without rows).
        let reach = |rows: Vec<Tensor>| -> Result<f64> {
            if rows.is_empty() {
                return Ok(0.0);
            }
            let k = Tensor::cat(&rows, 0)?;
            let total = k.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            let got = k.matmul(&pr.basis)?.broadcast_mul(&weights)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            Ok(if total > 0.0 { got / total } else { 0.0 })
        };
        pr.summary.whitened = Some(Whitened {
            shrink,
            last,
            positions,
            weight_sum: w.iter().map(|x| *x as f64).sum(),
            benign_last: reach(benign_last)?,
            harmful_last: reach(harmful_last)?,
        });
        pr.weights = Some(weights);
    }
    Ok(())
}

/// Plain-prose tokens and built-in benign prompts whose keys [`shaping`] weighs rounding errors by.
pub const SHAPING_PROSE_TOKENS: usize = 4096;

/// Most changed columns of one `down_proj` that [`shaping`] shapes (a whole Qwen2.5-Coder-0.5B layer has
/// 4,864; a hotspot edit of an 8B model's 14,336 columns at the default 10%, 1,434).
pub const MAX_SHAPED_COLUMNS: usize = 8192;

/// The benign keys' second moment over the changed columns of every edited `down_proj` in `edited`
/// (against `base`), for shaped re-quantization ([`crate::io::requant`]). The keys come from `model` (the
/// edited model: the keys of a layer do not depend on its own `down_proj`) on about
/// [`SHAPING_PROSE_TOKENS`] tokens of book prose and the built-in retain set's benign prompts (chat
/// template when the tokenizer has one). As in [`projectors`], the first position (the attention sink) is
/// kept out of the moment and weighed as one direction holding as much of the trace as all other positions
/// together. Tensors other than `down_proj`, with no changed column or with more than
/// [`MAX_SHAPED_COLUMNS`] changed columns (GPTQ's factorization grows with their cube) get none: they are
/// rounded plainly.
pub fn shaping(
    model: &Decoder,
    base: &Decoder,
    tok: &crate::io::tokenizer::Tok,
    edited: &[String],
) -> Result<crate::io::requant::ShapingMap> {
    let mut targets: Vec<(String, usize, Vec<usize>)> = Vec::new();
    for name in edited {
        let Some(layer) = (0..model.spec.n_layers).find(|&l| crate::model::decoder::down_proj_name(l) == *name) else { continue };
        let changed = (model.get(name)?.to_dtype(DType::F32)? - base.get(name)?.to_dtype(DType::F32)?)?.abs()?.max(0)?.to_vec1::<f32>()?;
        let cols: Vec<usize> = changed.iter().enumerate().filter(|(_, d)| **d > 0.0).map(|(j, _)| j).collect();
        if !cols.is_empty() && cols.len() <= MAX_SHAPED_COLUMNS {
            targets.push((name.clone(), layer, cols));
        }
    }
    let mut out = crate::io::requant::ShapingMap::new();
    if targets.is_empty() {
        return Ok(out);
    }
    let ctx = model.spec.max_position_embeddings;
    let mut seqs = super::prose_ids(tok, SHAPING_PROSE_TOKENS, ctx)?;
    let chat = tok.chat_template.is_some();
    seqs.extend(super::encode_prompts(tok, &crate::data::probes::builtin_retain_prompts(), chat, "built-in retain prompt")?);
    let at: Vec<(usize, Tensor)> = targets.iter().map(|(_, l, c)| Ok((*l, index_tensor(c, model.device())?))).collect::<Result<_>>()?;
    let per_target = keys(model, &seqs, &at)?;
    for ((name, _, cols), kb) in targets.into_iter().zip(per_target) {
        let (rest, sink, positions) = split_sink(&kb, "shaped rounding")?;
        let (mut s, c) = second_moment(&rest)?;
        let (trace, norm2) = ((0..c).map(|i| s[i * c + i]).sum::<f64>(), sink.iter().map(|x| x * x).sum::<f64>());
        if norm2 > 0.0 {
            let w = trace / norm2;
            for i in 0..c {
                for j in 0..c {
                    s[i * c + j] += w * sink[i] * sink[j];
                }
            }
        }
        out.insert(name, crate::io::requant::Shaping { columns: cols, moment: s, positions });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_warns_when_the_cases_barely_stand_apart() {
        let s = |h: f64, b: f64| PreserveSummary {
            layer: 11,
            columns: 154,
            positions: 100,
            free_dims: 47,
            benign_energy_free: 0.08,
            benign_last_free: b,
            harmful_last_free: h,
            whitened: None,
        };
        let low = s(0.022, 0.014).describe();
        assert!(low.contains("47 of 154 directions free") && low.contains("separation 1.6x: low"), "{low}");
        let ok = s(0.071, 0.014).describe();
        assert!(ok.contains("(separation 5.1x)") && !ok.contains("low"), "{ok}");
        assert!(s(0.02, 0.0).separation().is_none() && !s(0.02, 0.0).describe().contains("separation"));
    }

    /// Keys with a known standardized spectrum (2, 0.9, 0.1 along rotated axes) and one neuron 1000 times
    /// louder: energy 0.5 protects one direction; the projector is symmetric, idempotent, never longer
    /// than the identity, and kills the protected key direction.
    #[test]
    fn null_space_keeps_the_low_energy_directions() {
        let (c, th) = (3usize, 0.3f64);
        let r = [[th.cos(), -th.sin(), 0.0], [th.sin(), th.cos(), 0.0], [0.0, 0.0, 1.0]];
        let d = [2.0, 0.9, 0.1];
        let scale = [1000.0, 1.0, 1.0];
        let mut s = vec![0f64; 9];
        for a in 0..c {
            for b in 0..c {
                s[a * c + b] = scale[a] * scale[b] * (0..c).map(|k| r[a][k] * d[k] * r[b][k]).sum::<f64>();
            }
        }
        let ns = NullSpace::new(&s, c, 0.5, &[]).unwrap();
        assert_eq!(ns.free_dims, 2);
        let p = ns.column_projector();
        let tr: f64 = (0..c).map(|i| p[i * c + i]).sum();
        assert!((tr - 2.0).abs() < 1e-9, "rank 2: {tr}");
        for a in 0..c {
            for b in 0..c {
                assert!((p[a * c + b] - p[b * c + a]).abs() < 1e-12, "symmetric");
                let pp: f64 = (0..c).map(|k| p[a * c + k] * p[k * c + b]).sum();
                assert!((pp - p[a * c + b]).abs() < 1e-9, "idempotent");
            }
        }
        // The protected key direction: R u, u the top standardized eigenvector.
        let rms: Vec<f64> = (0..c).map(|i| s[i * c + i].sqrt()).collect();
        let e = nalgebra::DMatrix::from_fn(c, c, |a, b| s[a * c + b] / (rms[a] * rms[b])).symmetric_eigen();
        let i = e.eigenvalues.imax();
        let k: Vec<f64> = (0..c).map(|a| rms[a] * e.eigenvectors[(a, i)]).collect();
        let norm = k.iter().map(|x| x * x).sum::<f64>().sqrt();
        for a in 0..c {
            let pk: f64 = (0..c).map(|b| p[a * c + b] * k[b]).sum();
            assert!(pk.abs() < 1e-9 * norm, "{pk}");
        }
        let b = ns.free_basis();
        assert_eq!(b.ncols(), 2);
        let bbt = &b * b.transpose();
        for a in 0..c {
            for j in 0..c {
                assert!((bbt[(a, j)] - p[a * c + j]).abs() < 1e-9, "basis spans the free directions");
            }
        }
        let share = ns.free_share(&s);
        assert!((0.0..0.5).contains(&share), "{share}");
        assert_eq!(NullSpace::new(&s, c, 0.0, &[]).unwrap().free_dims, 3);
        // A direction always protected (the sink's) is killed too, even at energy 0.
        let sink = NullSpace::new(&s, c, 0.0, &[vec![0.0, 0.0, 5.0]]).unwrap();
        assert_eq!(sink.free_dims, 2);
        assert!(sink.column_projector()[8].abs() < 1e-12);
        assert!(NullSpace::new(&s, c, 1.0, &[]).err().unwrap().to_string().contains("preserve_energy"));
        // Nothing left free: a clear error, not an edit that cannot move.
        let e = NullSpace::new(&s, c, 0.99, &[vec![1.0, 1.0, 1.0]]).err().unwrap().to_string();
        assert!(e.contains("protects every direction of the 3 edited columns"), "{e}");
        assert!(NullSpace::new(&[0.0; 9], c, 0.5, &[]).err().unwrap().to_string().contains("all zero"));
    }
}
