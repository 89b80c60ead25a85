//! Packing a (prompt, completion) pair into model inputs, exactly as `docs/model-contract.md`
//! specifies (and as the training recipe does): the completion is kept, the prompt is cut
//! from the left.

use std::hash::{BuildHasher, RandomState};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use tokenizers::Tokenizer;

use super::ClassifierError;
use super::manifest::{Encoding, PromptRender};
use crate::conversation::Message;

/// Token ids of one packed pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    /// `[CLS] prompt [SEP] completion [SEP]` as vocabulary ids, unpadded.
    pub input_ids: Vec<i64>,
    /// 0 for `[CLS]`, the prompt and the first `[SEP]`; 1 for the completion and the last `[SEP]`.
    pub token_type_ids: Vec<i64>,
    /// Whether either side lost tokens to `max_length`.
    pub truncated: bool,
}

/// Tokenizes and packs (prompt, completion) pairs as a model's [`Encoding`] says.
pub struct PairEncoder {
    tokenizer: Tokenizer,
    encoding: Encoding,
    cls: i64,
    sep: i64,
    pad: i64,
    /// The kept tokens of recently packed prompts: a request's prompt is tokenized once
    /// for its input check, every attempt and every window of a long completion.
    prompts: PromptIds,
}

impl std::fmt::Debug for PairEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairEncoder").field("encoding", &self.encoding).finish_non_exhaustive()
    }
}

/// Prompt text -> its kept token ids, keyed by a 128-bit hash with per-process random keys
/// (two SipHash keys): no attacker can aim a collision at it, and by chance one is
/// negligible at this capacity.
struct PromptIds {
    cache: moka::sync::Cache<u128, Arc<Vec<u32>>>,
    hashers: (RandomState, RandomState),
}

impl PromptIds {
    /// Prompts remembered; each entry is at most `max_length` ids plus a few (about 1.5 KB).
    const CAPACITY: u64 = 1024;

    fn new() -> Self {
        PromptIds { cache: moka::sync::Cache::new(Self::CAPACITY), hashers: (RandomState::new(), RandomState::new()) }
    }

    fn key(&self, text: &str) -> u128 {
        (u128::from(self.hashers.0.hash_one(text)) << 64) | u128::from(self.hashers.1.hash_one(text))
    }
}

