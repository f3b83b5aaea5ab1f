//! Tokenizer folders in and out: SD's `vocab.json` + `merges.txt` (+ `tokenizer_config.json`,
//! `special_tokens_map.json`), as transformers 4's `save_pretrained` writes them, and transformers
//! 5's one-file `tokenizer.json`; see the parent module for what a folder holds.

use super::*;

impl ClipTokenizer {
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
    use super::super::tests::tiny;
    use super::*;

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
