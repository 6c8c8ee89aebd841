//! Null-space edits (`preserve_energy`): the change to each edited `down_proj` is kept orthogonal to what
//! benign inputs feed it, so their outputs at that layer stay as they were by construction, not by a
//! penalty (AlphaEdit, Fang et al. 2025, restricted to the hotspot columns).
//!
//! A `down_proj` column j is multiplied by neuron j's activation ("key"). For the edited columns C, the
//! benign keys k_C (every position of the retain set's benign prompts with the original model's reply,
//! and of the cases' locality pairs) give a second-moment matrix S = mean k_C k_C^T. Its top eigen-directions
//! holding `preserve_energy` of the trace (in per-neuron standardized units) are protected; P projects onto the rest. After every optimizer
//! step the edit's accumulated change D = W[:, C] - W0[:, C] becomes D P, so D k = D P k, which is small for
//! any benign key (at most sqrt(1 - energy) of its norm on average). A harmful prompt's keys change the
//! output only through directions the benign inputs barely use: the edit has to find what separates the
//! two, where a soft retain penalty tends to shrink the whole edit instead.

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::model::Decoder;
use crate::trace::{Capture, Site};
use crate::{Error, Result};

/// The projector of one edited `down_proj` and what it leaves free.
pub struct Projector {
    pub name: String,
    /// The edited columns, as u32 indices.
    idx: Tensor,
    /// (|C|, |C|), idempotent (D <- D p).
    p: Tensor,
    pub summary: PreserveSummary,
}

/// What a projector protects, for the delta's metadata.
#[derive(Clone, Debug, Serialize)]
pub struct PreserveSummary {
    pub layer: usize,
    pub columns: usize,
    /// Benign key positions the second moment was taken over.
    pub positions: usize,
    /// Directions left free (the edit may use them).
    pub free_dims: usize,
    /// Share of the benign keys' (standardized) energy in the free directions (at most 1 - preserve_energy).
    pub benign_energy_free: f64,
    /// The same for the benign prompts' keys at their last token only.
    pub benign_last_free: f64,
    /// The same for the harmful cases' keys at their last prompt token: how much of them the edit can
    /// still act on. Near `benign_last_free`: the two are not separable in these neurons.
    pub harmful_last_free: f64,
}

impl Projector {
    /// Replace the accumulated change of `w` from `w0` in the edited columns by its projection.
    pub fn apply(&self, w: &Tensor, w0: &Tensor) -> Result<Tensor> {
        let d = (w - w0)?.index_select(&self.idx, 1)?;
        let dp = d.matmul(&self.p)?;
        Ok(w.index_add(&self.idx, &(dp - d)?, 1)?)
    }
}

/// Keys (positions, |cols|) of `layer`'s MLP for each sequence, stacked.
fn keys(model: &Decoder, seqs: &[Vec<u32>], layer: usize, cols: &Tensor) -> Result<Tensor> {
    let mut out = Vec::with_capacity(seqs.len());
    for ids in seqs {
        let mut cap = Capture::new([Site::MlpAct(layer)]);
        cap.stop = Some(layer);
        model.forward_with(&crate::model::Input::single(ids), &mut cap, None)?;
        let k = cap.store.remove(&Site::MlpAct(layer)).expect("captured").squeeze(0)?;
        out.push(k.index_select(cols, 1)?.to_dtype(DType::F32)?);
    }
    Ok(Tensor::cat(&out, 0)?)
}

/// The second moment K^T K / n as a row-major f64 matrix.
fn second_moment(k: &Tensor) -> Result<(Vec<f64>, usize)> {
    let n = k.dim(0)?;
    let c = k.dim(1)?;
    let s = (k.t()?.matmul(k)? / n as f64)?;
    Ok((s.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect(), c))
}

/// The null space of a second-moment matrix S (row-major, c x c), taken in per-neuron standardized
/// coordinates (z = k / rms(k_j)): a few neurons with activations orders of magnitude larger than the rest
/// would otherwise hold nearly all the energy and leave every other direction "free".
pub struct NullSpace {
    c: usize,
    /// Per-neuron root mean square of the keys.
    rms: Vec<f64>,
    /// Projector onto the free directions, in standardized coordinates (symmetric, idempotent).
    p: Vec<f64>,
    pub free_dims: usize,
}

impl NullSpace {
    /// Protect the top eigen-directions of the standardized S that hold `energy` of its trace.
    pub fn new(s: &[f64], c: usize, energy: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&energy) || s.len() != c * c {
            return Err(Error::Input(format!("preserve_energy must be in [0, 1), got {energy}")));
        }
        let scale = (0..c).map(|i| s[i * c + i]).sum::<f64>() / c as f64;
        if !(scale > 0.0 && scale.is_finite()) {
            return Err(Error::Input("preserve_energy: the benign keys are all zero or not finite in the edited columns".into()));
        }
        // A neuron that never fires on benign inputs gets a floor, so its (free) direction stays finite.
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
        for &i in &order[protected..] {
            let u = eig.eigenvectors.column(i);
            for a in 0..c {
                for b in 0..c {
                    p[a * c + b] += u[a] * u[b];
                }
            }
        }
        Ok(NullSpace { c, rms, p, free_dims: c - protected })
    }

    /// The projector Q for a change D of the columns (D <- D Q): Q = R P R^-1 with R = diag(rms), so that
    /// D Q k = (D R) P z for every key k = R z. Idempotent.
    pub fn column_projector(&self) -> Vec<f64> {
        let c = self.c;
        let mut q = vec![0f64; c * c];
        for a in 0..c {
            for b in 0..c {
                q[a * c + b] = self.rms[a] * self.p[a * c + b] / self.rms[b];
            }
        }
        q
    }

    /// Share of the standardized energy of keys with second moment `s` in the free directions.
    pub fn free_share(&self, s: &[f64]) -> f64 {
        let c = self.c;
        let z = |a: usize, b: usize| s[a * c + b] / (self.rms[a] * self.rms[b]);
        let tr: f64 = (0..c).map(|i| z(i, i)).sum();
        let tps: f64 = (0..c).flat_map(|a| (0..c).map(move |b| (a, b))).map(|(a, b)| z(a, b) * self.p[b * c + a]).sum();
        if tr > 0.0 {
            tps / tr
        } else {
            0.0
        }
    }
}

