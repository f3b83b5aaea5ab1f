//! `CLIPTokenizer`, transformers `src/transformers/models/clip/tokenization_clip.py`, written
//! by hand: byte-level BPE whose words end in `</w>`, as transformers 5's tokenizers-backed
//! class runs it (the slow class of transformers 4 gives the same ids on ordinary prompts):
//!
//! ```text
//! text ─ added tokens with normalized=false split out (matched exactly, each its own id)
//!   └ each other piece: NFC, runs of whitespace → " ", lowercase        (the normalizer)
//!     └ added tokens with normalized=true split out of the normalized piece
//!     └ CLIP's regex: 's|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+
//!     └ each word: UTF-8 bytes → GPT-2's printable byte characters, last one + "</w>"
//!       (a character not in the vocabulary is the unk token), then merges by rank
//! ids = [bos] + tokens + [eos]; padded: truncated to max_len − 2 tokens, then pad on the right
//! ```
//!
//! CLIP's regex starts with `<\|startoftext\|>|<\|endoftext\|>`; the ByteLevel pre-tokenizer
//! after it splits such a word again into `<|`, `startoftext`, `|>`, which is what the regex
//! without those two alternatives gives, so they are left out. A special token in the text is
//! caught earlier, as an added token. Added tokens are bos/eos/unk/pad (and any other
//! `added_tokens_decoder` entry); `normalized` is the flag of the token's AddedToken dict, false
//! for a token given as a plain string, the last of bos, eos, unk, pad winning where two share
//! a content — what transformers 5.25 makes of SD's folders: `<|STARTOFTEXT|>` is bos, `!` in
//! SD 2.x (pad `"!"`) is id 0 and never BPE'd.
//!
//! A folder is what Stable Diffusion ships in `tokenizer/` (transformers 4's
//! `save_pretrained`): `vocab.json`, `merges.txt`, and optionally `tokenizer_config.json` and
//! `special_tokens_map.json` (special tokens, `model_max_length`; the map wins, as in
//! transformers) — or transformers 5's `tokenizer.json` + `tokenizer_config.json`.
//! [`ClipTokenizer::train`] learns a CLIP-format vocabulary from captions.

use crate::{Error, Result};
use regex::Regex;
use serde_json::{Map, Value};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use unicode_normalization::UnicodeNormalization;

mod files;
mod train;

/// CLIP's beginning-of-text token.
pub const START_OF_TEXT: &str = "<|startoftext|>";
/// CLIP's end-of-text token (also its unk and, in SD 1.x, its pad token).
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// CLIP's context length: `model_max_length` when `tokenizer_config.json` has none.
pub const CLIP_CONTEXT_LENGTH: usize = 77;
/// The most merges transformers 4's slow `CLIPTokenizer` reads (49152 − 256 − 2).
pub const MAX_MERGES: usize = 48_894;
/// The suffix of a word's last symbol.
const END_OF_WORD: &str = "</w>";
/// CLIP's pre-tokenisation pattern (case-insensitive, as `tokenization_clip.py` compiles it),
/// less the special-token alternatives (see the module docs).
const PATTERN: &str = r"(?i)'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// Words whose BPE is cached (the cache stops growing there).
const CACHE_WORDS: usize = 100_000;

pub const VOCAB_FILE: &str = "vocab.json";
pub const MERGES_FILE: &str = "merges.txt";
pub const CONFIG_FILE: &str = "tokenizer_config.json";
pub const SPECIAL_TOKENS_FILE: &str = "special_tokens_map.json";
/// transformers 5's (the tokenizers library's) one-file form.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A token matched whole in the text and never BPE'd (transformers' added tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedToken {
    pub content: String,
    pub id: u32,
    /// Matched in the normalized (lowercased, …) text rather than the raw text.
    pub normalized: bool,
}

/// The special tokens' contents (transformers' `bos_token`, … keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: String,
    pub eos: String,
    pub unk: String,
    pub pad: String,
}

