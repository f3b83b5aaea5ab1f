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

    /// Reads a tokenizer folder (see the module docs): `tokenizer.json` when there is one (as
    /// transformers 5 prefers it), else `vocab.json` + `merges.txt`. Missing
    /// `tokenizer_config.json` / `special_tokens_map.json` mean CLIP's defaults
    /// (`<|startoftext|>`, `<|endoftext|>` as eos, unk and pad; `model_max_length`
    /// [`CLIP_CONTEXT_LENGTH`]).
    pub fn from_folder(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Config(format!(
                "{}: not a folder (expected a CLIP tokenizer folder with {VOCAB_FILE} and \
                 {MERGES_FILE}, or {TOKENIZER_FILE}, as Stable Diffusion's tokenizer/)",
                dir.display()
            )));
        }
        let config_path = dir.join(CONFIG_FILE);
        let config = read_json_object(&config_path)?;
        let map = read_json_object(&dir.join(SPECIAL_TOKENS_FILE))?;
        if let Some(class) = config
            .as_ref()
            .and_then(|c| c.get("tokenizer_class"))
            .and_then(Value::as_str)
        {
            if !class.starts_with("CLIPTokenizer") {
                return Err(Error::Config(format!(
                    "{}: `tokenizer_class` is {class:?}; diffuse reads CLIPTokenizer folders \
                     (allowed: CLIPTokenizer, CLIPTokenizerFast)",
                    config_path.display()
                )));
            }
        }
        // Vocabulary, merges and the added tokens the files themselves list.
        let json_path = dir.join(TOKENIZER_FILE);
        let (mut vocab, merges, mut added) = if json_path.exists() {
            read_tokenizer_json(&json_path)?
        } else {
            let vocab = read_vocab(&dir.join(VOCAB_FILE))?;
            let merges = read_merges(&dir.join(MERGES_FILE))?;
            (vocab, merges, Vec::new())
        };
        // Special tokens: tokenizer_config.json, then special_tokens_map.json over it.
        let mut special = SpecialTokens::default();
        let mut flags: Vec<(String, bool)> = Vec::new();
        for (key, slot) in [
            ("bos_token", &mut special.bos),
            ("eos_token", &mut special.eos),
            ("unk_token", &mut special.unk),
            ("pad_token", &mut special.pad),
        ] {
            let mut flag = false;
            for (file, obj) in [(CONFIG_FILE, &config), (SPECIAL_TOKENS_FILE, &map)] {
                if let Some(v) = obj.as_ref().and_then(|o| o.get(key)) {
                    if let Some(c) = token_content(v, &dir.join(file), key)? {
                        *slot = c;
                        flag = normalized_flag(v);
                    }
                }
            }
            flags.push((slot.clone(), flag));
        }
        // `added_tokens_decoder` of tokenizer_config.json: ids (also of tokens outside
        // vocab.json) and flags.
        if let Some(Value::Object(dec)) =
            config.as_ref().and_then(|c| c.get("added_tokens_decoder"))
        {
            for (id, tok) in dec {
                let content = token_content(tok, &config_path, "added_tokens_decoder")?;
                match (id.parse::<u32>(), content) {
                    (Ok(id), Some(c)) => {
                        vocab.entry(c.clone()).or_insert(id);
                        added.push(AddedToken {
                            content: c,
                            id,
                            normalized: normalized_flag(tok),
                        });
                    }
                    _ => {
                        return Err(Error::Config(format!(
                            "{}: `added_tokens_decoder` entry {id:?}: expected an integer id and \
                             an AddedToken {{\"content\": ...}}",
                            config_path.display()
                        )))
                    }
                }
            }
        }
        let model_max_length = match config.as_ref().and_then(|c| c.get("model_max_length")) {
            None | Some(Value::Null) => CLIP_CONTEXT_LENGTH,
            Some(v) => match v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)) {
                // transformers' "no limit" (1e30) saturates.
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                None => {
                    return Err(Error::Config(format!(
                        "{}: `model_max_length` is {v}; expected a positive integer (CLIP: 77)",
                        config_path.display()
                    )))
                }
            },
        };
        let tok = Self::new(vocab, merges, special, model_max_length)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
        // The special tokens' flags (the last of bos, eos, unk, pad winning), then the added
        // tokens the files list (tokenizer.json, added_tokens_decoder): they hold the flags
        // transformers resolved when it wrote them.
        let mut all: Vec<AddedToken> = flags
            .into_iter()
            .map(|(content, normalized)| AddedToken {
                id: tok.vocab[&content],
                content,
                normalized,
            })
            .collect();
        all.extend(added);
        let mut tok = tok.with_added_tokens(all);
        if let Some(mut c) = config {
            for k in [
                "bos_token",
                "eos_token",
                "unk_token",
                "pad_token",
                "model_max_length",
            ] {
                c.remove(k);
            }
            c.remove("added_tokens_decoder");
            tok.config_extra = c;
        }
        Ok(tok)
    }

    /// Learns a CLIP-format vocabulary from `texts`: each text cleaned and split into words as
    /// [`Self::encode`] does (special tokens in it ignored), then up to `num_merges` merges,
    /// each of the adjacent pair that occurs most often over all words (ties: the
    /// lexicographically smallest pair of strings), until no pair is left. The vocabulary is in
    /// CLIP's order: the 256 byte characters, the same with `</w>`, each new merged token, then
    /// `<|startoftext|>` and `<|endoftext|>` (eos, unk and pad); `model_max_length` 77.
    /// Deterministic: the same texts give the same tokenizer.
    pub fn train<S: AsRef<str>>(
        texts: impl IntoIterator<Item = S>,
        num_merges: usize,
    ) -> Result<Self> {
        if num_merges > MAX_MERGES {
            return Err(Error::Config(format!(
                "tokenizer training: {num_merges} merges; transformers' CLIPTokenizer reads at \
                 most {MAX_MERGES}"
            )));
        }
        let byte_chars = bytes_to_unicode();
        let pattern = Regex::new(PATTERN).expect("CLIP's pattern compiles");
        let special = SpecialTokens::default();
        // Word counts (as byte characters).
        let mut counts: HashMap<String, u64> = HashMap::new();
        for text in texts {
            for seg in split_on(
                text.as_ref(),
                &[(START_OF_TEXT.into(), 0), (END_OF_TEXT.into(), 0)],
            ) {
                if let Segment::Text(t) = seg {
                    for m in pattern.find_iter(&normalize(t)) {
                        let w: String =
                            m.as_str().bytes().map(|b| byte_chars[b as usize]).collect();
                        *counts.entry(w).or_default() += 1;
                    }
                }
            }
        }
        // Symbols: the 512 base tokens, then each new merged string.
        let mut symbols: Vec<String> = Vec::new();
        for suffix in ["", END_OF_WORD] {
            for b in byte_order() {
                symbols.push(format!("{}{suffix}", byte_chars[b as usize]));
            }
        }
        let mut index: HashMap<String, u32> = symbols
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        let mut words: Vec<(Vec<u32>, u64)> = {
            let mut sorted: Vec<(String, u64)> = counts.into_iter().collect();
            sorted.sort();
            sorted
                .into_iter()
                .map(|(w, n)| {
                    let chars: Vec<char> = w.chars().collect();
                    let last = chars.len() - 1;
                    let ids = chars
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            let s = if i == last {
                                format!("{c}{END_OF_WORD}")
                            } else {
                                c.to_string()
                            };
                            index[&s]
                        })
                        .collect();
                    (ids, n)
                })
                .collect()
        };
        // Pair counts, the words each pair occurs in, and a max-heap with stale entries.
        let mut pair_count: HashMap<(u32, u32), u64> = HashMap::new();
        let mut where_: HashMap<(u32, u32), HashSet<usize>> = HashMap::new();
        for (wi, (ids, n)) in words.iter().enumerate() {
            for p in ids.windows(2) {
                *pair_count.entry((p[0], p[1])).or_default() += n;
                where_.entry((p[0], p[1])).or_default().insert(wi);
            }
        }
        let entry = |symbols: &[String], p: (u32, u32), n: u64| HeapEntry {
            count: n,
            left: symbols[p.0 as usize].clone(),
            right: symbols[p.1 as usize].clone(),
            pair: p,
        };
        let mut heap: BinaryHeap<HeapEntry> = pair_count
            .iter()
            .map(|(&p, &n)| entry(&symbols, p, n))
            .collect();
        let mut merges: Vec<(String, String)> = Vec::new();
        while merges.len() < num_merges {
            let Some(top) = heap.pop() else { break };
            if pair_count.get(&top.pair).copied().unwrap_or(0) != top.count || top.count == 0 {
                continue; // stale
            }
            let (a, b) = top.pair;
            let merged = format!("{}{}", top.left, top.right);
            let new_id = *index.entry(merged.clone()).or_insert_with(|| {
                symbols.push(merged);
                symbols.len() as u32 - 1
            });
            merges.push((top.left, top.right));
            let mut touched: HashSet<(u32, u32)> = HashSet::new();
            let mut in_words: Vec<usize> = where_
                .remove(&(a, b))
                .unwrap_or_default()
                .into_iter()
                .collect();
            in_words.sort_unstable();
            for wi in in_words {
                let (ids, n) = &mut words[wi];
                if !ids.windows(2).any(|p| p == [a, b]) {
                    continue;
                }
                for p in ids.windows(2) {
                    let k = (p[0], p[1]);
                    *pair_count.get_mut(&k).expect("counted") -= *n;
                    touched.insert(k);
                }
                let mut out = Vec::with_capacity(ids.len());
                let mut i = 0;
                while i < ids.len() {
                    if i + 1 < ids.len() && ids[i] == a && ids[i + 1] == b {
                        out.push(new_id);
                        i += 2;
                    } else {
                        out.push(ids[i]);
                        i += 1;
                    }
                }
                *ids = out;
                for p in ids.windows(2) {
                    let k = (p[0], p[1]);
                    *pair_count.entry(k).or_default() += *n;
                    where_.entry(k).or_default().insert(wi);
                    touched.insert(k);
                }
            }
            pair_count.remove(&(a, b));
            let mut touched: Vec<(u32, u32)> = touched.into_iter().collect();
            touched.sort_unstable();
            for k in touched {
                match pair_count.get(&k).copied() {
                    Some(0) | None => {
                        pair_count.remove(&k);
                    }
                    Some(n) => heap.push(entry(&symbols, k, n)),
                }
            }
        }
        for s in [START_OF_TEXT, END_OF_TEXT] {
            symbols.push(s.to_string());
        }
        let vocab = symbols
            .into_iter()
            .enumerate()
            .map(|(i, s)| (s, i as u32))
            .collect();
        Self::new(vocab, merges, special, CLIP_CONTEXT_LENGTH)
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

    /// Writes `vocab.json`, `merges.txt`, `tokenizer_config.json` and `special_tokens_map.json`
    /// (each atomically, creating `dir`): a folder transformers' `CLIPTokenizer.from_pretrained`
    /// and [`Self::from_folder`] load.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        for (name, bytes) in self.files() {
            diffuse_data::fs::write_atomic(&dir.join(&name), &bytes)
                .map_err(|e| Error::Weights(e.to_string()))?;
        }
        Ok(())
    }

    /// The files [`Self::save`] writes, as (name, bytes): for a folder written elsewhere (a
    /// training checkpoint).
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let mut write =
            |name: &str, text: String| files.push((name.to_string(), text.into_bytes()));
        let mut by_id: Vec<(&String, &u32)> = self.vocab.iter().collect();
        by_id.sort_by_key(|(t, id)| (**id, t.as_str()));
        let vocab: Map<String, Value> = by_id
            .into_iter()
            .map(|(t, id)| (t.clone(), Value::from(*id)))
            .collect();
        write(VOCAB_FILE, pretty(&Value::Object(vocab)));
        let mut merges = String::from("#version: 0.2\n");
        for (a, b) in &self.merges {
            merges.push_str(&format!("{a} {b}\n"));
        }
        write(MERGES_FILE, merges);

        let added_tokens = self.added_tokens();
        let added = |content: &str| {
            let normalized = added_tokens
                .iter()
                .any(|t| t.content == content && t.normalized);
            serde_json::json!({
                "content": content, "lstrip": false, "normalized": normalized, "rstrip": false,
                "single_word": false, "special": true,
            })
        };
        let mut config = self.config_extra.clone();
        let decoder: Map<String, Value> = added_tokens
            .iter()
            .map(|t| (t.id.to_string(), added(&t.content)))
            .collect();
        config.insert("added_tokens_decoder".into(), Value::Object(decoder));
        for (key, content) in self.special.keyed() {
            config.insert(key.into(), content.into());
        }
        config.insert("model_max_length".into(), self.model_max_length.into());
        config
            .entry("tokenizer_class")
            .or_insert_with(|| "CLIPTokenizer".into());
        config.entry("do_lower_case").or_insert(true.into());
        config.entry("errors").or_insert("replace".into());
        config
            .entry("clean_up_tokenization_spaces")
            .or_insert(false.into());
        write(CONFIG_FILE, pretty(&Value::Object(config)));

        let mut map = Map::new();
        for (key, content) in self.special.keyed() {
            let mut t = added(content);
            t.as_object_mut().expect("object").remove("special");
            map.insert(key.into(), t);
        }
        write(SPECIAL_TOKENS_FILE, pretty(&Value::Object(map)));
        files
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
        let last = chars.len().saturating_sub(1);
        // Each character (the last with `</w>`); one unk per unknown one (fuse_unk=False).
        let mut syms: Vec<u32> = chars
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let s = if i == last {
                    format!("{c}{END_OF_WORD}")
                } else {
                    c.to_string()
                };
                self.vocab.get(&s).copied().unwrap_or(self.unk_id)
            })
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

