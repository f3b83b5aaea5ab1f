//! CLIP tokenizer and text encoder parity with transformers 5.25 (fixtures of
//! `tools/fixtures/gen_sd.py` in `tests/fixtures/sd/`, indexed by `sd_fixtures.json`):
//! 29 prompts through three tokenizer folders (SD 1.x layout, SD 2.x layout with pad `"!"`,
//! transformers 5's `tokenizer.json`) — padded/truncated ids and masks and untruncated ids,
//! exactly; two random-weight `CLIPTextModel`s (quick_gelu with eos_token_id 733; gelu with the
//! legacy eos_token_id 2) — last hidden state, pooled output, the penultimate hidden state,
//! clip-skip 1 and the padding-masked output, to 1e-4; the BPE training of the fixture's
//! vocabulary; and save → load round trips.

use candle_core::{DType, Device, Tensor};
use diffuse_models::text::{ClipTextModel, ClipTokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;
use common::{fixtures, load_st, max_abs_err};

fn sd() -> PathBuf {
    fixtures().join("sd")
}

fn tokens_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(sd().join("tokens.json")).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Every prompt of tokens.json through the tokenizer of `folder`, against the rows of `key`.
fn check_tokenizer(folder: &Path, key: &str) {
    let t = tokens_json();
    let prompts = t["prompts"].as_array().unwrap();
    let rows = t[key].as_array().unwrap();
    assert_eq!(prompts.len(), rows.len());
    let tok = ClipTokenizer::from_folder(folder).unwrap();
    assert_eq!(tok.model_max_length(), 16);
    assert_eq!(tok.vocab_size(), 734);
    for (p, row) in prompts.iter().zip(rows) {
        let p = p.as_str().unwrap();
        let (ids, mask) = tok.encode_padded(p, 16).unwrap();
        assert_eq!(ids, u32s(&row["input_ids"]), "{key}: input_ids of {p:?}");
        assert_eq!(mask, u32s(&row["attention_mask"]), "{key}: mask of {p:?}");
        assert_eq!(
            tok.encode(p),
            u32s(&row["untruncated_ids"]),
            "{key}: untruncated ids of {p:?}"
        );
    }
    eprintln!("{key}: {} prompts, ids exact", prompts.len());
}

#[test]
fn tokenizer_sd1_layout_matches_transformers() {
    check_tokenizer(&sd().join("tokenizer"), "tokenizer");
}

#[test]
fn tokenizer_sd2_pad_bang_matches_transformers() {
    let dir = sd().join("tokenizer_pad_bang");
    check_tokenizer(&dir, "tokenizer_pad_bang");
    let tok = ClipTokenizer::from_folder(&dir).unwrap();
    assert_eq!(tok.pad_id(), 0);
}

#[test]
fn tokenizer_json_of_transformers_5_matches() {
    // save_pretrained of transformers 5: tokenizer.json + tokenizer_config.json only; the
    // fixture notes it gives exactly `tokenizer/`'s ids.
    check_tokenizer(&sd().join("pipeline_sd").join("tokenizer"), "tokenizer");
}

#[test]
fn saved_tokenizers_load_back_identically() {
    let t = tokens_json();
    for (name, key) in [
        ("tokenizer", "tokenizer"),
        ("tokenizer_pad_bang", "tokenizer_pad_bang"),
    ] {
        let tok = ClipTokenizer::from_folder(&sd().join(name)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        tok.save(dir.path()).unwrap();
        check_tokenizer(dir.path(), key);
        let back = ClipTokenizer::from_folder(dir.path()).unwrap();
        assert_eq!(back.added_tokens(), tok.added_tokens(), "{name}");
    }
    assert!(t["prompts"].as_array().unwrap().len() > 20);
}

/// gen_sd.py's CORPUS (emoji-style captions), from which the fixture's 220 merges were learnt.
const CORPUS: &str = "
grinning face|grinning face with big eyes|grinning face with smiling eyes|beaming face with smiling eyes
grinning squinting face|grinning face with sweat|rolling on the floor laughing|face with tears of joy
slightly smiling face|upside down face|winking face|smiling face with smiling eyes|smiling face with halo
smiling face with hearts|smiling face with heart eyes|star struck|face blowing a kiss|kissing face
smiling face with tear|face savoring food|face with tongue|winking face with tongue|zany face
money mouth face|smiling face with open hands|face with hand over mouth|thinking face|saluting face
zipper mouth face|face with raised eyebrow|neutral face|expressionless face|face without mouth
smirking face|unamused face|face with rolling eyes|grimacing face|lying face|relieved face|pensive face
sleepy face|drooling face|sleeping face|face with medical mask|face with thermometer|nauseated face
red apple|green apple|pear|tangerine|lemon|banana|watermelon|grapes|strawberry|cherries|peach|mango
a red apple|a red apple on a table|a green apple on a red table|two red apples|three green pears
a photo of a cat|a photo of a dog|a painting of a red apple|a drawing of a smiling face
cat face|dog face|mouse face|rabbit face|fox|bear|panda|tiger face|lion|cow face|pig face|frog|monkey face
horse face|unicorn|chicken|penguin|bird|eagle|duck|owl|wolf|turtle|snake|dragon|whale|dolphin|fish
red heart|orange heart|yellow heart|green heart|blue heart|purple heart|brown heart|black heart|white heart
red circle|orange circle|yellow circle|green circle|blue circle|purple circle|brown circle|black circle
red square|orange square|yellow square|green square|blue square|purple square|brown square|white square
sun with face|full moon face|new moon face|star|glowing star|rainbow|cloud|snowflake|fire|water wave
it's a red apple|don't eat the green apple|we'll see the yellow sun|i'm happy|they're smiling|you've won
a cat sitting on a table|a dog sitting on the floor|a red heart and a blue heart|the moon and the stars
";

#[test]
fn training_reproduces_the_fixture_vocabulary() {
    let captions: Vec<&str> = CORPUS.lines().flat_map(|l| l.split('|')).collect();
    let trained = ClipTokenizer::train(&captions, 220).unwrap();
    let fixture = ClipTokenizer::from_folder(&sd().join("tokenizer")).unwrap();
    assert_eq!(trained.merges(), fixture.merges());
    assert_eq!(trained.vocab_size(), fixture.vocab_size());
    // Same ids for every token, so the trained tokenizer encodes as the fixture's does.
    let t = tokens_json();
    for p in t["prompts"].as_array().unwrap() {
        let p = p.as_str().unwrap();
        assert_eq!(trained.encode(p), fixture.encode(p), "{p:?}");
    }
}

/// Loads a fixture encoder, checks every output of io.safetensors and returns the largest
/// error.
fn check_encoder(model: &ClipTextModel, io: &std::collections::HashMap<String, Tensor>) -> f32 {
    let ids = &io["input_ids"];
    assert_eq!(ids.dtype(), DType::I64);
    let out = model.forward_with(ids, None, true).unwrap();
    let states = out.hidden_states.as_ref().unwrap();
    assert_eq!(states.len(), model.config().num_hidden_layers + 1);
    let masked = model
        .forward_with(ids, Some(&io["attention_mask"]), false)
        .unwrap();
    let skip1 = model.prompt_embeds(ids, None, 1).unwrap();
    let cases = [
        ("last_hidden_state", &out.last_hidden_state),
        ("pooler_output", &out.pooler_output),
        ("hidden_states_penultimate", &states[states.len() - 2]),
        ("clip_skip1", &skip1),
        ("last_hidden_state_masked", &masked.last_hidden_state),
    ];
    let mut worst = 0f32;
    for (key, got) in cases {
        let e = max_abs_err(got, &io[key]);
        eprintln!("  {key}: max abs error {e:e}");
        assert!(e <= 1e-4, "{key}: max abs error {e:e}");
        worst = worst.max(e);
    }
    worst
}

#[test]
fn text_encoders_match_transformers() {
    for name in ["text_encoder_sd1", "text_encoder_sd2"] {
        let dir = sd().join(name);
        let (model, _) = ClipTextModel::load(&dir, &Device::Cpu).unwrap();
        let io = load_st(&dir.join("io.safetensors"));
        eprintln!("{name}:");
        let worst = check_encoder(&model, &io);
        eprintln!("{name}: worst {worst:e}");
        // The pooled positions transformers took.
        let idx: Vec<i64> = io["pooler_index"].to_vec1().unwrap();
        let last = &io["last_hidden_state"];
        for (row, &i) in idx.iter().enumerate() {
            let want = last.get(row).unwrap().get(i as usize).unwrap();
            let got = io["pooler_output"].get(row).unwrap();
            assert_eq!(max_abs_err(&got, &want), 0.0);
        }
    }
}

#[test]
fn tokenizer_and_encoder_together_give_the_fixture_embeddings() {
    // SD's encode_prompt: tokenizer(prompts, padding="max_length", truncation=True) → model.
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(sd().join("sd_fixtures.json")).unwrap())
            .unwrap();
    for name in ["sd1", "sd2"] {
        let te = &index["text_encoders"][name];
        let dir = sd().join(te["dir"].as_str().unwrap());
        let tok =
            ClipTokenizer::from_folder(&sd().join(te["tokenizer"].as_str().unwrap())).unwrap();
        let prompts: Vec<&str> = te["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        let mut flat = Vec::new();
        for p in &prompts {
            flat.extend(tok.encode_padded(p, tok.model_max_length()).unwrap().0);
        }
        let ids = Tensor::from_vec(flat, (prompts.len(), 16), &Device::Cpu).unwrap();
        let io = load_st(&dir.join("io.safetensors"));
        let want: Vec<Vec<i64>> = io["input_ids"].to_vec2().unwrap();
        let got: Vec<Vec<u32>> = ids.to_vec2().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.iter().map(|&x| x as i64).collect::<Vec<_>>(), *w);
        }
        let (model, _) = ClipTextModel::load(&dir, &Device::Cpu).unwrap();
        let emb = model.prompt_embeds(&ids, None, 0).unwrap();
        assert!(max_abs_err(&emb, &io["last_hidden_state"]) <= 1e-4);
    }
}

#[test]
fn saved_text_encoder_loads_back_identically() {
    let dir = sd().join("text_encoder_sd2");
    let (model, _) = ClipTextModel::load(&dir, &Device::Cpu).unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save(out.path()).unwrap();
    let (back, _) = ClipTextModel::load(out.path(), &Device::Cpu).unwrap();
    assert_eq!(back.config(), model.config(), "config round trip");
    let io = load_st(&dir.join("io.safetensors"));
    let a = model.forward(&io["input_ids"]).unwrap().last_hidden_state;
    let b = back.forward(&io["input_ids"]).unwrap().last_hidden_state;
    assert_eq!(max_abs_err(&a, &b), 0.0);
    // The saved file uses SD's (transformers 4's) prefixed names.
    let saved = load_st(&out.path().join("model.safetensors"));
    assert!(saved.keys().all(|k| k.starts_with("text_model.")));
    assert_eq!(saved.len(), model.named_tensors().len());
}
