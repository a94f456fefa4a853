//! Case and accent folding for people and name ranking, without allocating per call: the
//! caller owns the output buffer. (Message text goes through the tokenizer instead.)

use crate::tokenizer::strip_greek_accent;

/// Appends the lowercased, ASCII-folded characters of `text` to `out`. Whitespace runs become
/// one `' '`; leading and trailing whitespace is dropped. Combining diacritics are dropped.
pub(crate) fn fold_into(text: &str, out: &mut Vec<char>) {
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
            continue;
        }
        if is_combining_mark(c) {
            continue;
        }
        for lower in strip_greek_accent(c).to_lowercase() {
            match fold_char(lower) {
                Some(ascii) => out.extend(ascii.chars()),
                None => out.push(lower),
            }
        }
    }
}

fn is_combining_mark(c: char) -> bool {
    matches!(c as u32,
        0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F
    )
}

/// The ASCII spelling of a lowercase Latin letter with diacritics or a ligature.
fn fold_char(c: char) -> Option<&'static str> {
    if let Some(ascii) = fullwidth_ascii(c) {
        return Some(ascii);
    }
    FOLD.binary_search_by_key(&c, |&(k, _)| k)
        .ok()
        .map(|i| FOLD[i].1)
}

/// Full-width ASCII letters and digits (already lowercased by the caller).
fn fullwidth_ascii(c: char) -> Option<&'static str> {
    const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
    const DIGITS: &str = "0123456789";
    let cp = c as u32;
    let (set, base) = match cp {
        0xFF41..=0xFF5A => (LOWER, 0xFF41),
        0xFF10..=0xFF19 => (DIGITS, 0xFF10),
        _ => return None,
    };
    let i = (cp - base) as usize;
    set.get(i..i + 1)
}

