//! The "chat" tokenizer, used both to index message bodies and to tokenize queries.
//!
//! - Runs of letters/digits in alphabetic scripts (Latin, Cyrillic, Greek, …) become one token,
//!   lowercased and ASCII-folded ("Café" → "cafe", "Straße" → "strasse"). Combining diacritics
//!   inside a word are dropped, so decomposed "cafe\u{301}" is "cafe" too, and so are Greek
//!   tonos and dialytika ("Καλημέρα" → "καλημερα").
//! - Runs of CJK characters (Han, Hiragana, Katakana, Hangul) become overlapping bigrams
//!   ("北京开会" → 北京, 京开, 开会); a lone CJK character is a token on its own.
//! - A change between CJK and non-CJK splits a run ("Rust编程" → rust, 编程).
//! - Everything else (spaces, punctuation, symbols, emoji) separates tokens and is dropped.
//!
//! Positions increase by one per token, so phrase queries over bigrams work.

use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, TextAnalyzer, Token, TokenStream, Tokenizer,
};

/// The name the tokenizer is registered under on the index.
pub const TOKENIZER_NAME: &str = "chat";

/// Longest word token, in characters; the rest of a longer run is dropped (URLs, base64, …).
const MAX_WORD_CHARS: usize = 64;

/// Splits text into raw tokens (not yet lowercased or folded). Use [`chat_analyzer`] for the
/// full pipeline.
#[derive(Clone, Default)]
pub struct ChatTokenizer {
    tokens: Vec<Token>,
}

/// The full "chat" analyzer: [`ChatTokenizer`], then lowercasing, then ASCII folding.
pub fn chat_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(ChatTokenizer::default())
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// The tokens the index would store for `text`, in order.
pub fn tokens(text: &str) -> Vec<String> {
    let mut analyzer = chat_analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while let Some(token) = stream.next() {
        out.push(token.text.clone());
    }
    out
}

pub struct ChatTokenStream<'a> {
    tokens: &'a mut Vec<Token>,
    /// One past the current token; 0 before the first `advance`.
    next: usize,
    /// Returned by `token()` before the first `advance` or on an empty stream, so that no
    /// call order can index out of bounds.
    blank: Token,
}