/// A pair in the training heap: the most frequent first, then the smallest strings.
#[derive(PartialEq, Eq)]
struct HeapEntry {
    count: u64,
    left: String,
    right: String,
    pair: (u32, u32),
}

impl Ord for HeapEntry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.count
            .cmp(&o.count)
            .then_with(|| (&o.left, &o.right).cmp(&(&self.left, &self.right)))
    }
}

impl PartialOrd for HeapEntry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
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

/// The content of a special token: a string or an AddedToken `{"content": ...}`; null is None.
fn token_content(v: &Value, file: &Path, key: &str) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Object(o) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(Error::Config(format!(
                "{}: `{key}` is an object without a string `content`; expected a string or an \
                 AddedToken {{\"content\": \"...\"}}",
                file.display()
            ))),
        },
        other => Err(Error::Config(format!(
            "{}: `{key}` is {other}; expected a string or an AddedToken {{\"content\": \"...\"}}",
            file.display()
        ))),
    }
}

/// `vocab.json`: an object of token → id.
fn read_vocab(path: &Path) -> Result<HashMap<String, u32>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "{}: {e} (a CLIP tokenizer folder needs {VOCAB_FILE}, an object of token → id)",
            path.display()
        ))
    })?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: malformed JSON: {e}", path.display())))?;
    let Value::Object(map) = v else {
        return Err(Error::Config(format!(
            "{}: expected an object of token → id",
            path.display()
        )));
    };
    map.into_iter()
        .map(
            |(t, id)| match id.as_u64().and_then(|i| u32::try_from(i).ok()) {
                Some(i) => Ok((t, i)),
                None => Err(Error::Config(format!(
                    "{}: token {t:?} has id {id}; expected a non-negative integer",
                    path.display()
                ))),
            },
        )
        .collect()
}