impl PairEncoder {
    /// Loads `tokenizer.json`, switching off its own padding and truncation; fails if the
    /// encoding's special tokens are not in the vocabulary.
    pub fn from_file(path: &Path, encoding: Encoding) -> Result<Self, ClassifierError> {
        let bytes = std::fs::read(path).map_err(|e| ClassifierError::Tokenizer {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        PairEncoder::from_bytes(path, &bytes, encoding)
    }

    /// Like [`PairEncoder::from_file`], from the file's bytes already read (`path` is named
    /// in errors): the bytes loaded are then the bytes a version digest names.
    pub fn from_bytes(path: &Path, bytes: &[u8], encoding: Encoding) -> Result<Self, ClassifierError> {
        let bad = |message: String| ClassifierError::Tokenizer { path: path.to_path_buf(), message };
        let mut tokenizer = Tokenizer::from_bytes(bytes).map_err(|e| bad(e.to_string()))?;
        // The pair is packed by hand below; the file's own padding/truncation must not interfere.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| bad(e.to_string()))?;
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .map(i64::from)
                .ok_or_else(|| bad(format!("special token `{token}` is not in the vocabulary")))
        };
        let (cls, sep, pad) = (id(&encoding.cls_token)?, id(&encoding.sep_token)?, id(&encoding.pad_token)?);
        Ok(PairEncoder { tokenizer, encoding, cls, sep, pad, prompts: PromptIds::new() })
    }

    /// Id of the padding token, used to right-pad a batch.
    pub fn pad_id(&self) -> i64 {
        self.pad
    }

    /// Most tokens in one packed pair, special tokens included.
    pub fn max_length(&self) -> usize {
        self.encoding.max_length
    }

    /// Byte ranges of `completion` that together cover all of it, each short enough to be
    /// read whole beside the end of the prompt: one range when the completion fits, else
    /// windows of `max_length - 3 - min_prompt_tokens` tokens, each overlapping the one
    /// before by a quarter, so that no part of a long completion goes unread.
    pub fn completion_windows(&self, completion: &str) -> Result<Vec<Range<usize>>, ClassifierError> {
        let size = self.encoding.max_length.saturating_sub(3 + self.encoding.min_prompt_tokens).max(1);
        let whole = std::iter::once(0..completion.len()).collect();
        // Every token covers at least one character: text this short fits without tokenizing.
        if completion.chars().count() <= size {
            return Ok(whole);
        }
        let enc = self
            .tokenizer
            .encode(completion, false)
            .map_err(|e| ClassifierError::Inference(format!("tokenizer: {e}")))?;
        let offsets = enc.get_offsets();
        if offsets.len() <= size {
            return Ok(whole);
        }
        let boundary = |mut i: usize| {
            i = i.min(completion.len());
            while !completion.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        let step = (size - size / 4).max(1);
        let mut windows = Vec::new();
        let mut first = 0;
        loop {
            let last = (first + size).min(offsets.len());
            let start = if first == 0 { 0 } else { boundary(offsets[first].0) };
            let end = if last == offsets.len() { completion.len() } else { boundary(offsets[last - 1].1) };
            windows.push(start..end.max(start));
            if last == offsets.len() {
                return Ok(windows);
            }
            first += step;
        }
    }

    /// The prompt as the model reads it.
    pub fn render_prompt(&self, prompt: &[Message]) -> String {
        match self.encoding.prompt_render {
            PromptRender::RoleLines => render_role_lines(prompt),
        }
    }

    /// Tokenizes both sides and packs them as docs/model-contract.md says (the prompt loses
    /// its oldest tokens first, the completion its last); `prompt` is already rendered.
    pub fn encode(&self, prompt: &str, completion: &str) -> Result<EncodedPair, ClassifierError> {
        // Neither side can keep more than this many tokens.
        let need = self.encoding.max_length.saturating_sub(3);
        let prompt_ids = self.prompt_ids(prompt, need)?;
        let completion_ids = self.tokenize_part(completion, need, Side::Head)?;
        Ok(pack(
            &prompt_ids,
            &completion_ids,
            self.encoding.max_length,
            self.encoding.min_prompt_tokens,
            self.cls,
            self.sep,
        ))
    }

    /// [`Self::tokenize_part`] of a prompt, remembered.
    fn prompt_ids(&self, prompt: &str, need: usize) -> Result<Arc<Vec<u32>>, ClassifierError> {
        if prompt.is_empty() {
            return Ok(Arc::default());
        }
        let key = self.prompts.key(prompt);
        if let Some(ids) = self.prompts.cache.get(&key) {
            return Ok(ids);
        }
        let ids = Arc::new(self.tokenize_part(prompt, need, Side::Tail)?);
        self.prompts.cache.insert(key, ids.clone());
        Ok(ids)
    }

    /// The tokens of `text`, or of enough of its end (`Tail`) or start (`Head`) to give more
    /// than `need` of them. WordPiece reads text word by word, so a part cut at a whitespace
    /// the normalizer keeps gives exactly the whole text's last (first) tokens; parts grow
    /// fourfold, so a long prompt costs what its last few kilobytes do. Text that gives few
    /// tokens for its bytes (characters the normalizer deletes, words over 100 characters) is
    /// tokenized whole once the parts pass [`MAX_BYTES_PER_TOKEN`] times `max_length` bytes:
    /// correct before cheap, and bounded by the request body limit.
    fn tokenize_part(&self, text: &str, need: usize, side: Side) -> Result<Vec<u32>, ClassifierError> {
        let tokenize = |part: &str| -> Result<Vec<u32>, ClassifierError> {
            Ok(self
                .tokenizer
                .encode(part, false)
                .map_err(|e| ClassifierError::Inference(format!("tokenizer: {e}")))?
                .get_ids()
                .to_vec())
        };
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let limit = self.encoding.max_length.saturating_mul(MAX_BYTES_PER_TOKEN);
        let mut bytes = need.saturating_mul(FIRST_BYTES_PER_TOKEN);
        while bytes < limit {
            let part = match side {
                Side::Tail => tail(text, bytes),
                Side::Head => head(text, bytes),
            };
            if part.len() == text.len() {
                break;
            }
            // A part that does not start (end) at a kept whitespace may have cut a word.
            let clean = match side {
                Side::Tail => part.starts_with(kept_space),
                Side::Head => text[part.len()..].starts_with(kept_space),
            };
            let ids = tokenize(part)?;
            // More than `need`: the whole text is then longer than what is kept, as `pack`
            // must know to report truncation.
            if clean && ids.len() > need {
                return Ok(ids);
            }
            bytes = bytes.saturating_mul(4);
        }
        tokenize(text)
    }
}

/// Whitespace the BERT normalizer keeps as a word boundary (it deletes the control characters
/// VT, FF and NEL, joining the words around them).
fn kept_space(c: char) -> bool {
    c.is_whitespace() && !matches!(c, '\u{b}' | '\u{c}' | '\u{85}')
}

#[derive(Clone, Copy)]
enum Side {
    Tail,
    Head,
}

/// Bytes per token to try first: about twice what English text takes, so one pass suffices
/// for most prompts.
const FIRST_BYTES_PER_TOKEN: usize = 8;

/// Bytes per token past which parts stop growing and the whole text is tokenized: WordPiece
/// reads a word of more than 100 characters (up to 4 bytes each) as one `[UNK]`, plus the
/// space before the next word.
const MAX_BYTES_PER_TOKEN: usize = 404;

/// The last `cap` bytes of `text` or a little less, starting at a whitespace (no word cut).
fn tail(text: &str, cap: usize) -> &str {
    if text.len() <= cap {
        return text;
    }
    let mut start = text.len() - cap;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let rest = &text[start..];
    rest.find(kept_space).map_or(rest, |i| &rest[i..])
}

/// The first `cap` bytes of `text` or a little less, ending at a whitespace (no word cut).
fn head(text: &str, cap: usize) -> &str {
    if text.len() <= cap {
        return text;
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let first = &text[..end];
    first.rfind(kept_space).map_or(first, |i| &first[..i])
}

/// `"{role}: {content}"` per message, roles in lower case, joined by newlines.
pub fn render_role_lines(prompt: &[Message]) -> String {
    let mut out = String::new();
    for (i, m) in prompt.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&m.role.to_lowercase());
        out.push_str(": ");
        out.push_str(&m.content);
    }
    out
}

/// `[CLS] prompt[-p:] [SEP] completion[..c] [SEP]`; see the model contract for the budget.
pub(crate) fn pack(
    prompt: &[u32],
    completion: &[u32],
    max_length: usize,
    min_prompt_tokens: usize,
    cls: i64,
    sep: i64,
) -> EncodedPair {
    let budget = max_length.saturating_sub(3);
    let reserve = prompt.len().min(min_prompt_tokens);
    let completion_keep = completion.len().min(budget.saturating_sub(reserve));
    let prompt_keep = prompt.len().min(budget - completion_keep);
    let prompt_part = &prompt[prompt.len() - prompt_keep..];
    let completion_part = &completion[..completion_keep];

    let mut input_ids = Vec::with_capacity(prompt_keep + completion_keep + 3);
    input_ids.push(cls);
    input_ids.extend(prompt_part.iter().map(|&t| i64::from(t)));
    input_ids.push(sep);
    let first_segment = input_ids.len();
    input_ids.extend(completion_part.iter().map(|&t| i64::from(t)));
    input_ids.push(sep);
    let mut token_type_ids = vec![0i64; input_ids.len()];
    token_type_ids[first_segment..].fill(1);
    EncodedPair {
        input_ids,
        token_type_ids,
        truncated: prompt_keep < prompt.len() || completion_keep < completion.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_cut_at_whitespace_and_char_boundaries() {
        assert_eq!(tail("short", 10), "short");
        assert_eq!(tail("alpha beta gamma", 8), " gamma");
        assert_eq!(head("alpha beta gamma", 12), "alpha beta");
        let accents = "é".repeat(10);
        assert!(tail(&accents, 5).len() <= 5 && head(&accents, 5).len() <= 5);
        assert_eq!(head("nowhitespace", 4), "nowh");
    }

    fn encoder() -> PairEncoder {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/rulegate-minilm-rbr");
        let manifest = super::super::manifest::Manifest::from_file(&dir.join("manifest.json")).unwrap();
        PairEncoder::from_file(&dir.join("tokenizer.json"), manifest.encoding).unwrap()
    }

    /// The pair as packing the whole texts' tokens gives it.
    fn packed_whole(e: &PairEncoder, prompt: &str, completion: &str) -> EncodedPair {
        let ids = |t: &str| e.tokenizer.encode(t, false).unwrap().get_ids().to_vec();
        let (p, c) = (ids(prompt), ids(completion));
        pack(&p, &c, e.encoding.max_length, e.encoding.min_prompt_tokens, e.cls, e.sep)
    }

    #[test]
    fn tokenizing_only_the_kept_parts_packs_what_the_whole_texts_do() {
        let e = encoder();
        let words = "The committee reviewed the quarterly budget, the hiring plan and naïve résumés. ";
        let cjk = "委员会审查了预算。";
        let long_word = format!("{} end", "x".repeat(150));
        let cases = [
            (String::new(), String::new()),
            ("hi".to_string(), "hello".to_string()),
            (words.repeat(3), words.repeat(2)),
            (words.repeat(400), words.repeat(400)),
            (cjk.repeat(500), cjk.repeat(500)),
            (format!("{}{}", long_word.repeat(30), words.repeat(10)), words.repeat(10) + &long_word.repeat(30)),
            ("y".repeat(20_000), "z".repeat(20_000)),
            (format!("{}\n\n{}", words.repeat(50), "Now answer: what is 2+2?"), "4".to_string()),
            // Characters the normalizer deletes give no tokens: a tail of them must not hide the text before.
            (format!("user: How do I build a bomb?{}", "\u{200B}".repeat(60_000)), " \u{200B}".repeat(40_000)),
            // A word longer than everything the parts grow to is one [UNK]; the text after it counts.
            ("y".repeat(10) + " ok", format!("{} the harmful part", "x".repeat(160_000))),
            // Whitespace the normalizer deletes (form feed, NEL) is no word boundary.
            (
                format!("{}{}\x0c{}", "a ".repeat(2000), "b".repeat(90), "c".repeat(3000)),
                format!("{}\x0c{} more", "b".repeat(90), "c".repeat(3000)) + &words.repeat(3),
            ),
            (words.repeat(40) + &"\x0c".repeat(4000) + &words.repeat(40), words.repeat(40) + &"\u{85}".repeat(4000)),
        ];
        for (prompt, completion) in &cases {
            assert_eq!(
                e.encode(prompt, completion).unwrap(),
                packed_whole(&e, prompt, completion),
                "prompt {} bytes, completion {} bytes",
                prompt.len(),
                completion.len()
            );
        }
    }

    #[test]
    fn a_prompt_is_tokenized_once_and_remembered_ids_pack_the_same() {
        let e = encoder();
        let prompt = "system: Be brief.\nuser: How do I descale a kettle? ".repeat(40);
        let first = e.encode(&prompt, "Use vinegar.").unwrap();
        let key = e.prompts.key(&prompt);
        let remembered = e.prompts.cache.get(&key).expect("the prompt's ids are remembered");
        for completion in ["Use vinegar.", "Boil water with citric acid, then rinse twice.", ""] {
            assert_eq!(e.encode(&prompt, completion).unwrap(), packed_whole(&e, &prompt, completion));
        }
        assert_eq!(first, packed_whole(&e, &prompt, "Use vinegar."));
        let again = e.prompts.cache.get(&key).unwrap();
        assert!(Arc::ptr_eq(&remembered, &again), "later pairs reuse the ids instead of tokenizing again");
        // A prompt differing in its first (cut) byte still gets its own entry.
        let other = format!("S{}", &prompt[1..]);
        assert_ne!(e.prompts.key(&other), key);
        assert_eq!(e.encode(&other, "x").unwrap(), packed_whole(&e, &other, "x"));
    }

    #[test]
    fn short_pair_is_kept_whole() {
        let p = pack(&[10, 11], &[20, 21, 22], 16, 4, 1, 2);
        assert_eq!(p.input_ids, vec![1, 10, 11, 2, 20, 21, 22, 2]);
        assert_eq!(p.token_type_ids, vec![0, 0, 0, 0, 1, 1, 1, 1]);
        assert!(!p.truncated);
    }

    #[test]
    fn completion_is_kept_and_prompt_cut_from_the_left() {
        let prompt: Vec<u32> = (100..120).collect();
        let completion: Vec<u32> = (200..205).collect();
        // budget 13: completion 5 kept, prompt keeps its last 8
        let p = pack(&prompt, &completion, 16, 4, 1, 2);
        assert_eq!(p.input_ids.len(), 16);
        assert_eq!(&p.input_ids[1..9], &(112..120).collect::<Vec<i64>>()[..]);
        assert_eq!(&p.input_ids[10..15], &[200, 201, 202, 203, 204]);
        assert!(p.truncated);
    }

    #[test]
    fn long_completion_leaves_room_for_the_prompt_reserve() {
        let prompt: Vec<u32> = (100..120).collect();
        let completion: Vec<u32> = (200..300).collect();
        let p = pack(&prompt, &completion, 16, 4, 1, 2);
        // budget 13, reserve 4 -> completion keeps its first 9, prompt its last 4
        assert_eq!(&p.input_ids[1..5], &[116, 117, 118, 119]);
        assert_eq!(p.input_ids[5], 2);
        assert_eq!(&p.input_ids[6..15], &(200..209).collect::<Vec<i64>>()[..]);
        assert_eq!(p.input_ids.len(), 16);
    }

    #[test]
    fn empty_sides_are_valid() {
        let p = pack(&[], &[], 16, 4, 1, 2);
        assert_eq!(p.input_ids, vec![1, 2, 2]);
        assert_eq!(p.token_type_ids, vec![0, 0, 1]);
    }

    #[test]
    fn roles_render_lowercase_lines() {
        let m = [Message::new("User", "hi"), Message::assistant("hello"), Message::user("bye")];
        assert_eq!(render_role_lines(&m), "user: hi\nassistant: hello\nuser: bye");
    }
}
