//! Provides activation capture. candle has no module hooks, so the decoder calls a [`Recorder`] at each
//! [`Site`] explicitly (ripgrep's `Sink` pattern). A recorder may keep a copy of the activation, replace
//! it, or add a zero `Var` probe to it so that the backward pass yields the activation's gradient.

use std::collections::HashMap;
use std::fmt;

use candle_core::{Tensor, Var};

use crate::Result;

/// A place in the forward pass where an activation can be recorded. Layers are 0-based decoder blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// Embedding output (scaled for Gemma): `hidden_states[0]`.
    Embed,
    /// The attention block's contribution to the residual stream (after o_proj and any post-norm).
    AttnOut(usize),
    /// The MLP's input: the normed residual stream `gate_proj` and `up_proj` read, shape (b, s, d).
    MlpIn(usize),
    /// MLP intermediate activation, the input of `down_proj`: act(gate) * up, shape (b, s, d_ff).
    MlpAct(usize),
    /// The output of `down_proj`, before any post-norm (the same tensor as `MlpOut` except for Gemma 3's
    /// sandwich norms): its gradient times `MlpAct` is `down_proj`'s weight gradient.
    MlpDown(usize),
    /// The MLP's contribution to the residual stream.
    MlpOut(usize),
    /// Residual stream after the block: `hidden_states[l + 1]` (except the last, see FinalNorm).
    ResidPost(usize),
    /// Final RMSNorm output: `hidden_states[L]` in transformers.
    FinalNorm,
}

impl fmt::Display for Site {
    /// TransformerLens names, so dumps line up with papers and notebooks.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Embed => write!(f, "hook_embed"),
            Site::AttnOut(l) => write!(f, "blocks.{l}.hook_attn_out"),
            Site::MlpIn(l) => write!(f, "blocks.{l}.ln2.hook_normalized"),
            Site::MlpAct(l) => write!(f, "blocks.{l}.mlp.hook_post"),
            Site::MlpDown(l) => write!(f, "blocks.{l}.mlp.hook_down_out"),
            Site::MlpOut(l) => write!(f, "blocks.{l}.hook_mlp_out"),
            Site::ResidPost(l) => write!(f, "blocks.{l}.hook_resid_post"),
            Site::FinalNorm => write!(f, "ln_final.hook_normalized"),
        }
    }
}

impl std::str::FromStr for Site {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || crate::Error::Input(format!("unknown site `{s}` (e.g. blocks.3.mlp.hook_post, blocks.3.hook_resid_post, hook_embed)"));
        match s {
            "hook_embed" => return Ok(Site::Embed),
            "ln_final.hook_normalized" => return Ok(Site::FinalNorm),
            _ => {}
        }
        let rest = s.strip_prefix("blocks.").ok_or_else(bad)?;
        let (l, name) = rest.split_once('.').ok_or_else(bad)?;
        let l: usize = l.parse().map_err(|_| bad())?;
        Ok(match name {
            "hook_attn_out" => Site::AttnOut(l),
            "ln2.hook_normalized" => Site::MlpIn(l),
            "mlp.hook_post" => Site::MlpAct(l),
            "hook_mlp_out" => Site::MlpOut(l),
            "mlp.hook_down_out" => Site::MlpDown(l),
            "hook_resid_post" => Site::ResidPost(l),
            _ => return Err(bad()),
        })
    }
}

/// Called by the decoder at every site.
pub trait Recorder {
    /// Whether `on` should be called for this site (lets the decoder skip work).
    fn wants(&self, _site: Site) -> bool {
        false
    }
    /// Receives the activation and returns the tensor the forward pass continues with.
    fn on(&mut self, _site: Site, x: Tensor) -> Result<Tensor> {
        Ok(x)
    }
    /// Stop the forward pass after this block (nethook's `stop=True`); the decoder then returns the
    /// residual stream after that block instead of the final-normed states.
    fn stop_after(&self) -> Option<usize> {
        None
    }
}

/// Records nothing.
pub struct Noop;
impl Recorder for Noop {}

/// Keeps (detached) copies of the activations at the chosen sites.
#[derive(Default)]
pub struct Capture {
    pub sites: Vec<Site>,
    pub all: bool,
    pub stop: Option<usize>,
    pub store: HashMap<Site, Tensor>,
}

