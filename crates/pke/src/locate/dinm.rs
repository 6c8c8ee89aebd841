//! Provides DINM's layer locator exactly as EasyEdit's `SafetyEditor._locate_toxic_layer` runs it,
//! with each of its behaviours as a switch (method.md 1.3, quirks Q5/Q6).

use serde::{Deserialize, Serialize};

use crate::io::tokenizer::Tok;
use crate::model::{Decoder, Input, MaskedRows};
use crate::{Error, Result};

/// Padding side of the two-row batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PadSide {
    Left,
    Right,
}

/// DINM locator switches. Defaults reproduce EasyEdit at HEAD (left padding, pads included, whole sequence).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct DinmOptions {
    pub padding: PadSide,
    /// Exclude pad positions from the distance (EasyEdit includes them).
    pub mask_pads: bool,
    /// Compare only the last real position of each row (EasyEdit compares whole sequences).
    pub last_position: bool,
    /// Attention output for fully masked (left-pad) query rows: zero as torch SDPA, or uniform as eager.
    pub masked_rows: MaskedRows,
}

impl Default for DinmOptions {
    fn default() -> Self {
        DinmOptions { padding: PadSide::Left, mask_pads: false, last_position: false, masked_rows: MaskedRows::Zero }
    }
}

/// DINM distances for hidden-state indices 1..=L (`distances[i]` is for index i+1) and the chosen
/// 0-based block (`argmax - 1`, first maximum).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DinmResult {
    pub distances: Vec<f64>,
    pub toxic_layer: usize,
    pub options: DinmOptions,
}

/// Tokenize `[safe, unsafe]` as one padded batch, as `tok([safe, unsafe], padding=True)` does.
/// Token ids and attention masks of a padded batch.
pub type PaddedBatch = (Vec<Vec<u32>>, Vec<Vec<u8>>);

pub fn padded_pair(tok: &Tok, safe: &str, unsafe_: &str, side: PadSide) -> Result<PaddedBatch> {
    let a = tok.encode(safe, true)?;
    let b = tok.encode(unsafe_, true)?;
    if a.is_empty() || b.is_empty() {
        return Err(Error::Input("a response tokenizes to zero tokens".into()));
    }
    let pad = tok.pad_or_eos().ok_or_else(|| Error::Input("the tokenizer has neither a pad nor an EOS token".into()))?;
    let s = a.len().max(b.len());
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in [a, b] {
        let n = s - r.len();
        let (row, m): (Vec<u32>, Vec<u8>) = match side {
            PadSide::Left => (
                std::iter::repeat_n(pad, n).chain(r.iter().copied()).collect(),
                std::iter::repeat_n(0, n).chain(std::iter::repeat_n(1, r.len())).collect(),
            ),
            PadSide::Right => (
                r.iter().copied().chain(std::iter::repeat_n(pad, n)).collect(),
                std::iter::repeat_n(1, r.len()).chain(std::iter::repeat_n(0, n)).collect(),
            ),
        };
        ids.push(row);
        mask.push(m);
    }
    Ok((ids, mask))
}

/// Run DINM's locator on one (safe, unsafe) pair.
pub fn dinm_locate(model: &Decoder, tok: &Tok, safe: &str, unsafe_: &str, opts: DinmOptions) -> Result<DinmResult> {
    let (ids, mask) = padded_pair(tok, safe, unsafe_, opts.padding)?;
    let mut m = model.clone();
    m.masked_rows = opts.masked_rows;
    let hs = crate::trace::hidden_states(&m, &Input { ids, mask: Some(mask.clone()), positions: None, resume: None })?;
    let s = mask[0].len();
    let last_real = |row: usize| -> usize { (0..s).rev().find(|&j| mask[row][j] == 1).unwrap_or(s - 1) };
    let mut distances = Vec::with_capacity(hs.len() - 1);
    for h in &hs[1..] {
        let a = h.get(0)?.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?; // (s, d)
        let b = h.get(1)?.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
        let mut sum = 0f64;
        if opts.last_position {
            let (ra, rb) = (last_real(0), last_real(1));
            sum = a[ra].iter().zip(&b[rb]).map(|(x, y)| ((*x - *y) as f64).powi(2)).sum();
        } else {
            for j in 0..s {
                if opts.mask_pads && (mask[0][j] == 0 || mask[1][j] == 0) {
                    continue;
                }
                sum += a[j].iter().zip(&b[j]).map(|(x, y)| ((*x - *y) as f64).powi(2)).sum::<f64>();
            }
        }
        distances.push(sum.sqrt());
    }
    let toxic_layer = super::score::argmax(&distances); // argmax over indices 1..=L, minus 1
    Ok(DinmResult { distances, toxic_layer, options: opts })
}