impl Default for SpecialTokens {
    /// `CLIPTokenizer.__init__`'s defaults (SD 1.x); SD 2.x pads with `"!"`.
    fn default() -> Self {
        SpecialTokens {
            bos: START_OF_TEXT.into(),
            eos: END_OF_TEXT.into(),
            unk: END_OF_TEXT.into(),
            pad: END_OF_TEXT.into(),
        }
    }
}

impl SpecialTokens {
    /// (transformers' key, content), in the order transformers writes them.
    fn keyed(&self) -> [(&'static str, &str); 4] {
        [
            ("bos_token", &self.bos),
            ("eos_token", &self.eos),
            ("pad_token", &self.pad),
            ("unk_token", &self.unk),
        ]
    }
}

/// GPT-2's `bytes_to_unicode`: each byte as a printable character, printable ASCII and Latin-1
/// as themselves, the rest from U+0100 on. Index = byte; CLIP's vocabulary begins with these
/// characters in [`byte_order`].
fn bytes_to_unicode() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        out[b as usize] = if is_printable_byte(b) {
            char::from_u32(b).expect("Latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("below U+0200")
        };
    }
    out
}

fn is_printable_byte(b: u32) -> bool {
    (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
}

/// The bytes in `bytes_to_unicode()`'s insertion order (printable ones first), which is the
/// order of CLIP's first 256 (and next 256, with `</w>`) vocabulary entries.
fn byte_order() -> Vec<u8> {
    let printable = (0..256u32).filter(|&b| is_printable_byte(b));
    let rest = (0..256u32).filter(|&b| !is_printable_byte(b));
    printable.chain(rest).map(|b| b as u8).collect()
}

/// The normalizer of transformers' CLIP tokenizer: NFC, every run of whitespace as one space,
/// lowercase (per character, as the tokenizers library does).
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.nfc() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            in_space = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// A piece of input text: plain text, or a special token's id.
enum Segment<'a> {
    Text(&'a str),
    Special(u32),
}

/// Byte-level BPE tokenizer with CLIP's cleaning and special tokens.
pub struct ClipTokenizer {
    /// token → id (`vocab.json`).
    vocab: HashMap<String, u32>,
    /// The merges in rank order (`merges.txt` without its `#version` line).
    merges: Vec<(String, String)>,
    /// (left id, right id) → (rank, merged id).
    ranks: HashMap<(u32, u32), (u32, u32)>,
    special: SpecialTokens,
    /// Added tokens matched in the raw text, longest content first.
    raw_added: Vec<(String, u32)>,
    /// Added tokens matched in the normalized text, longest content first.
    normalized_added: Vec<(String, u32)>,
    bos_id: u32,
    eos_id: u32,
    unk_id: u32,
    pad_id: u32,
    model_max_length: usize,
    pattern: Regex,
    byte_chars: [char; 256],
    /// `tokenizer_config.json` keys diffuse does not read, written back by [`Self::save`].
    config_extra: Map<String, Value>,
    /// word → ids, as the tokenizers library caches BPE per word.
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.vocab.len())
            .field("merges", &self.merges.len())
            .field("special", &self.special)
            .field("model_max_length", &self.model_max_length)
            .finish()
    }
}