/// An AddedToken dict's `normalized` flag; false for a plain string or a dict without one.
fn normalized_flag(v: &Value) -> bool {
    v.get("normalized")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Splits one merge `left right` (`merges.txt` line or `tokenizer.json` string).
fn split_merge(line: &str) -> Option<(String, String)> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
            Some((a.to_string(), b.to_string()))
        }
        _ => None,
    }
}

/// transformers 5's `tokenizer.json`: a BPE model with `</w>` word ends (CLIP's), its vocabulary
/// and merges (`"a b"` strings or `["a", "b"]` pairs), and the added tokens it lists.
#[allow(clippy::type_complexity)]
fn read_tokenizer_json(
    path: &Path,
) -> Result<(HashMap<String, u32>, Vec<(String, String)>, Vec<AddedToken>)> {
    let bad = |msg: String| Error::Config(format!("{}: {msg}", path.display()));
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let model = v
        .get("model")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no `model` object; expected the tokenizers library's format".into()))?;
    let kind = model.get("type").and_then(Value::as_str).unwrap_or("");
    let suffix = model.get("end_of_word_suffix").and_then(Value::as_str);
    if kind != "BPE" || suffix != Some(END_OF_WORD) {
        return Err(bad(format!(
            "model type {kind:?} with end_of_word_suffix {suffix:?}; a CLIP tokenizer is BPE \
             with \"{END_OF_WORD}\""
        )));
    }
    let mut vocab = HashMap::new();
    for (t, id) in model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("`model.vocab` is not an object of token → id".into()))?
    {
        let id = id
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| bad(format!("`model.vocab`: token {t:?} has id {id}")))?;
        vocab.insert(t.clone(), id);
    }
    let mut merges = Vec::new();
    for (i, m) in model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`model.merges` is not a list".into()))?
        .iter()
        .enumerate()
    {
        let pair = match m {
            Value::String(line) => split_merge(line),
            Value::Array(p) => match (p.first(), p.get(1), p.len()) {
                (Some(Value::String(a)), Some(Value::String(b)), 2) => Some((a.clone(), b.clone())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| {
            bad(format!(
                "`model.merges[{i}]` is {m}; expected \"left right\" or [\"left\", \"right\"]"
            ))
        })?);
    }
    let mut added = Vec::new();
    for t in v
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let content = t.get("content").and_then(Value::as_str);
        let id = t
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|i| u32::try_from(i).ok());
        match (content, id) {
            (Some(c), Some(id)) => {
                vocab.entry(c.to_string()).or_insert(id);
                added.push(AddedToken {
                    content: c.to_string(),
                    id,
                    normalized: normalized_flag(t),
                });
            }
            _ => {
                return Err(bad(format!(
                    "`added_tokens` entry {t}: expected id and content"
                )))
            }
        }
    }
    Ok((vocab, merges, added))
}

