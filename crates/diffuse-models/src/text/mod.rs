//! The text side of Stable Diffusion, as transformers has it: [`tokenizer::ClipTokenizer`]
//! (`CLIPTokenizer`: CLIP's cleaning, byte-level BPE, padding/truncation; a folder in and out;
//! a vocabulary learnt from captions) and [`clip::ClipTextModel`] (`CLIPTextModel` under
//! transformers' config keys and weight names; trainable with candle autodiff).
//!
//! Prompt embeddings for a batch, as SD's pipelines make them:
//! ```text
//! (ids, _mask) = tokenizer.encode_batch(&prompts, tokenizer.model_max_length(), &device)?  [b, 77]
//! emb = text_encoder.prompt_embeds(&ids, None, clip_skip)?           [b, 77, hidden_size]
//! ```
//! (no attention mask, as SD 1.x/2.x pipelines call the encoder; the unconditional embeddings
//! of classifier-free guidance are those of the empty prompt `""`).

pub mod clip;
pub mod tokenizer;

pub use clip::{ClipOutput, ClipTextConfig, ClipTextModel, HiddenAct};
pub use tokenizer::{AddedToken, ClipTokenizer, SpecialTokens};