/// A projector for each edited `down_proj` (`targets`: name, layer, columns), from the benign sequences'
/// keys at every position; the summary compares benign and harmful keys at the last prompt token (where the
/// reply's first token, refusal or answer, is decided): `benign_prompts` and `harmful` are prompt ids.
pub fn projectors(
    model: &Decoder,
    targets: &[(String, usize, Vec<usize>)],
    benign: &[Vec<u32>],
    benign_prompts: &[Vec<u32>],
    harmful: &[Vec<u32>],
    energy: f64,
) -> Result<Vec<Projector>> {
    if benign.is_empty() {
        return Err(Error::Input(
            "preserve_energy > 0 but there are no benign sequences to preserve (retain set and locality pairs are empty)".into(),
        ));
    }
    let last_keys = |seqs: &[Vec<u32>], layer: usize, idx: &Tensor| -> Result<Option<Vec<f64>>> {
        if seqs.is_empty() {
            return Ok(None);
        }
        let ks: Vec<Tensor> = seqs
            .iter()
            .map(|ids| Ok(keys(model, std::slice::from_ref(ids), layer, idx)?.get(ids.len() - 1)?.unsqueeze(0)?))
            .collect::<Result<_>>()?;
        Ok(Some(second_moment(&Tensor::cat(&ks, 0)?)?.0))
    };
    let mut out = Vec::new();
    for (name, layer, cols) in targets {
        let idx = Tensor::from_vec(cols.iter().map(|&c| c as u32).collect::<Vec<_>>(), cols.len(), model.device())?;
        let kb = keys(model, benign, *layer, &idx)?;
        let positions = kb.dim(0)?;
        let (s, c) = second_moment(&kb)?;
        let ns = NullSpace::new(&s, c, energy)?;
        let share = |x: Option<Vec<f64>>| x.map(|s| ns.free_share(&s)).unwrap_or(0.0);
        let summary = PreserveSummary {
            layer: *layer,
            columns: c,
            positions,
            free_dims: ns.free_dims,
            benign_energy_free: ns.free_share(&s),
            benign_last_free: share(last_keys(benign_prompts, *layer, &idx)?),
            harmful_last_free: share(last_keys(harmful, *layer, &idx)?),
        };
        let q = ns.column_projector();
        let p = Tensor::from_vec(q.into_iter().map(|x| x as f32).collect::<Vec<_>>(), (c, c), model.device())?;
        out.push(Projector { name: name.clone(), idx, p, summary });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A known spectrum, on standardized keys: S = R diag(9, 0.9, 0.1)... rotated, then one neuron scaled by
    /// 1000 (the standardization undoes it). Energy 0.85 protects the top direction only, 0.95 the top two;
    /// the column projector is idempotent and kills every protected key direction.
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
        let ns = NullSpace::new(&s, c, 0.5).unwrap();
        assert_eq!(ns.free_dims, 2);
        let q = ns.column_projector();
        for a in 0..c {
            for b in 0..c {
                let qq: f64 = (0..c).map(|k| q[a * c + k] * q[k * c + b]).sum();
                assert!((qq - q[a * c + b]).abs() < 1e-6 * (1.0 + q[a * c + b].abs()), "idempotent");
            }
        }
        assert!(ns.free_share(&s) < 0.5 && ns.free_share(&s) > 0.0);
        // A key along the protected direction: (D Q) k = 0 for any D.
        let mut top = nalgebra::DMatrix::from_fn(c, c, |a, b| s[a * c + b] / (ns.rms[a] * ns.rms[b])).symmetric_eigen();
        let i = top.eigenvalues.imax();
        let z = top.eigenvectors.column_mut(i).clone_owned();
        let k: Vec<f64> = (0..c).map(|a| ns.rms[a] * z[a]).collect();
        for a in 0..c {
            let qk: f64 = (0..c).map(|b| q[a * c + b] * k[b]).sum();
            assert!(qk.abs() < 1e-9 * ns.rms[0], "{qk}");
        }
        assert_eq!(NullSpace::new(&s, c, 0.0).unwrap().free_dims, 3);
        assert!(NullSpace::new(&s, c, 1.0).err().unwrap().to_string().contains("preserve_energy"));
        assert!(NullSpace::new(&[0.0; 9], c, 0.5).err().unwrap().to_string().contains("all zero"));
    }
}