impl Clone for ClipTokenizer {
    fn clone(&self) -> Self {
        ClipTokenizer {
            vocab: self.vocab.clone(),
            merges: self.merges.clone(),
            ranks: self.ranks.clone(),
            special: self.special.clone(),
            raw_added: self.raw_added.clone(),
            normalized_added: self.normalized_added.clone(),
            bos_id: self.bos_id,
            eos_id: self.eos_id,
            unk_id: self.unk_id,
            pad_id: self.pad_id,
            model_max_length: self.model_max_length,
            pattern: self.pattern.clone(),
            byte_chars: self.byte_chars,
            config_extra: self.config_extra.clone(),
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl ClipTokenizer {
    /// A tokenizer over an in-memory vocabulary and merges (in rank order). Every special token
    /// must be in `vocab`; every merge's parts and result too (as the tokenizers library
    /// requires). The special tokens are added tokens with the flags SD 1.x's folder gets in
    /// transformers 5: bos matched in the normalized text (so `<|STARTOFTEXT|>` is bos), the
    /// others in the raw text ([`Self::with_added_tokens`] sets others).
    pub fn new(
        vocab: HashMap<String, u32>,
        merges: Vec<(String, String)>,
        special: SpecialTokens,
        model_max_length: usize,
    ) -> Result<Self> {
        let id_of = |key: &str, content: &str| -> Result<u32> {
            vocab.get(content).copied().ok_or_else(|| {
                Error::Config(format!(
                    "tokenizer: {key} {content:?} is not in the vocabulary; add it to {VOCAB_FILE} \
                     or name a token that is"
                ))
            })
        };
        let bos_id = id_of("bos_token", &special.bos)?;
        let eos_id = id_of("eos_token", &special.eos)?;
        let unk_id = id_of("unk_token", &special.unk)?;
        let pad_id = id_of("pad_token", &special.pad)?;
        let mut ranks = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let merged = format!("{a}{b}");
            let id = |t: &str| {
                vocab.get(t).copied().ok_or_else(|| {
                    Error::Config(format!(
                        "tokenizer: merge {} `{a} {b}` uses `{t}`, which is not in the vocabulary \
                         ({MERGES_FILE} and {VOCAB_FILE} must come from the same tokenizer)",
                        rank + 1
                    ))
                })
            };
            let key = (id(a)?, id(b)?);
            // A repeated merge keeps its first (best) rank, as the tokenizers library does.
            ranks.entry(key).or_insert((rank as u32, id(&merged)?));
        }
        let added: Vec<AddedToken> = [
            (&special.bos, true),
            (&special.eos, false),
            (&special.unk, false),
            (&special.pad, false),
        ]
        .into_iter()
        .map(|(c, normalized)| AddedToken {
            content: c.clone(),
            id: vocab[c.as_str()],
            normalized,
        })
        .collect();
        if model_max_length < 2 {
            return Err(Error::Config(format!(
                "tokenizer: model_max_length {model_max_length} leaves no room for bos and eos; \
                 use at least 2 (CLIP uses {CLIP_CONTEXT_LENGTH})"
            )));
        }
        Ok(ClipTokenizer {
            vocab,
            merges,
            ranks,
            special,
            raw_added: Vec::new(),
            normalized_added: Vec::new(),
            bos_id,
            eos_id,
            unk_id,
            pad_id,
            model_max_length,
            pattern: Regex::new(PATTERN).expect("CLIP's pattern compiles"),
            byte_chars: bytes_to_unicode(),
            config_extra: Map::new(),
            cache: Mutex::new(HashMap::new()),
        }
        .with_added_tokens(added))
    }

    /// The same tokenizer with these added tokens (replacing the previous ones; a content given
    /// twice keeps the last).
    pub fn with_added_tokens(mut self, added: Vec<AddedToken>) -> Self {
        let mut by_content: Vec<AddedToken> = Vec::new();
        for t in added.into_iter().filter(|t| !t.content.is_empty()) {
            by_content.retain(|o| o.content != t.content);
            by_content.push(t);
        }
        let pick = |normalized: bool| {
            let mut v: Vec<(String, u32)> = by_content
                .iter()
                .filter(|t| t.normalized == normalized)
                .map(|t| (t.content.clone(), t.id))
                .collect();
            v.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
            v
        };
        self.raw_added = pick(false);
        self.normalized_added = pick(true);
        self.cache.lock().expect("cache lock").clear();
        self
    }

    /// The added tokens, by id.
    pub fn added_tokens(&self) -> Vec<AddedToken> {
        let mut v: Vec<AddedToken> = self
            .raw_added
            .iter()
            .map(|(c, id)| (c, id, false))
            .chain(self.normalized_added.iter().map(|(c, id)| (c, id, true)))
            .map(|(c, id, normalized)| AddedToken {
                content: c.clone(),
                id: *id,
                normalized,
            })
            .collect();
        v.sort_by(|a, b| (a.id, &a.content).cmp(&(b.id, &b.content)));
        v
    }

    /// The same tokenizer with another `model_max_length` (at least 2).
    pub fn with_model_max_length(mut self, n: usize) -> Result<Self> {
        if n < 2 {
            return Err(Error::Config(format!(
                "tokenizer: model_max_length {n} leaves no room for bos and eos; use at least 2"
            )));
        }
        self.model_max_length = n;
        Ok(self)
    }

    /// `tokenizer(text)["input_ids"]`: `[bos] + tokens + [eos]`, not truncated.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.bos_id];
        ids.extend(self.tokenize(text));
        ids.push(self.eos_id);
        ids
    }

    /// `tokenizer(text, padding="max_length", max_length=max_len, truncation=True)`:
    /// `(input_ids, attention_mask)`, each `max_len` long: bos, at most `max_len − 2` tokens,
    /// eos, then pad ids (mask 0) on the right. `max_len` must be at least 2.
    pub fn encode_padded(&self, text: &str, max_len: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        if max_len < 2 {
            return Err(Error::Input(format!(
                "max_length {max_len} leaves no room for bos and eos; use at least 2 (usually \
                 the tokenizer's model_max_length, {})",
                self.model_max_length
            )));
        }
        let mut ids = vec![self.bos_id];
        ids.extend(self.tokenize(text).into_iter().take(max_len - 2));
        ids.push(self.eos_id);
        let mut mask = vec![1u32; ids.len()];
        ids.resize(max_len, self.pad_id);
        mask.resize(max_len, 0);
        Ok((ids, mask))
    }

    /// A batch as SD's `encode_prompt` tokenizes it: each prompt through [`Self::encode_padded`]
    /// to `max_len` (the tokenizer's [`Self::model_max_length`] for SD), stacked into u32
    /// `(input_ids, attention_mask)` tensors `[b, max_len]` on `device`.
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        prompts: &[S],
        max_len: usize,
        device: &candle_core::Device,
    ) -> Result<(candle_core::Tensor, candle_core::Tensor)> {
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for p in prompts {
            let (i, m) = self.encode_padded(p.as_ref(), max_len)?;
            ids.extend(i);
            mask.extend(m);
        }
        let shape = (prompts.len(), max_len);
        Ok((
            candle_core::Tensor::from_vec(ids, shape, device)?,
            candle_core::Tensor::from_vec(mask, shape, device)?,
        ))
    }