/// Lowercase Latin-1, Latin Extended-A/B and Latin Extended Additional letters, sorted by
/// code point (generated from the Unicode decompositions, plus ligatures and stroked letters).
#[rustfmt::skip]
const FOLD: &[(char, &str)] = &[
    ('\u{00DF}', "ss"), ('\u{00E0}', "a"), ('\u{00E1}', "a"), ('\u{00E2}', "a"),
    ('\u{00E3}', "a"), ('\u{00E4}', "a"), ('\u{00E5}', "a"), ('\u{00E6}', "ae"),
    ('\u{00E7}', "c"), ('\u{00E8}', "e"), ('\u{00E9}', "e"), ('\u{00EA}', "e"), ('\u{00EB}', "e"),
    ('\u{00EC}', "i"), ('\u{00ED}', "i"), ('\u{00EE}', "i"), ('\u{00EF}', "i"), ('\u{00F0}', "d"),
    ('\u{00F1}', "n"), ('\u{00F2}', "o"), ('\u{00F3}', "o"), ('\u{00F4}', "o"), ('\u{00F5}', "o"),
    ('\u{00F6}', "o"), ('\u{00F8}', "o"), ('\u{00F9}', "u"), ('\u{00FA}', "u"), ('\u{00FB}', "u"),
    ('\u{00FC}', "u"), ('\u{00FD}', "y"), ('\u{00FE}', "th"), ('\u{00FF}', "y"),
    ('\u{0101}', "a"), ('\u{0103}', "a"), ('\u{0105}', "a"), ('\u{0107}', "c"), ('\u{0109}', "c"),
    ('\u{010B}', "c"), ('\u{010D}', "c"), ('\u{010F}', "d"), ('\u{0111}', "d"), ('\u{0113}', "e"),
    ('\u{0115}', "e"), ('\u{0117}', "e"), ('\u{0119}', "e"), ('\u{011B}', "e"), ('\u{011D}', "g"),
    ('\u{011F}', "g"), ('\u{0121}', "g"), ('\u{0123}', "g"), ('\u{0125}', "h"), ('\u{0127}', "h"),
    ('\u{0129}', "i"), ('\u{012B}', "i"), ('\u{012D}', "i"), ('\u{012F}', "i"), ('\u{0131}', "i"),
    ('\u{0133}', "ij"), ('\u{0135}', "j"), ('\u{0137}', "k"), ('\u{0138}', "k"),
    ('\u{013A}', "l"), ('\u{013C}', "l"), ('\u{013E}', "l"), ('\u{0140}', "l"), ('\u{0142}', "l"),
    ('\u{0144}', "n"), ('\u{0146}', "n"), ('\u{0148}', "n"), ('\u{014B}', "n"), ('\u{014D}', "o"),
    ('\u{014F}', "o"), ('\u{0151}', "o"), ('\u{0153}', "oe"), ('\u{0155}', "r"),
    ('\u{0157}', "r"), ('\u{0159}', "r"), ('\u{015B}', "s"), ('\u{015D}', "s"), ('\u{015F}', "s"),
    ('\u{0161}', "s"), ('\u{0163}', "t"), ('\u{0165}', "t"), ('\u{0167}', "t"), ('\u{0169}', "u"),
    ('\u{016B}', "u"), ('\u{016D}', "u"), ('\u{016F}', "u"), ('\u{0171}', "u"), ('\u{0173}', "u"),
    ('\u{0175}', "w"), ('\u{0177}', "y"), ('\u{017A}', "z"), ('\u{017C}', "z"), ('\u{017E}', "z"),
    ('\u{017F}', "s"), ('\u{0180}', "b"), ('\u{0188}', "c"), ('\u{0192}', "f"), ('\u{0199}', "k"),
    ('\u{019A}', "l"), ('\u{019E}', "n"), ('\u{01A1}', "o"), ('\u{01A5}', "p"), ('\u{01AB}', "t"),
    ('\u{01AD}', "t"), ('\u{01B0}', "u"), ('\u{01B4}', "y"), ('\u{01B6}', "z"),
    ('\u{01C6}', "dz"), ('\u{01C9}', "lj"), ('\u{01CC}', "nj"), ('\u{01CE}', "a"),
    ('\u{01D0}', "i"), ('\u{01D2}', "o"), ('\u{01D4}', "u"), ('\u{01D6}', "u"), ('\u{01D8}', "u"),
    ('\u{01DA}', "u"), ('\u{01DC}', "u"), ('\u{01DF}', "a"), ('\u{01E1}', "a"), ('\u{01E7}', "g"),
    ('\u{01E9}', "k"), ('\u{01EB}', "o"), ('\u{01ED}', "o"), ('\u{01F0}', "j"),
    ('\u{01F3}', "dz"), ('\u{01F5}', "g"), ('\u{01F9}', "n"), ('\u{01FB}', "a"),
    ('\u{0201}', "a"), ('\u{0203}', "a"), ('\u{0205}', "e"), ('\u{0207}', "e"), ('\u{0209}', "i"),
    ('\u{020B}', "i"), ('\u{020D}', "o"), ('\u{020F}', "o"), ('\u{0211}', "r"), ('\u{0213}', "r"),
    ('\u{0215}', "u"), ('\u{0217}', "u"), ('\u{0219}', "s"), ('\u{021B}', "t"), ('\u{021F}', "h"),
    ('\u{0225}', "z"), ('\u{0227}', "a"), ('\u{0229}', "e"), ('\u{022B}', "o"), ('\u{022D}', "o"),
    ('\u{022F}', "o"), ('\u{0231}', "o"), ('\u{0233}', "y"), ('\u{0238}', "db"),
    ('\u{0239}', "qp"), ('\u{0253}', "b"), ('\u{0257}', "d"), ('\u{0260}', "g"),
    ('\u{0272}', "n"), ('\u{0275}', "o"), ('\u{0288}', "t"), ('\u{028B}', "v"), ('\u{02A0}', "q"),
    ('\u{1E01}', "a"), ('\u{1E03}', "b"), ('\u{1E05}', "b"), ('\u{1E07}', "b"), ('\u{1E09}', "c"),
    ('\u{1E0B}', "d"), ('\u{1E0D}', "d"), ('\u{1E0F}', "d"), ('\u{1E11}', "d"), ('\u{1E13}', "d"),
    ('\u{1E15}', "e"), ('\u{1E17}', "e"), ('\u{1E19}', "e"), ('\u{1E1B}', "e"), ('\u{1E1D}', "e"),
    ('\u{1E1F}', "f"), ('\u{1E21}', "g"), ('\u{1E23}', "h"), ('\u{1E25}', "h"), ('\u{1E27}', "h"),
    ('\u{1E29}', "h"), ('\u{1E2B}', "h"), ('\u{1E2D}', "i"), ('\u{1E2F}', "i"), ('\u{1E31}', "k"),
    ('\u{1E33}', "k"), ('\u{1E35}', "k"), ('\u{1E37}', "l"), ('\u{1E39}', "l"), ('\u{1E3B}', "l"),
    ('\u{1E3D}', "l"), ('\u{1E3F}', "m"), ('\u{1E41}', "m"), ('\u{1E43}', "m"), ('\u{1E45}', "n"),
    ('\u{1E47}', "n"), ('\u{1E49}', "n"), ('\u{1E4B}', "n"), ('\u{1E4D}', "o"), ('\u{1E4F}', "o"),
    ('\u{1E51}', "o"), ('\u{1E53}', "o"), ('\u{1E55}', "p"), ('\u{1E57}', "p"), ('\u{1E59}', "r"),
    ('\u{1E5B}', "r"), ('\u{1E5D}', "r"), ('\u{1E5F}', "r"), ('\u{1E61}', "s"), ('\u{1E63}', "s"),
    ('\u{1E65}', "s"), ('\u{1E67}', "s"), ('\u{1E69}', "s"), ('\u{1E6B}', "t"), ('\u{1E6D}', "t"),
    ('\u{1E6F}', "t"), ('\u{1E71}', "t"), ('\u{1E73}', "u"), ('\u{1E75}', "u"), ('\u{1E77}', "u"),
    ('\u{1E79}', "u"), ('\u{1E7B}', "u"), ('\u{1E7D}', "v"), ('\u{1E7F}', "v"), ('\u{1E81}', "w"),
    ('\u{1E83}', "w"), ('\u{1E85}', "w"), ('\u{1E87}', "w"), ('\u{1E89}', "w"), ('\u{1E8B}', "x"),
    ('\u{1E8D}', "x"), ('\u{1E8F}', "y"), ('\u{1E91}', "z"), ('\u{1E93}', "z"), ('\u{1E95}', "z"),
    ('\u{1E96}', "h"), ('\u{1E97}', "t"), ('\u{1E98}', "w"), ('\u{1E99}', "y"), ('\u{1E9B}', "s"),
    ('\u{1EA1}', "a"), ('\u{1EA3}', "a"), ('\u{1EA5}', "a"), ('\u{1EA7}', "a"), ('\u{1EA9}', "a"),
    ('\u{1EAB}', "a"), ('\u{1EAD}', "a"), ('\u{1EAF}', "a"), ('\u{1EB1}', "a"), ('\u{1EB3}', "a"),
    ('\u{1EB5}', "a"), ('\u{1EB7}', "a"), ('\u{1EB9}', "e"), ('\u{1EBB}', "e"), ('\u{1EBD}', "e"),
    ('\u{1EBF}', "e"), ('\u{1EC1}', "e"), ('\u{1EC3}', "e"), ('\u{1EC5}', "e"), ('\u{1EC7}', "e"),
    ('\u{1EC9}', "i"), ('\u{1ECB}', "i"), ('\u{1ECD}', "o"), ('\u{1ECF}', "o"), ('\u{1ED1}', "o"),
    ('\u{1ED3}', "o"), ('\u{1ED5}', "o"), ('\u{1ED7}', "o"), ('\u{1ED9}', "o"), ('\u{1EDB}', "o"),
    ('\u{1EDD}', "o"), ('\u{1EDF}', "o"), ('\u{1EE1}', "o"), ('\u{1EE3}', "o"), ('\u{1EE5}', "u"),
    ('\u{1EE7}', "u"), ('\u{1EE9}', "u"), ('\u{1EEB}', "u"), ('\u{1EED}', "u"), ('\u{1EEF}', "u"),
    ('\u{1EF1}', "u"), ('\u{1EF3}', "y"), ('\u{1EF5}', "y"), ('\u{1EF7}', "y"), ('\u{1EF9}', "y"),
    ('\u{A733}', "aa"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(s: &str) -> String {
        let mut out = Vec::new();
        fold_into(s, &mut out);
        out.into_iter().collect()
    }

    #[test]
    fn table_is_sorted() {
        assert!(FOLD.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn folds_case_accents_ligatures_and_spaces() {
        assert_eq!(fold("  Zoë   Ångström "), "zoe angstrom");
        assert_eq!(fold("Straße Łódź ŒUVRE"), "strasse lodz oeuvre");
        assert_eq!(fold("Nguyễn Văn"), "nguyen van");
        assert_eq!(fold("cafe\u{301}"), "cafe");
        assert_eq!(fold("Ａｌｉｃｅ１"), "alice1");
        assert_eq!(fold("王小明 Иван"), "王小明 иван");
        assert_eq!(fold("Γιώργος"), "γιωργος");
    }
}
