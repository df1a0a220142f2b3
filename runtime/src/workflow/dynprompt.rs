//! Dynamic prompts (docs/comfyui.md, "Dynamic prompts"): the frontend rewrites STRING widgets
//! flagged `dynamicPrompts` when it queues a prompt. C-style comments are removed, then every
//! `{a|b|c}` group is replaced by one of its alternatives (groups nest; a backslash keeps the
//! next character literal, backslash included).
//!
//! The frontend draws from `Math.random`. Here the draw comes from a caller-supplied
//! generator so that a seed makes the choice reproducible.

/// A small, seedable generator (SplitMix64) returning floats in `[0, 1)`.
#[derive(Clone, Debug)]
pub struct ChoiceRng {
    state: u64,
}

impl ChoiceRng {
    pub fn new(seed: u64) -> Self {
        ChoiceRng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, like `Math.random()`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Removes `/* ... */` blocks and `// ...` to the end of the line, as the frontend's regex
/// `/\/\*[\s\S]*?\*\/|\/\/.*/g` does (an unclosed `/*` stays).
pub fn strip_comments(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '/' && i + 1 < chars.len() {
            if chars[i + 1] == '*' {
                // Find the closing `*/` after the opening.
                let mut j = i + 2;
                let mut close = None;
                while j + 1 < chars.len() {
                    if chars[j] == '*' && chars[j + 1] == '/' {
                        close = Some(j + 2);
                        break;
                    }
                    j += 1;
                }
                if let Some(end) = close {
                    i = end;
                    continue;
                }
            } else if chars[i + 1] == '/' {
                // JavaScript's `.` stops at line terminators.
                while i < chars.len() && !matches!(chars[i], '\n' | '\r' | '\u{2028}' | '\u{2029}') {
                    i += 1;
                }
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Resolves comments and `{a|b}` choices in `text`, drawing choices from `random`
/// (uniform in `[0, 1)`). Nested groups are handled with an explicit stack. As in the
/// frontend, each chosen alternative is processed on its own (comments stripped, groups
/// resolved) and then unescaped (`\{`, `\}`, `\|` lose their backslash), and so is the whole
/// text at the end: an escape inside a chosen alternative is unescaped once per level.
pub fn process(text: &str, random: &mut dyn FnMut() -> f64) -> String {
    // Segments still to process, innermost last, each with its own output: the text of a
    // chosen alternative is processed (and unescaped) on its own before the rest of the text
    // that contained its group.
    let mut stack: Vec<(Vec<char>, usize, String)> = vec![(strip_comments(text).chars().collect(), 0, String::new())];
    loop {
        let Some((chars, pos, out)) = stack.last_mut() else { unreachable!("the outermost segment is popped below") };
        if *pos >= chars.len() {
            let done = unescape(out);
            stack.pop();
            match stack.last_mut() {
                Some((_, _, parent)) => parent.push_str(&done),
                None => return done,
            }
            continue;
        }
        let c = chars[*pos];
        *pos += 1;
        match c {
            '\\' => {
                out.push('\\');
                if *pos < chars.len() {
                    out.push(chars[*pos]);
                    *pos += 1;
                }
            }
            '{' => {
                let mut options: Vec<String> = Vec::new();
                let mut current = String::new();
                let mut depth = 0usize;
                while *pos < chars.len() {
                    let ch = chars[*pos];
                    *pos += 1;
                    match ch {
                        '\\' => {
                            current.push('\\');
                            if *pos < chars.len() {
                                current.push(chars[*pos]);
                                *pos += 1;
                            }
                            continue;
                        }
                        '{' => depth += 1,
                        '}' => {
                            if depth == 0 {
                                break;
                            }
                            depth -= 1;
                        }
                        '|' if depth == 0 => {
                            options.push(std::mem::take(&mut current));
                            continue;
                        }
                        _ => {}
                    }
                    current.push(ch);
                }
                options.push(current);
                let r = random();
                let idx = ((r * options.len() as f64).floor() as usize).min(options.len() - 1);
                let chosen = strip_comments(&options[idx]);
                stack.push((chosen.chars().collect(), 0, String::new()));
            }
            other => out.push(other),
        }
    }
}

/// The frontend's final `replace(/\\([{}|])/g, "$1")`: a backslash before `{`, `}` or `|`
/// is dropped (each match consumes its two characters, so `\\{` keeps one backslash).
fn unescape(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && i + 1 < chars.len() && matches!(chars[i + 1], '{' | '}' | '|') {
            out.push(chars[i + 1]);
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first() -> impl FnMut() -> f64 {
        || 0.0
    }
    fn last() -> impl FnMut() -> f64 {
        || 0.999_999
    }

    #[test]
    fn comments_are_removed() {
        assert_eq!(strip_comments("a /* b */c // d\ne"), "a c \ne");
        assert_eq!(strip_comments("keep /* open"), "keep /* open");
        assert_eq!(strip_comments("x/*1*//*2*/y"), "xy");
    }

    #[test]
    fn choices_nest_and_escape() {
        assert_eq!(process("a {red|blue} fox", &mut first()), "a red fox");
        assert_eq!(process("a {red|blue} fox", &mut last()), "a blue fox");
        assert_eq!(process("{x|{y|z}}", &mut last()), "z");
        assert_eq!(process("{x|{y|z}w}", &mut last()), "zw");
        assert_eq!(process(r"\{a|b\} {c|d}", &mut first()), "{a|b} c");
        assert_eq!(process(r"{x \| y|z} end", &mut first()), "x | y end");
        assert_eq!(process(r"a \\{b}", &mut first()), r"a \\b");
        assert_eq!(process("{|empty}", &mut first()), "");
        assert_eq!(process("unclosed {a|b", &mut last()), "unclosed b");
        assert_eq!(process("plain } | text", &mut first()), "plain } | text");
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        // Under miri (scripts/miri.sh) a shallower nest: the same code path, in seconds.
        let depth = if cfg!(miri) { 64 } else { 3_000 };
        let text = format!("{}x{}", "{".repeat(depth), "}".repeat(depth));
        assert_eq!(process(&text, &mut first()), "x");
    }

    #[test]
    fn seeded_rng_is_reproducible() {
        let mut a = ChoiceRng::new(7);
        let mut b = ChoiceRng::new(7);
        for _ in 0..10 {
            let x = a.next_f64();
            assert!((0.0..1.0).contains(&x));
            assert_eq!(x, b.next_f64());
        }
    }
}
