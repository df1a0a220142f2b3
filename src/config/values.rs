//! How setting values are read, whichever layer they come from: the environment and flags give
//! strings, a comfyrs.toml may also give integers and booleans. Each reader's error says what the
//! setting accepts; the loader adds which setting and where the value came from.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};

use crate::size::{parse_size, SIZE_FORMS};

/// What a boolean setting accepts.
pub const SWITCH_FORMS: &str = "0, 1, true, false, on or off";

/// A byte size: an integer of bytes, or a string with a unit (`4GiB`).
pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(SizeVisitor { auto: false }).map(|v| v.expect("auto is refused"))
}

/// A size or `auto` (None): the engine picks the value from the machine.
pub fn limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_any(SizeVisitor { auto: true })
}

struct SizeVisitor {
    auto: bool,
}

impl SizeVisitor {
    fn forms(&self) -> String {
        if self.auto { format!("auto, or {SIZE_FORMS}") } else { SIZE_FORMS.to_string() }
    }
}

impl Visitor<'_> for SizeVisitor {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.forms())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        u64::try_from(v).map(Some).map_err(|_| E::custom(format!("{v} is negative; accepts {}", self.forms())))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if self.auto && v.trim().eq_ignore_ascii_case("auto") {
            return Ok(None);
        }
        parse_size(v).map(Some).map_err(|e| E::custom(format!("{e}; accepts {}", self.forms())))
    }
}

/// A boolean: `true`/`false` in a toml file, or 0/1/true/false/on/off as text.
pub fn switch<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    d.deserialize_any(SwitchVisitor)
}

struct SwitchVisitor;

impl Visitor<'_> for SwitchVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(SWITCH_FORMS)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(E::custom(format!("{v} is not a switch; accepts {SWITCH_FORMS}"))),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        parse_switch(v).ok_or_else(|| E::custom(format!("'{v}' is not a switch; accepts {SWITCH_FORMS}")))
    }
}

/// `auto` (None: decided where it applies) or a switch.
pub fn auto_switch<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    d.deserialize_any(AutoSwitchVisitor)
}

struct AutoSwitchVisitor;

impl Visitor<'_> for AutoSwitchVisitor {
    type Value = Option<bool>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "auto, {SWITCH_FORMS}")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Option<bool>, E> {
        Ok(Some(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<bool>, E> {
        match v {
            0 | 1 => Ok(Some(v == 1)),
            _ => Err(E::custom(format!("{v} is not auto or a switch; accepts auto, {SWITCH_FORMS}"))),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<bool>, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<bool>, E> {
        if v.trim().eq_ignore_ascii_case("auto") {
            return Ok(None);
        }
        parse_switch(v)
            .map(Some)
            .ok_or_else(|| E::custom(format!("'{v}' is not auto or a switch; accepts auto, {SWITCH_FORMS}")))
    }
}

fn parse_switch(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" => Some(true),
        "0" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// A word from a fixed set, read with the type's `FromStr` (whose error lists the words).
pub fn word<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    d.deserialize_str(WordVisitor(PhantomData))
}

struct WordVisitor<T>(PhantomData<T>);

impl<T: FromStr<Err = String>> Visitor<'_> for WordVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a word")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.trim().parse().map_err(E::custom)
    }

    // A toml number or boolean is no word either; parsing its text gives the error that lists the
    // words.
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches() {
        for (text, v) in [("1", true), ("on", true), ("TRUE", true), ("0", false), ("off", false), ("false", false)] {
            assert_eq!(parse_switch(text), Some(v), "{text}");
        }
        assert_eq!(parse_switch("yes"), None);
        assert_eq!(parse_switch("2"), None);
    }
}