impl TokenStream for ChatTokenStream<'_> {
    fn advance(&mut self) -> bool {
        if self.next < self.tokens.len() {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn token(&self) -> &Token {
        match self.next.checked_sub(1).and_then(|i| self.tokens.get(i)) {
            Some(token) => token,
            None => &self.blank,
        }
    }

    fn token_mut(&mut self) -> &mut Token {
        match self
            .next
            .checked_sub(1)
            .and_then(|i| self.tokens.get_mut(i))
        {
            Some(token) => token,
            None => &mut self.blank,
        }
    }
}

impl Tokenizer for ChatTokenizer {
    type TokenStream<'a> = ChatTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> ChatTokenStream<'a> {
        self.tokens.clear();
        split(text, &mut self.tokens);
        ChatTokenStream {
            tokens: &mut self.tokens,
            next: 0,
            blank: Token::default(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Word,
    Cjk,
    /// A combining diacritic: continues a word, contributes nothing to its text.
    Mark,
    Other,
}

fn class(c: char) -> Class {
    if c.is_ascii() {
        return if c.is_ascii_alphanumeric() {
            Class::Word
        } else {
            Class::Other
        };
    }
    if is_cjk(c) {
        Class::Cjk
    } else if is_combining_mark(c) {
        Class::Mark
    } else if c.is_alphanumeric() {
        Class::Word
    } else {
        Class::Other
    }
}

/// Han ideographs, Hiragana, Katakana (full and half width), Hangul syllables and jamo.
pub(crate) fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF // Hangul Jamo
        | 0x3005..=0x3007 // 々 〆 〇
        | 0x3041..=0x309F // Hiragana
        | 0x30A0..=0x30FA | 0x30FC..=0x30FF // Katakana (without the middle dot ・)
        | 0x3131..=0x318E // Hangul compatibility jamo
        | 0x31F0..=0x31FF // Katakana phonetic extensions
        | 0x3400..=0x4DBF // CJK extension A
        | 0x4E00..=0x9FFF // CJK unified ideographs
        | 0xA960..=0xA97F // Hangul Jamo extended A
        | 0xAC00..=0xD7AF // Hangul syllables
        | 0xD7B0..=0xD7FF // Hangul Jamo extended B
        | 0xF900..=0xFAFF // CJK compatibility ideographs
        | 0xFF66..=0xFF9F // half-width Katakana
        | 0xFFA0..=0xFFDC // half-width Hangul
        | 0x1B000..=0x1B16F // Kana supplement / extended
        | 0x20000..=0x323AF // CJK extensions B–H, compatibility supplement
    )
}

/// Greek vowels with tonos or dialytika → the plain vowel (ASCII folding leaves Greek alone).
pub(crate) fn strip_greek_accent(c: char) -> char {
    match c {
        'Ά' => 'Α',
        'Έ' => 'Ε',
        'Ή' => 'Η',
        'Ί' | 'Ϊ' => 'Ι',
        'Ό' => 'Ο',
        'Ύ' | 'Ϋ' => 'Υ',
        'Ώ' => 'Ω',
        'ά' => 'α',
        'έ' => 'ε',
        'ή' => 'η',
        'ί' | 'ϊ' | 'ΐ' => 'ι',
        'ό' => 'ο',
        'ύ' | 'ϋ' | 'ΰ' => 'υ',
        'ώ' => 'ω',
        _ => c,
    }
}

fn is_combining_mark(c: char) -> bool {
    matches!(c as u32,
        0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F
    )
}

fn push(out: &mut Vec<Token>, from: usize, to: usize, text: String) {
    let position = out.len();
    out.push(Token {
        offset_from: from,
        offset_to: to,
        position,
        text,
        position_length: 1,
    });
}

/// Appends the raw tokens of `text` to `out`.
fn split(text: &str, out: &mut Vec<Token>) {
    let mut chars = text.char_indices().peekable();
    // Byte offsets of the characters of the current CJK run, plus its end.
    let mut cjk: Vec<(usize, usize)> = Vec::new();
    while let Some(&(start, c)) = chars.peek() {
        match class(c) {
            Class::Other | Class::Mark => {
                chars.next();
            }
            Class::Word => {
                let mut word = String::new();
                let mut kept = 0usize;
                let mut end = start;
                while let Some(&(i, c)) = chars.peek() {
                    match class(c) {
                        Class::Word => {
                            if kept < MAX_WORD_CHARS {
                                word.push(strip_greek_accent(c));
                                kept += 1;
                                end = i + c.len_utf8();
                            }
                        }
                        Class::Mark => {
                            if kept < MAX_WORD_CHARS {
                                end = i + c.len_utf8();
                            }
                        }
                        Class::Cjk | Class::Other => break,
                    }
                    chars.next();
                }
                push(out, start, end, word);
            }
            Class::Cjk => {
                cjk.clear();
                while let Some(&(i, c)) = chars.peek() {
                    if class(c) != Class::Cjk {
                        break;
                    }
                    cjk.push((i, i + c.len_utf8()));
                    chars.next();
                }
                if let [(from, to)] = cjk[..] {
                    push(out, from, to, text[from..to].to_string());
                } else {
                    for pair in cjk.windows(2) {
                        let (from, to) = (pair[0].0, pair[1].1);
                        push(out, from, to, text[from..to].to_string());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Vec<String> {
        tokens(s)
    }

    #[test]
    fn latin_words_are_lowercased_and_folded() {
        assert_eq!(t("Hello, World!"), ["hello", "world"]);
        assert_eq!(t("Café crème"), ["cafe", "creme"]);
        assert_eq!(t("Straße"), ["strasse"]);
        assert_eq!(t("cafe\u{301}s"), ["cafes"]);
        assert_eq!(t("ÀÉÎÕÜ ñ ø"), ["aeiou", "n", "o"]);
        assert_eq!(t("Ｒｕｓｔ"), ["rust"]);
        assert_eq!(t("v1.2 don't"), ["v1", "2", "don", "t"]);
    }

    #[test]
    fn other_alphabetic_scripts_are_words() {
        assert_eq!(t("Привет, МИР"), ["привет", "мир"]);
        assert_eq!(t("Γειά σου"), ["γεια", "σου"]);
    }

    #[test]
    fn cjk_runs_become_bigrams() {
        assert_eq!(t("北京开会"), ["北京", "京开", "开会"]);
        assert_eq!(t("猫"), ["猫"]);
        assert_eq!(t("猫 狗"), ["猫", "狗"]);
        assert_eq!(
            t("안녕하세요 여러분"),
            ["안녕", "녕하", "하세", "세요", "여러", "러분"]
        );
        assert_eq!(t("東京で会議"), ["東京", "京で", "で会", "会議"]);
        assert_eq!(
            t("カタカナ・テスト"),
            ["カタ", "タカ", "カナ", "テス", "スト"]
        );
    }

    #[test]
    fn script_changes_split_runs() {
        assert_eq!(t("Rust编程语言"), ["rust", "编程", "程语", "语言"]);
        assert_eq!(t("用Go写"), ["用", "go", "写"]);
    }

    #[test]
    fn punctuation_emoji_and_spaces_are_dropped() {
        assert!(t("*** \"\" 🎉🎉 —…").is_empty());
        assert!(t("").is_empty());
        assert_eq!(t("🎉party🎉"), ["party"]);
        assert_eq!(t("「北京」。"), ["北京"]);
    }

    #[test]
    fn positions_and_offsets_follow_the_text() {
        let mut analyzer = chat_analyzer();
        let text = "Go 北京开会!";
        let mut stream = analyzer.token_stream(text);
        let mut got = Vec::new();
        while let Some(tok) = stream.next() {
            got.push((
                tok.position,
                text[tok.offset_from..tok.offset_to].to_string(),
            ));
        }
        assert_eq!(
            got,
            [
                (0, "Go".to_string()),
                (1, "北京".to_string()),
                (2, "京开".to_string()),
                (3, "开会".to_string()),
            ]
        );
    }

    #[test]
    fn long_words_are_cut() {
        let long = "a".repeat(10_000);
        let got = t(&long);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), MAX_WORD_CHARS);
    }
}