    /// The tokens' ids of `text`, without bos/eos.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for seg in split_on(text, &self.raw_added) {
            let Segment::Text(t) = seg else {
                if let Segment::Special(id) = seg {
                    ids.push(id);
                }
                continue;
            };
            let norm = normalize(t);
            for seg in split_on(&norm, &self.normalized_added) {
                match seg {
                    Segment::Special(id) => ids.push(id),
                    Segment::Text(u) => {
                        for m in self.pattern.find_iter(u) {
                            self.bpe(m.as_str(), &mut ids);
                        }
                    }
                }
            }
        }
        ids
    }

    /// Text of `ids` (special tokens left out, `</w>` as a space), as transformers'
    /// `decode(ids, skip_special_tokens=True)` gives it up to spaces around punctuation.
    pub fn decode(&self, ids: &[u32]) -> String {
        let inverse: HashMap<u32, &str> =
            self.vocab.iter().map(|(t, i)| (*i, t.as_str())).collect();
        let specials: HashSet<u32> = self.added_tokens().iter().map(|t| t.id).collect();
        let byte_of: HashMap<char, u8> = self
            .byte_chars
            .iter()
            .enumerate()
            .map(|(b, c)| (*c, b as u8))
            .collect();
        let text: String = ids
            .iter()
            .filter(|i| !specials.contains(i))
            .filter_map(|i| inverse.get(i))
            .copied()
            .collect();
        let mut bytes = Vec::new();
        for piece in text.split_inclusive(END_OF_WORD) {
            let (word, end) = match piece.strip_suffix(END_OF_WORD) {
                Some(w) => (w, true),
                None => (piece, false),
            };
            bytes.extend(word.chars().filter_map(|c| byte_of.get(&c)));
            if end {
                bytes.push(b' ');
            }
        }
        String::from_utf8_lossy(&bytes).trim().to_string()
    }

    /// BPE of one pre-tokenised word, appended to `out` (cached per word).
    fn bpe(&self, word: &str, out: &mut Vec<u32>) {
        if let Some(ids) = self.cache.lock().expect("cache lock").get(word) {
            out.extend_from_slice(ids);
            return;
        }
        let chars: Vec<char> = word.bytes().map(|b| self.byte_chars[b as usize]).collect();
        // One unk per unknown character (fuse_unk=False).
        let mut syms: Vec<u32> = word_symbols(&chars)
            .map(|s| self.vocab.get(&s).copied().unwrap_or(self.unk_id))
            .collect();
        // The tokenizers library's merge order: the adjacent pair of lowest (rank, position).
        loop {
            let best = syms
                .windows(2)
                .enumerate()
                .filter_map(|(i, p)| self.ranks.get(&(p[0], p[1])).map(|&(r, id)| (r, i, id)))
                .min();
            let Some((_, i, id)) = best else { break };
            syms[i] = id;
            syms.remove(i + 1);
        }
        out.extend_from_slice(&syms);
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() < CACHE_WORDS {
            cache.insert(word.to_string(), syms);
        }
    }

    /// `model_max_length` (77 for CLIP): the padded length a text encoder takes.
    pub fn model_max_length(&self) -> usize {
        self.model_max_length
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// Entries of the vocabulary (`len(tokenizer)`); a text encoder's `vocab_size` must be at
    /// least the largest id + 1.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The largest id + 1.
    pub fn id_limit(&self) -> u32 {
        self.vocab.values().max().map_or(0, |m| m + 1)
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// The id of a token, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// The merges in rank order.
    pub fn merges(&self) -> &[(String, String)] {
        &self.merges
    }
}

/// A word's symbols before any merge: each character, the last with `</w>`.
fn word_symbols(chars: &[char]) -> impl Iterator<Item = String> + '_ {
    let last = chars.len().saturating_sub(1);
    chars.iter().enumerate().map(move |(i, c)| {
        if i == last {
            format!("{c}{END_OF_WORD}")
        } else {
            c.to_string()
        }
    })
}

