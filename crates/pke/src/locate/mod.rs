//! Provides toxic-hotspot location (method.md sections 1.3 and 2.4): per-layer signals (DINM's
//! hidden-state distance, the safe-reply gradient norm of each `down_proj`, activation x gradient
//! attribution on the unsafe continuation, optional weight drift against a reference model), the chosen
//! layer(s), and per-neuron scores there, aggregated over cases into a [`Hotspots`] value that `edit`
//! consumes. `locate` never changes the model.

pub mod charts;
pub mod dinm;
pub mod hotspots;
pub mod intent;
pub mod reads;
pub mod score;
pub mod signals;

pub use hotspots::{Hotspots, LayerRule, LayerSignal, LocateSettings, Locator, DEFAULT_LAYER_BAND};
pub use signals::{check_layer_band, locate, CaseInputs};
