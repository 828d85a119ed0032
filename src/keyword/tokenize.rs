//! Words of a record or a query: lower-cased runs of letters and digits (any script; each
//! CJK character is a word of its own), stop words dropped, English words stemmed (Snowball).
//! Identifiers and paths split at their punctuation (`src/disk/keys.rs` → `src disk key rs`);
//! emoji and symbols separate words and are never words themselves.

use rust_stemmers::{Algorithm, Stemmer};
use std::borrow::Cow;
use std::sync::OnceLock;

/// Longest word kept, in bytes (a longer run, say a base64 blob, is not a word anyone asks for).
pub(crate) const MAX_WORD_BYTES: usize = 64;

/// English stop words, matched before stemming. A short list: questions lean on words such
/// as "first", "after" or "before", which longer lists drop.
const STOP_WORDS: [&str; 99] = [
    "a", "about", "again", "all", "am", "an", "and", "any", "are", "as", "at", "be", "been",
    "being", "both", "but", "by", "can", "could", "did", "do", "does", "don", "down", "each",
    "few", "for", "from", "further", "had", "has", "have", "he", "her", "here", "him", "his",
    "how", "i", "if", "in", "into", "is", "it", "its", "just", "me", "more", "most", "my", "no",
    "not", "now", "of", "off", "on", "once", "or", "other", "our", "out", "over", "s", "she",
    "should", "so", "some", "such", "t", "than", "that", "the", "their", "them", "then", "there",
    "these", "they", "this", "to", "too", "under", "up", "very", "was", "we", "were", "what",
    "when", "where", "which", "who", "whom", "why", "will", "with", "would", "you", "your",
];

fn stemmer() -> &'static Stemmer {
    static S: OnceLock<Stemmer> = OnceLock::new();
    S.get_or_init(|| Stemmer::create(Algorithm::English))
}

/// Whether a word as written (lower-cased) is a stop word.
pub(crate) fn is_stop_word(w: &str) -> bool {
    // Every stop word is at most 7 bytes long.
    w.len() <= 7 && STOP_WORDS.binary_search(&w).is_ok()
}

/// Han, kana and hangul: scripts written without spaces, so each character is a word.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // hiragana, katakana
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xAC00..=0xD7AF    // hangul syllables
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0x20000..=0x2FA1F) // CJK extensions B–F, compatibility supplement
}

/// Calls `each` with every word of `text` as written, in order: lower-cased, overlong runs
/// left out; stop words not yet dropped (see [`is_stop_word`]) nor words stemmed (see
/// [`stem`]): the index keeps a cache of both by the word as written.
pub(crate) fn surface_words(text: &str, mut each: impl FnMut(&str)) {
    let mut word = String::new();
    let mut flush = |word: &mut String| {
        if !word.is_empty() {
            if word.len() <= MAX_WORD_BYTES {
                each(word);
            }
            word.clear();
        }
    };
    for c in text.chars() {
        if c.is_ascii() {
            if c.is_ascii_alphanumeric() {
                word.push(c.to_ascii_lowercase());
            } else {
                flush(&mut word);
            }
        } else if is_cjk(c) {
            flush(&mut word);
            word.push(c);
            flush(&mut word);
        } else if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else {
            flush(&mut word);
        }
    }
    flush(&mut word);
}

/// The stem of a word [`surface_words`] gave: Snowball English for ASCII letters, the word
/// itself otherwise (digits, other scripts).
pub(crate) fn stem(word: &str) -> Cow<'_, str> {
    if word.bytes().all(|b| b.is_ascii_lowercase()) {
        stemmer().stem(word)
    } else {
        Cow::Borrowed(word)
    }
}

/// Calls `each` with every word of `text`, in order, stop words dropped, stemmed.
pub(crate) fn words(text: &str, mut each: impl FnMut(&str)) {
    surface_words(text, |w| {
        if !is_stop_word(w) {
            each(&stem(w))
        }
    });
}

/// The words of `text`, in order.
pub(crate) fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    words(text, |w| out.push(w.to_string()));
    out
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// The words of a record's date (UTC), as a person would write it: "8 May 2023" gives `8`,
/// `may`, `2023`. A question about "May 2023" then finds what was said then.
pub(crate) fn date_words(ts_us: u64) -> Vec<String> {
    let days = (ts_us / 86_400_000_000) as i64;
    let (y, m, d) = civil_from_days(days);
    tokenize(&format!("{d} {} {y}", MONTHS[(m - 1) as usize]))
}

/// Year, month (1..=12), day of the proleptic Gregorian date `days` after 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted_for_the_binary_search_and_short() {
        assert!(STOP_WORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(STOP_WORDS.iter().all(|w| w.len() <= 7));
    }

    #[test]
    fn english_is_lower_cased_stemmed_and_stripped_of_stop_words() {
        assert_eq!(
            tokenize("Caroline's running to the Support Groups!"),
            ["carolin", "run", "support", "group"]
        );
    }

    #[test]
    fn identifiers_paths_and_numbers_split_at_punctuation() {
        assert_eq!(
            tokenize("src/disk/keys.rs:42 fsync_dir() v1.31.1"),
            ["src", "disk", "key", "rs", "42", "fsync", "dir", "v1", "31", "1"]
        );
    }

    #[test]
    fn chinese_emoji_and_accents_do_not_break_it() {
        assert_eq!(tokenize("数据库 🚀 café"), ["数", "据", "库", "café"]);
        assert_eq!(tokenize("🚀🔥 !!"), Vec::<String>::new());
        assert_eq!(tokenize(""), Vec::<String>::new());
    }

    #[test]
    fn overlong_runs_are_not_words() {
        let blob = "x".repeat(MAX_WORD_BYTES + 1);
        assert_eq!(tokenize(&format!("{blob} ok")), ["ok"]);
    }

    #[test]
    fn a_date_is_its_day_month_and_year() {
        // 2023-05-08T13:56:00Z
        assert_eq!(date_words(1_683_554_160_000_000), ["8", "may", "2023"]);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_753), (2024, 1, 31));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
