//! Provides the `Hotspots` value (the output of locate, the input of edit) and its JSON form.

use serde::{Deserialize, Serialize};

use super::dinm::DinmOptions;

/// Which signal picks the layer(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Locator {
    /// PKE-min: the layer whose `down_proj` gets the largest safe-reply gradient norm.
    #[default]
    Pke,
    /// The layer with the most activation x gradient attribution on the unsafe continuation.
    Attribution,
    /// DINM's hidden-state distance rule, as EasyEdit runs it (first case's layer, Q1).
    Dinm,
    /// The layer whose `down_proj` drifted most from the reference model.
    Drift,
}

impl std::str::FromStr for Locator {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Ok(match s {
            "pke" | "grad" | "grad_norm" => Locator::Pke,
            "attribution" => Locator::Attribution,
            "dinm" => Locator::Dinm,
            "drift" | "weight_drift" => Locator::Drift,
            _ => return Err(crate::Error::Input(format!("unknown locator `{s}` (pke, attribution, dinm, drift)"))),
        })
    }
}

/// The settings locate ran with (recorded in every output).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocateSettings {
    pub locator: Locator,
    /// Number of layers to choose.
    pub n_layers: usize,
    /// Forced layer(s), overriding the locator.
    pub layers: Vec<usize>,
    /// Hotspot size as a fraction of the MLP width (ignored when `top_k` is set).
    pub top_fraction: f64,
    pub top_k: Option<usize>,
    /// Prompts wrapped in the model's chat template.
    pub chat: bool,
    /// Text appended to each prompt (DINM's suffix system prompt), if any.
    pub suffix: Option<String>,
    pub dinm: DinmOptions,
    /// Neuron signals combined by rank sum (`weight_change`, `attribution`, `weight_drift`). Empty =
    /// automatic: the drift locator uses `weight_drift`; otherwise `weight_change` + `attribution`, plus
    /// `weight_drift` when a reference model is given. The resolved list is recorded in the output.
    pub neuron_signals: Vec<String>,
    /// How per-case signals are aggregated.
    pub aggregation: String,
    /// With the dinm locator: compute only DINM's rule (one batched forward of the first case's two
    /// replies, as EasyEdit), not the other signals. The layer is the same; the other signals, the
    /// neuron ranking, the other padding side and the stability figures are then left at zero / empty.
    #[serde(default)]
    pub dinm_rule_only: bool,
    /// Contrastive neuron selection: a neuron's score is its harmful-side rank score minus this times its
    /// rank on the benign side (how strongly its column would move to make `contrast_prompts`, benign
    /// look-alikes, refuse), so neurons that carry the trigger words rather than the intent are left
    /// alone. 0 = off (the layer choice is never affected).
    #[serde(default)]
    pub contrast_weight: f64,
    /// Benign look-alike prompts for `contrast_weight` (by default the built-in retain set's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contrast_prompts: Vec<String>,
    /// Depth band `[lo, hi]` the pke and attribution locators choose layers from: layer `l` of `n` is in
    /// it when `lo <= l / (n - 1) <= hi` (None = every layer). Early layers carry large gradients for
    /// any target (Qwen2.5-Coder-0.5B's located layer 3, where an edit costs general ability), while
    /// harmful and harmless prompts separate in the middle of the network (Arditi et al. 2024); pke's
    /// `layer_band` sets it (docs/validation.md, "The defaults"). Layers outside the band
    /// are taken only when it holds fewer than `n_layers`; DINM's rule and the drift locator ignore it.
    /// Default: [`DEFAULT_LAYER_BAND`].
    #[serde(default)]
    pub layer_band: Option<[f64; 2]>,
    /// How the pke and attribution locators choose the layer when none is forced: by their gradient
    /// profile (the default) or by where the MLP neurons read intent ([`LayerRule::Intent`]), inside
    /// `layer_band` either way. The neurons are ranked by `neuron_signals` in both cases.
    #[serde(default)]
    pub layer_rule: LayerRule,
    /// The (benign, harmful twin) retain pairs the intent rule fits on (empty = the built-in retain set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intent_retain: Vec<(String, Option<String>)>,
}

/// How a locator chooses its layer(s) when none is forced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerRule {
    /// The locator's own layer profile (the pke locator's gradient norms, the attribution locator's
    /// attribution).
    #[default]
    Located,
    /// The layer whose MLP neurons best tell the retain set's harmful twins from their benign sides by a
    /// shrinkage-LDA read fitted on training data ([`crate::locate::intent::intent_layer_profile`]):
    /// an edit of `down_proj` reads a prompt through exactly those activations (docs/validation.md, "The
    /// whole layer at the layer that reads intent").
    Intent,
}

impl std::str::FromStr for LayerRule {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "located" => Ok(LayerRule::Located),
            "intent" => Ok(LayerRule::Intent),
            _ => Err(crate::Error::Input(format!("unknown layer rule `{s}` (located, intent)"))),
        }
    }
}

