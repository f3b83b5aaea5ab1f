//! The text side of Stable Diffusion, as transformers has it: [`tokenizer::ClipTokenizer`]
//! (`CLIPTokenizer`: CLIP's cleaning, byte-level BPE, padding/truncation; a folder in and out;
//! a vocabulary learnt from captions).

pub mod tokenizer;

pub use tokenizer::{AddedToken, ClipTokenizer, SpecialTokens};
