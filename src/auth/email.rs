//! E-mail addresses: validated once at the edge, stored and compared in lower case.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// A syntactically valid e-mail address, lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Accepts the addresses people actually use (RFC 5321 lengths, dot-atom local part,
    /// a domain of at least two labels), not every corner of RFC 5322.
    pub fn parse(input: &str) -> Result<Self, &'static str> {
        let s = input.trim();
        if s.is_empty() {
            return Err("the e-mail address is empty");
        }
        if s.len() > 254 {
            return Err("the e-mail address is longer than 254 characters");
        }
        let (local, domain) = s.rsplit_once('@').ok_or("the e-mail address has no @")?;
        if local.is_empty() || local.len() > 64 {
            return Err("the part before @ must be 1 to 64 characters");
        }
        let local_ok = local.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
        if !local_ok || local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err("the part before @ has characters that are not allowed");
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 {
            return Err("the domain must have at least two parts, as in example.com");
        }
        let labels_ok = labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
        if !labels_ok {
            return Err("the domain is not a valid host name");
        }
        Ok(Self(s.to_ascii_lowercase()))
    }

    /// The part after the `@`.
    pub fn domain(&self) -> &str {
        self.as_str().rsplit_once('@').map_or("", |(_, d)| d)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Email::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::Email;

    #[test]
    fn accepts_common_addresses_and_lowercases() {
        for ok in ["a@b.co", "First.Last+tag@Example.COM", "x_y-z@sub.domain.org", " padded@example.com "] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(Email::parse("Ali@Example.COM").unwrap().as_str(), "ali@example.com");
        assert_eq!(Email::parse("ALI@example.com"), Email::parse("ali@EXAMPLE.com"));
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a@@b.com",
            "a b@c.com",
            "a@b..com",
            ".a@b.com",
            "a.@b.com",
            "a..b@c.com",
            "a@-b.com",
            "a@b-.com",
            "a@b.com x",
            "علی@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(Email::parse(&long_local).is_err());
    }
}