/// The depth band the pke and attribution locators choose from by default: the middle half of the network.
pub const DEFAULT_LAYER_BAND: [f64; 2] = [0.25, 0.75];

impl Default for LocateSettings {
    fn default() -> Self {
        LocateSettings {
            locator: Locator::Pke,
            n_layers: 1,
            layers: vec![],
            top_fraction: 0.10,
            top_k: None,
            chat: false,
            suffix: None,
            dinm: DinmOptions::default(),
            neuron_signals: vec![],
            aggregation: "per-case signals normalized to sum 1, then averaged over cases".into(),
            dinm_rule_only: false,
            contrast_weight: 0.0,
            contrast_prompts: vec![],
            layer_band: Some(DEFAULT_LAYER_BAND),
            layer_rule: LayerRule::Located,
            intent_retain: vec![],
        }
    }
}

impl LocateSettings {
    /// Contrastive neuron selection with `weight` (0 = off), the benign side being `retain` or, when None,
    /// the built-in retain set.
    pub fn with_contrast(mut self, weight: f64, retain: Option<&[String]>) -> Self {
        self.contrast_weight = weight;
        self.contrast_prompts =
            if weight > 0.0 { retain.map(<[String]>::to_vec).unwrap_or_else(crate::data::probes::builtin_retain_prompts) } else { vec![] };
        self
    }

    /// The settings an edit with `method` and `p` locates with: `p.contrast_weight` (pke only; the
    /// benign side `retain`'s prompts or the built-in retain set's), `p.layer_rule` (its pairs from
    /// `retain` or the built-in set) and `p.layers` / `p.n_layers` where set.
    pub fn for_edit(self, method: crate::edit::Method, p: &crate::edit::EditParams, retain: Option<&[crate::edit::Probe]>) -> Self {
        let benign = retain.map(crate::data::probes::benign_prompts);
        let mut s = self.with_contrast(if method == crate::edit::Method::Pke { p.contrast_weight } else { 0.0 }, benign.as_deref());
        s.layer_rule = p.layer_rule;
        if p.layer_rule == LayerRule::Intent {
            s.intent_retain = retain.map(crate::data::probes::retain_pairs).unwrap_or_default();
        }
        if !p.layers.is_empty() {
            s.layers = p.layers.clone();
        }
        if p.n_layers > 0 {
            s.n_layers = p.n_layers;
        }
        if p.top_fraction > 0.0 {
            s.top_fraction = p.top_fraction;
            s.top_k = None;
        }
        if let [lo, hi] = p.layer_band[..] {
            s.layer_band = Some([lo, hi]);
        }
        s
    }
}

/// Per-layer signals (0-based decoder blocks, HF numbering).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerSignal {
    pub layer: usize,
    /// DINM distance for this block's output (hidden-state index layer+1), settings as configured, first case.
    pub dinm_distance: f64,
    /// Same with the other padding side (sensitivity report).
    pub dinm_distance_other_padding: f64,
    /// ‖∂L⁺/∂W_down‖_F, aggregated.
    pub grad_norm: f64,
    /// Σ_i |Σ_t a[t,i] ∂(−L⁻)/∂a[t,i]|, aggregated.
    pub attribution: f64,
    /// ‖W_down(reference) − W_down‖_F, when a reference model was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_drift: Option<f64>,
    /// With the intent layer rule: the retain pairs' cross-fit AUC of the MLP neurons' LDA read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent_auc: Option<f64>,
}

/// One hotspot neuron: column `index` of the layer's `down_proj`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Neuron {
    pub index: usize,
    /// Combined score (rank sum of the neuron signals, normalized to 0..1).
    pub score: f64,
    pub weight_change: f64,
    pub attribution: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_drift: Option<f64>,
    /// Benign-side signal (contrastive selection), when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benign_weight_change: Option<f64>,
}

/// Hotspot neurons of one chosen layer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerNeurons {
    pub layer: usize,
    /// MLP width (number of neurons).
    pub width: usize,
    pub k: usize,
    /// The top-k, best first.
    pub top: Vec<Neuron>,
    /// Combined score of every neuron (for charts), by index.
    pub all_scores: Vec<f64>,
    /// Aggregated `weight_change` and `attribution` of every neuron, by index.
    pub all_weight_change: Vec<f64>,
    pub all_attribution: Vec<f64>,
    /// Benign-side signal of every neuron (contrastive selection), empty when off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all_benign_weight_change: Vec<f64>,
}

/// DINM's layer under both padding sides: a locator whose answer flips on padding is not precise.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DinmSensitivity {
    pub layer_left: usize,
    pub layer_right: usize,
    pub flips_with_padding: bool,
    /// Fraction of cases whose DINM layer differs between padding sides.
    pub cases_flipping: f64,
}