/// Splits `text` at each occurrence of a special token's content (the longest at a position).
fn split_on<'a>(text: &'a str, specials: &[(String, u32)]) -> Vec<Segment<'a>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < text.len() {
        let hit = specials
            .iter()
            .find(|(c, _)| text[i..].starts_with(c.as_str()));
        match hit {
            Some((c, id)) => {
                if start < i {
                    out.push(Segment::Text(&text[start..i]));
                }
                out.push(Segment::Special(*id));
                i += c.len();
                start = i;
            }
            None => i += text[i..].chars().next().map_or(1, char::len_utf8),
        }
    }
    if start < text.len() {
        out.push(Segment::Text(&text[start..]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary of the 512 byte tokens, `merges`' results and the two specials.
    pub(super) fn tiny(merges: &[(&str, &str)]) -> ClipTokenizer {
        let chars = bytes_to_unicode();
        let mut tokens: Vec<String> = Vec::new();
        for suffix in ["", END_OF_WORD] {
            for b in byte_order() {
                tokens.push(format!("{}{suffix}", chars[b as usize]));
            }
        }
        for (a, b) in merges {
            tokens.push(format!("{a}{b}"));
        }
        tokens.push(START_OF_TEXT.into());
        tokens.push(END_OF_TEXT.into());
        let vocab = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        ClipTokenizer::new(vocab, merges, SpecialTokens::default(), 8).unwrap()
    }

    #[test]
    fn byte_table_is_gpt2s() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ'); // U+0120: the 33rd non-printable byte
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xAD], 'Ń');
        let order = byte_order();
        assert_eq!((order[0], order[93], order[94]), (b'!', b'~', 0xA1));
        assert_eq!(order.len(), 256);
    }

    #[test]
    fn cleaning_collapses_whitespace_lowercases_and_composes() {
        assert_eq!(normalize("  A\tPhoto\n\n OF "), " a photo of ");
        // "e" + combining acute → "é" (NFC).
        assert_eq!(normalize("Cafe\u{301}"), "café");
        assert_eq!(normalize("ÀB"), "àb");
    }

    #[test]
    fn bpe_merges_by_rank_with_word_ends() {
        let t = tiny(&[("l", "o"), ("lo", "w</w>"), ("e", "r</w>"), ("o", "w</w>")]);
        let id = |s: &str| t.token_to_id(s).unwrap();
        // "low": l o w</w> → lo w</w> (rank 0) → low</w> (rank 1; "o w</w>" was consumed).
        assert_eq!(t.tokenize("low"), [id("low</w>")]);
        // "lower": lo w e r</w> → lo w er</w>.
        assert_eq!(t.tokenize("Lower"), [id("lo"), id("w"), id("er</w>")]);
        // Punctuation runs and digits are their own words; each digit alone.
        assert_eq!(
            t.tokenize("low!!42"),
            [
                id("low</w>"),
                id("!"),
                id("!</w>"),
                id("4</w>"),
                id("2</w>")
            ]
        );
        // Contractions split off; non-ASCII goes through bytes.
        assert_eq!(
            t.tokenize("it's é"),
            [
                id("i"),
                id("t</w>"),
                id("'"),
                id("s</w>"),
                id("Ã"),
                id("©</w>")
            ]
        );
        // Cached words give the same ids.
        assert_eq!(t.tokenize("low low"), [id("low</w>"), id("low</w>")]);
    }

    #[test]
    fn special_tokens_are_split_out_before_cleaning() {
        let t = tiny(&[]);
        let ids = t.tokenize("a<|endoftext|>b");
        assert_eq!(
            ids,
            [
                t.token_to_id("a</w>").unwrap(),
                t.eos_id(),
                t.token_to_id("b</w>").unwrap()
            ]
        );
    }

    #[test]
    fn unknown_characters_become_unk() {
        // A vocabulary without "z": the character is the unk token, the rest merges on.
        let mut vocab: HashMap<String, u32> = HashMap::new();
        for (i, t) in ["a", "a</w>", "b</w>", START_OF_TEXT, END_OF_TEXT]
            .iter()
            .enumerate()
        {
            vocab.insert(t.to_string(), i as u32);
        }
        let t = ClipTokenizer::new(vocab, vec![], SpecialTokens::default(), 77).unwrap();
        assert_eq!(t.tokenize("azb"), [0, 4, 2]);
    }

    #[test]
    fn padding_and_truncation_keep_bos_and_eos() {
        let t = tiny(&[]);
        let (bos, eos) = (t.bos_id(), t.eos_id());
        let a = t.token_to_id("a</w>").unwrap();
        assert_eq!(t.encode("a"), [bos, a, eos]);
        let (ids, mask) = t.encode_padded("a", 5).unwrap();
        assert_eq!(ids, [bos, a, eos, t.pad_id(), t.pad_id()]);
        assert_eq!(mask, [1, 1, 1, 0, 0]);
        let (ids, mask) = t.encode_padded("a a a a a", 4).unwrap();
        assert_eq!(ids, [bos, a, a, eos]);
        assert_eq!(mask, [1; 4]);
        assert_eq!(t.encode("a a a a a").len(), 7, "encode does not truncate");
        assert!(t.encode_padded("a", 1).is_err());
        let (ids, mask) = t
            .encode_batch(&["a", "a a a a a"], 4, &candle_core::Device::Cpu)
            .unwrap();
        assert_eq!(ids.dims(), [2, 4]);
        let ids: Vec<Vec<u32>> = ids.to_vec2().unwrap();
        assert_eq!(ids[0], [bos, a, eos, t.pad_id()]);
        assert_eq!(mask.to_vec2::<u32>().unwrap()[0], [1, 1, 1, 0]);
    }
}