impl Capture {
    /// Capture the given sites.
    pub fn new(sites: impl IntoIterator<Item = Site>) -> Self {
        Capture { sites: sites.into_iter().collect(), ..Default::default() }
    }
    /// Capture every site.
    pub fn everything() -> Self {
        Capture { all: true, ..Default::default() }
    }
    /// The captured activation at `site`.
    pub fn get(&self, site: Site) -> Option<&Tensor> {
        self.store.get(&site)
    }
}

impl Recorder for Capture {
    fn wants(&self, site: Site) -> bool {
        self.all || self.sites.contains(&site)
    }
    fn on(&mut self, site: Site, x: Tensor) -> Result<Tensor> {
        self.store.insert(site, x.detach());
        Ok(x)
    }
    fn stop_after(&self) -> Option<usize> {
        self.stop
    }
}

/// Keeps the activation at one site *with* its graph (a loss on it back-propagates into the weights
/// below it), and stops the forward pass after that block.
pub struct Tap {
    pub layer: usize,
    pub x: Option<Tensor>,
}

impl Recorder for Tap {
    fn wants(&self, site: Site) -> bool {
        site == Site::ResidPost(self.layer)
    }
    fn on(&mut self, _site: Site, x: Tensor) -> Result<Tensor> {
        self.x = Some(x.clone());
        Ok(x)
    }
    fn stop_after(&self) -> Option<usize> {
        Some(self.layer)
    }
}

/// Adds a zero `Var` probe at each chosen site so `grads.get(probe)` is the gradient of the loss with
/// respect to that activation; also keeps the activation value.
#[derive(Default)]
pub struct GradProbe {
    pub sites: Vec<Site>,
    pub probes: HashMap<Site, Var>,
    pub values: HashMap<Site, Tensor>,
}

impl GradProbe {
    pub fn new(sites: impl IntoIterator<Item = Site>) -> Self {
        GradProbe { sites: sites.into_iter().collect(), ..Default::default() }
    }
    /// The gradient of the loss with respect to the activation at `site`.
    pub fn grad<'a>(&self, grads: &'a candle_core::backprop::GradStore, site: Site) -> Option<&'a Tensor> {
        grads.get(self.probes.get(&site)?.as_tensor())
    }
}

impl Recorder for GradProbe {
    fn wants(&self, site: Site) -> bool {
        self.sites.contains(&site)
    }
    fn on(&mut self, site: Site, x: Tensor) -> Result<Tensor> {
        let probe = Var::zeros(x.shape(), x.dtype(), x.device())?;
        let y = (&x + probe.as_tensor())?;
        self.values.insert(site, x.detach());
        self.probes.insert(site, probe);
        Ok(y)
    }
}

/// transformers' `output_hidden_states`: L+1 tensors (b, s, d): index 0 = embedding output,
/// l = residual stream after block l-1 for 1 <= l <= L-1, and L = the final-normed output.
pub fn hidden_states(model: &crate::model::Decoder, input: &crate::model::Input) -> Result<Vec<Tensor>> {
    let n = model.spec.n_layers;
    let mut cap = Capture::new(std::iter::once(Site::Embed).chain((0..n.saturating_sub(1)).map(Site::ResidPost)).chain([Site::FinalNorm]));
    model.forward_with(input, &mut cap, None)?;
    let mut out = Vec::with_capacity(n + 1);
    out.push(cap.store.remove(&Site::Embed).expect("embed captured"));
    for l in 0..n.saturating_sub(1) {
        out.push(cap.store.remove(&Site::ResidPost(l)).expect("resid captured"));
    }
    out.push(cap.store.remove(&Site::FinalNorm).expect("final norm captured"));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_names_round_trip() {
        for s in [Site::Embed, Site::AttnOut(2), Site::MlpAct(0), Site::MlpOut(11), Site::ResidPost(3), Site::FinalNorm] {
            assert_eq!(s.to_string().parse::<Site>().unwrap(), s);
        }
        assert!("blocks.x.mlp.hook_post".parse::<Site>().is_err());
        assert!("post5".parse::<Site>().is_err());
    }
}