/// How stable the hotspot is across cases.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stability {
    /// Fraction of cases whose own best layer (by the locator's signal) is the chosen layer.
    pub layer_agreement: f64,
    /// Mean Jaccard overlap between each case's own top-k set and the aggregate top-k (first chosen layer).
    pub topk_overlap_with_aggregate: f64,
    /// Mean pairwise Jaccard overlap of the cases' top-k sets.
    pub topk_pairwise_overlap: f64,
    /// (top1 − top2) / top1 of the aggregated layer profile.
    pub layer_margin: f64,
}

/// The output of locate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hotspots {
    pub model: String,
    pub model_sha256: Option<String>,
    /// How the frozen weights were held (see [`crate::model::Weights`]; locate computes exactly either way).
    #[serde(default = "crate::model::Weights::before_modes")]
    pub weights: crate::model::Weights,
    pub architecture: String,
    pub n_cases: usize,
    pub settings: LocateSettings,
    pub layers: Vec<LayerSignal>,
    pub chosen_layers: Vec<usize>,
    pub neurons: Vec<LayerNeurons>,
    pub dinm: DinmSensitivity,
    pub stability: Stability,
    pub seconds_per_case: f64,
}

impl Hotspots {
    /// The hotspot neuron indices of `layer`, sorted ascending.
    pub fn neuron_indices(&self, layer: usize) -> Option<Vec<usize>> {
        self.neurons.iter().find(|n| n.layer == layer).map(|n| {
            let mut v: Vec<usize> = n.top.iter().map(|x| x.index).collect();
            v.sort_unstable();
            v
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::{EditParams, Method};

    #[test]
    fn for_edit_takes_layers_and_contrast_from_the_hyper_parameters() {
        let base = LocateSettings { layers: vec![11], ..Default::default() };
        let p = EditParams::resolve(
            Method::Pke,
            None,
            &["layers=[3, 9]".into(), "n_layers=2".into(), "contrast_weight=1".into(), "top_fraction=1.0".into()],
        )
        .unwrap();
        let retain = [crate::edit::Probe {
            id: "r1".into(),
            category: "c".into(),
            trigger: None,
            benign: "benign".into(),
            harmful: Some("harmful".into()),
        }];
        let s = LocateSettings { top_k: Some(5), ..base.clone() }.for_edit(Method::Pke, &p, Some(&retain));
        assert_eq!((s.layers.clone(), s.n_layers, s.contrast_weight), (vec![3, 9], 2, 1.0));
        assert_eq!((s.top_fraction, s.top_k), (1.0, None));
        let e = EditParams::resolve(Method::Pke, None, &["top_fraction=1.5".into()]).unwrap_err().to_string();
        assert!(e.contains("top_fraction") && e.contains("1.5"), "{e}");
        assert_eq!(s.layer_band, Some(DEFAULT_LAYER_BAND), "unset: the locate settings' band");
        let wide = EditParams::resolve(Method::Pke, None, &["layer_band=[0.0, 1.0]".into()]).unwrap();
        assert_eq!(base.clone().for_edit(Method::Pke, &wide, None).layer_band, Some([0.0, 1.0]));
        let e = EditParams::resolve(Method::Pke, None, &["layer_band=[0.9]".into()]).unwrap_err().to_string();
        assert!(e.contains("layer_band") && e.contains("0.9"), "{e}");
        assert_eq!(s.contrast_prompts, vec!["benign".to_string()]);
        // Unset: the locate settings' own; contrast is pke's only.
        let d = EditParams::resolve(Method::Dinm, None, &[]).unwrap();
        let s = base.clone().for_edit(Method::Dinm, &d, None);
        assert_eq!((s.layers, s.n_layers, s.contrast_weight), (vec![11], 1, 0.0));
        assert!(s.contrast_prompts.is_empty());
        assert_eq!((s.layer_rule, s.intent_retain.len()), (LayerRule::Located, 0), "the default rule carries no pairs");
        // The intent layer rule, with the retain file's pairs (None: the built-in set, filled in by locate).
        let p = EditParams::resolve(Method::Pke, None, &["layer_rule=\"intent\"".into()]).unwrap();
        let s = base.clone().for_edit(Method::Pke, &p, Some(&retain));
        assert_eq!((s.layer_rule, s.intent_retain), (LayerRule::Intent, vec![("benign".to_string(), Some("harmful".to_string()))]));
        assert!(base.for_edit(Method::Pke, &p, None).intent_retain.is_empty());
        let e = EditParams::resolve(Method::Pke, None, &["layer_rule=\"deep\"".into()]).unwrap_err().to_string();
        assert!(e.contains("layer_rule") && e.contains("deep"), "{e}");
        assert_eq!("intent".parse::<LayerRule>().unwrap(), LayerRule::Intent);
        assert!("x".parse::<LayerRule>().unwrap_err().to_string().contains("unknown layer rule `x`"));
    }
}
