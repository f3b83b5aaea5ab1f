//! BPE training for [`ClipTokenizer::train`]: merges learnt greedily from word counts, the most
//! frequent adjacent pair first, from a max-heap of pair counts whose stale entries are skipped
//! as merges change the words.

use super::*;

impl ClipTokenizer {
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
                    let ids = word_symbols(&chars).map(|s| index[&s]).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