/// `merges.txt`: an optional `#version` line, then one `left right` pair per line.
fn read_merges(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "{}: {e} (a CLIP tokenizer folder needs {MERGES_FILE}, one `left right` pair a line)",
            path.display()
        ))
    })?;
    let mut merges = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if (n == 0 && line.starts_with("#version")) || line.trim().is_empty() {
            continue;
        }
        match split_merge(line) {
            Some(pair) => merges.push(pair),
            None => {
                return Err(Error::Config(format!(
                    "{}: line {} is {line:?}; expected two tokens separated by one space",
                    path.display(),
                    n + 1
                )))
            }
        }
    }
    Ok(merges)
}

/// An optional JSON object file (None when absent).
fn read_json_object(path: &Path) -> Result<Option<Map<String, Value>>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    match diffuse_core::pyjson::parse(&text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(Error::Config(format!(
            "{}: expected a JSON object",
            path.display()
        ))),
        Err(e) => Err(Error::Config(format!(
            "{}: malformed JSON: {e}",
            path.display()
        ))),
    }
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("serializable");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary of the 512 byte tokens, `merges`' results and the two specials.
    fn tiny(merges: &[(&str, &str)]) -> ClipTokenizer {
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

    #[test]
    fn train_is_deterministic_and_round_trips() {
        let texts = [
            "a photo of a cat",
            "a photo of a dog",
            "A drawing of a CAT!",
            "two cats and a dog",
        ];
        let t1 = ClipTokenizer::train(texts, 40).unwrap();
        let t2 = ClipTokenizer::train(texts.iter().rev(), 40).unwrap();
        assert_eq!(t1.merges(), t2.merges(), "order of texts does not matter");
        // The most frequent pair first: `c a` (cat, cat, cats) and `o f</w>` (of ×3) tie at 3;
        // the smaller strings win.
        assert_eq!(t1.merges()[0], ("c".into(), "a".into()));
        assert_eq!(t1.merges()[1], ("o".into(), "f</w>".into()));
        assert_eq!(t1.vocab_size(), 512 + t1.merges().len() + 2);
        assert_eq!(t1.eos_id() as usize, t1.vocab_size() - 1);
        assert_eq!(t1.bos_id() as usize, t1.vocab_size() - 2);
        // Whole frequent words became single tokens.
        assert_eq!(t1.tokenize("photo").len(), 1);
        assert_eq!(
            t1.decode(&t1.encode("A photo of two Cats")),
            "a photo of two cats"
        );

        let dir = tempfile::tempdir().unwrap();
        t1.save(dir.path()).unwrap();
        let back = ClipTokenizer::from_folder(dir.path()).unwrap();
        assert_eq!(back.merges(), t1.merges());
        assert_eq!(back.vocab_size(), t1.vocab_size());
        assert_eq!(back.model_max_length(), 77);
        for text in texts {
            assert_eq!(back.encode(text), t1.encode(text));
        }
        let merges = std::fs::read_to_string(dir.path().join(MERGES_FILE)).unwrap();
        assert!(merges.starts_with("#version: 0.2\n"));
    }

    #[test]
    fn train_refuses_more_merges_than_clip_reads() {
        let e = ClipTokenizer::train(["a"], MAX_MERGES + 1).unwrap_err();
        assert!(e.to_string().contains("48894"), "{e}");
    }

    #[test]
    fn folder_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = ClipTokenizer::from_folder(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("vocab.json"), "{e}");
        tiny(&[]).save(dir.path()).unwrap();
        std::fs::write(dir.path().join(MERGES_FILE), "#version: 0.2\na b c\n").unwrap();
        let e = ClipTokenizer::from_folder(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("merges.txt") && e.contains("line 2"), "{e}");
        tiny(&[]).save(dir.path()).unwrap();
        std::fs::write(
            dir.path().join(SPECIAL_TOKENS_FILE),
            r#"{"pad_token": {"content": "<pad>"}}"#,
        )
        .unwrap();
        let e = ClipTokenizer::from_folder(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("pad_token") && e.contains("<pad>"), "{e}");
        std::fs::write(dir.path().join(SPECIAL_TOKENS_FILE), r#"{"pad_token": 3}"#).unwrap();
        let e = ClipTokenizer::from_folder(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("special_tokens_map.json"), "{e}");
    }

    #[test]
    fn added_token_dicts_and_the_map_override_the_config() {
        let dir = tempfile::tempdir().unwrap();
        tiny(&[]).save(dir.path()).unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            r#"{"model_max_length": 16, "pad_token": "<|endoftext|>", "foo": 1}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join(SPECIAL_TOKENS_FILE),
            r#"{"pad_token": {"content": "!", "lstrip": false}}"#,
        )
        .unwrap();
        let t = ClipTokenizer::from_folder(dir.path()).unwrap();
        assert_eq!(t.model_max_length(), 16);
        assert_eq!(t.pad_id(), t.token_to_id("!").unwrap());
        // "!" is a special token now: split out whole, never BPE'd as "!</w>".
        assert_eq!(
            t.tokenize("a!"),
            [t.token_to_id("a</w>").unwrap(), t.pad_id()]
        );
        let out = tempfile::tempdir().unwrap();
        t.save(out.path()).unwrap();
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join(CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(cfg["foo"], 1, "unknown keys are kept");
        assert_eq!(cfg["pad_token"], "!");
    }
}
